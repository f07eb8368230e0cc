"""SQL lives in .sql files as named queries (``-- name: NAME`` headers): the shared queries and the
numbered migrations here, each subpackage's own queries beside its modules."""

from __future__ import annotations

import re
from importlib import resources
from types import SimpleNamespace

_HEADER = re.compile(r"^--\s*name:\s*(\w+)\s*$", re.M)


def load_queries(filename: str, package: str = __package__) -> SimpleNamespace:
    """Parse a file of named queries into an object with one attribute a query. The file lives
    beside the modules of ``package`` (each subpackage keeps its own SQL; pass ``__package__``)."""
    text = resources.files(package).joinpath(filename).read_text()
    parts = _HEADER.split(text)
    queries = {}
    for name, body in zip(parts[1::2], parts[2::2]):
        if name in queries:
            raise ValueError(f"{filename}: query {name!r} defined twice")
        queries[name] = body.strip()
    return SimpleNamespace(**queries)


def migrations() -> list[tuple[int, str, str]]:
    """The numbered migrations, in order: (number, name, sql)."""
    found = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        match = re.match(r"^(\d+)_(\w+)\.sql$", entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text()))
    found.sort()
    numbers = [n for n, _, _ in found]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"duplicate migration numbers: {numbers}")
    return found
