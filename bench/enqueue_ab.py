"""Workload E for two checkouts of roastq, interleaved in small blocks (issue 14, item 3).

    .venv/bin/python bench/enqueue_ab.py /tmp/base /tmp/change [--jobs 5000] [--block 250]

On a machine whose load swings from one minute to the next, two runs of E one after the other
measure the load as much as the code. Here each checkout runs in a process of its own (its
``roastq`` first on ``sys.path``, its own fresh database, ``enqueue_evaluation`` one call and one
commit at a time, default settings), both stay up, and the controller has them enqueue a block
each in turn, ABAB..., until each has done ``--jobs``: both see the same minutes of load. It
prints each one's enqueues a second over all its blocks, the median of its blocks and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

SERVER = os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def serve(root: str, database: str) -> int:
    """A child: set up, then answer each block count on stdin with its elapsed seconds."""
    sys.path.insert(0, root)
    sys.path.insert(0, str(Path(root) / "bench"))
    import psycopg2

    admin = psycopg2.connect(SERVER)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (database,))
        cur.execute(f'DROP DATABASE IF EXISTS "{database}"')
        cur.execute(f'CREATE DATABASE "{database}"')
    admin.close()
    os.environ["DATABASE_URL"] = SERVER.rsplit("/", 1)[0] + "/" + database
    os.environ.pop("LOG_LEVEL", None)
    from _common import seed_minimal

    import roastq
    from roastq import db
    from roastq.api import enqueue_evaluation

    db.migrate()
    conn = psycopg2.connect(os.environ["DATABASE_URL"])
    conn.autocommit = True
    (doc,), agent = seed_minimal(conn)
    for _ in range(50):  # warm
        enqueue_evaluation(doc, agent)
    print(json.dumps({"ready": roastq.__file__}), flush=True)
    for line in sys.stdin:
        n = int(line)
        t = time.perf_counter()
        for _ in range(n):
            enqueue_evaluation(doc, agent)
        print(json.dumps({"elapsed": time.perf_counter() - t}), flush=True)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("roots", nargs=2)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--block", type=int, default=250)
    args = parser.parse_args()
    children = []
    for i, root in enumerate(args.roots):
        child = subprocess.Popen(
            [sys.executable, __file__, "--serve", root, f"roastq_enqueue_ab_{i}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=root,
        )
        print(f"{root}: {json.loads(child.stdout.readline())['ready']}", file=sys.stderr)
        children.append(child)
    blocks: list[list[float]] = [[], []]
    started_load = os.getloadavg()
    for _ in range(args.jobs // args.block):
        for i, child in enumerate(children):
            child.stdin.write(f"{args.block}\n")
            child.stdin.flush()
            blocks[i].append(json.loads(child.stdout.readline())["elapsed"])
    for child in children:
        child.stdin.close()
        child.wait()
    rates = []
    for root, times in zip(args.roots, blocks, strict=True):
        rate = args.block * len(times) / sum(times)
        rates.append(rate)
        median = statistics.median(args.block / t for t in times)
        print(f"{root}: {rate:.1f} enqueues/s over {len(times)} blocks (median block {median:.1f}/s)")
    print(f"ratio: {rates[1] / rates[0]:.2f}")
    print(f"load average: start {started_load[0]:.2f}, end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        raise SystemExit(serve(sys.argv[2], sys.argv[3]))
    raise SystemExit(main())
