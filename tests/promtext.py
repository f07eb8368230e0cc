"""Reading Prometheus exposition text in tests: {(sample name, labels): value}."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def parse(text: str) -> dict[tuple[str, frozenset], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return samples


def families(text: str) -> list:
    return list(text_string_to_metric_families(text))


def scrape(port: int, host: str = "127.0.0.1") -> str:
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as r:
        return r.read().decode()


def value(samples: dict, name: str, **labels) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels`` (0 if none)."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


_registry = None


def local() -> dict:
    """What this process's exporter would serve now (all processes' files plus Postgres)."""
    global _registry
    from observability.exporter import build_registry, render

    if _registry is None:  # one registry, so one Postgres connection, for the whole run
        _registry = build_registry()
    return parse(render(_registry).decode())
