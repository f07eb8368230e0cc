"""Shared plumbing for the LLM benchmarks (bench/llm_*.py): the simulator in a process of its own,
documents that make every job's prompt unique, and token totals as the simulator bills them.

Not a benchmark itself: running it does nothing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT  # noqa: E402

TOKEN_KEYS = ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")


class SimProcess:
    """`python -m roastq.simulator.server` on a free port, in its own process (its HTTP threads then do
    not compete with the benchmark's own for the GIL)."""

    def __init__(self, *args: str):
        log_dir = ROOT / ".roastq" / "bench"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "roastq.simulator.server", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=open(log_dir / "simulator.log", "ab"),
            text=True,
            cwd=ROOT,
            start_new_session=True,
        )
        line = self.proc.stdout.readline()
        if not line.startswith("simulator listening on "):
            raise SystemExit(f"bench: the simulator did not start: {line!r}")
        self.url = line.split()[-1]

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict):
        req = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), method="POST", headers={"content-type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)


def billed_tokens(stats: dict) -> int:
    """Every token the simulator billed: input, output, cache reads and cache writes."""
    return sum(stats[k] for k in TOKEN_KEYS)


def unique_documents(conn, n: int) -> list[str]:
    """n documents made from the bundled samples, each with a line of its own, so that no two
    jobs send the same prompt (the response cache would otherwise answer repeats)."""
    from roastq.evaluation.samples import load_documents

    samples = load_documents()
    ids = []
    with conn.cursor() as cur:
        for i in range(n):
            doc = samples[i % len(samples)]
            cur.execute("INSERT INTO documents (slug) VALUES (%s) RETURNING id", (f"bench-llm-{i}",))
            doc_id = cur.fetchone()[0]
            cur.execute(
                "INSERT INTO document_versions (document_id, version, title, authors, content) "
                "VALUES (%s, 1, %s, %s, %s)",
                (doc_id, f"{doc.title} (copy {i})", list(doc.authors), f"Copy {i}.\n{doc.content}"),
            )
            ids.append(str(doc_id))
    return ids


def evaluate_all(conn, jobs: int) -> tuple[list[str], float]:
    """``jobs`` evaluations of distinct documents over the sample agents, on the batch lane, waited
    for until every one is COMPLETED or FAILED: their ids and the seconds it took."""
    from _common import scalar, wait_until

    from roastq.api import enqueue_evaluations

    agents = sample_agents()
    docs = unique_documents(conn, jobs)
    started = time.monotonic()
    ids = enqueue_evaluations([(d, agents[i % len(agents)]) for i, d in enumerate(docs)], priority="batch")
    wait_until(
        lambda: (
            scalar(
                conn, "SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[]) AND status IN ('COMPLETED', 'FAILED')", ids
            )
            == len(ids)
        ),
        timeout=900,
        interval=0.5,
        what="the jobs to finish",
    )
    return ids, time.monotonic() - started


def sample_agents() -> list[str]:
    """The bundled agents (two with a self-critique step, two without)."""
    from roastq.evaluation.seed import seed

    return list(seed().agents.values())


if __name__ == "__main__":
    pass
