"""Where one ``enqueue_evaluation`` spends its time (issue 14, item 3): a diagnostic, not a peer run.

    .venv/bin/python bench/bench_enqueue.py [--jobs 500] [--rounds 4]

Enqueues one call at a time (no caller's connection: one autocommit statement each) and splits
each call into the time inside ``cursor.execute`` (the round trip: with the one-statement enqueue,
the statement and its commit) and the rest (Python: ids, the message, the statement's text and
parameters; with an older checkout, its COMMIT too). Then it does the
same with the pooled session's ``synchronous_commit`` off, **for this measurement only** (roastq
never enqueues so: an acknowledged enqueue must survive a crash of Postgres): the difference is
what the commit's WAL flush costs. The two settings alternate, ``--rounds`` times, to share the
machine's load; medians per call. Also a bare ``SELECT 1`` round trip, the floor of any statement.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

DATABASE = os.environ.get("BENCH_DATABASE", "roastq_bench_enqueue")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=500, help="enqueues a round and setting")
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()

    from _common import recreate_database

    os.environ["DATABASE_URL"] = recreate_database(DATABASE)
    import psycopg2
    import psycopg2.extras
    from _common import seed_minimal

    from roastq import db
    from roastq.api import enqueue_evaluation

    db.migrate()
    conn = psycopg2.connect(os.environ["DATABASE_URL"])
    conn.autocommit = True
    (doc,), agent = seed_minimal(conn)
    conn.close()

    inside = [0.0]
    plain = psycopg2.extras.RealDictCursor

    class Timed(plain):
        def execute(self, query, vars=None):
            t = time.perf_counter()
            try:
                return super().execute(query, vars)
            finally:
                inside[0] += time.perf_counter() - t

    psycopg2.extras.RealDictCursor = Timed  # the cursor roastq.db hands out

    def session(setting: str) -> None:
        # One thread: the pool hands back the same connection, which keeps the session setting.
        with db.autocommit() as cur:
            cur.execute(f"SET synchronous_commit = {setting}")

    def block(n: int) -> tuple[float, float]:
        inside[0] = 0.0
        t = time.perf_counter()
        for _ in range(n):
            enqueue_evaluation(doc, agent)
        total = time.perf_counter() - t
        return total / n * 1e6, inside[0] / n * 1e6

    def select_one(n: int) -> float:
        with db.autocommit() as cur:
            t = time.perf_counter()
            for _ in range(n):
                cur.execute("SELECT 1")
                cur.fetchone()
            return (time.perf_counter() - t) / n * 1e6

    block(50)  # warm: the connection, the imports, the first plan
    found = {"on": [], "off": []}
    trips = []
    for _ in range(args.rounds):
        for setting in ("on", "off"):
            session(setting)
            found[setting].append(block(args.jobs))
        session("on")
        trips.append(select_one(args.jobs))

    def med(setting, i):
        return statistics.median(r[i] for r in found[setting])

    on_total, on_exec = med("on", 0), med("on", 1)
    off_total, off_exec = med("off", 0), med("off", 1)
    print(f"load average: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} {os.getloadavg()[2]:.2f}")
    print(f"{'us a call (medians)':32} {'total':>8} {'execute':>8} {'python':>8} {'per s':>8}")
    for label, total, execute in (
        ("synchronous_commit on (roastq)", on_total, on_exec),
        ("off (diagnostic only)", off_total, off_exec),
    ):
        print(f"{label:32} {total:8.0f} {execute:8.0f} {total - execute:8.0f} {1e6 / total:8.0f}")
    print(f"{'SELECT 1 round trip':32} {statistics.median(trips):8.0f}")
    flush = on_total - off_total
    print(f"the commit's WAL flush (on - off): {flush:.0f} us a call, {100 * flush / on_total:.0f}% of an enqueue")
    db.reset()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
