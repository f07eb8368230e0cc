"""Enqueues beside a session that holds back vacuum (issue 14, item 5): one checkout, one pair.

    .venv/bin/python bench/enqueue_held.py ROOT [--database NAME] [--jobs 4000]

ROOT is a checkout (``git archive REV | tar -x -C ROOT``; ``.`` for this one). A fresh database,
the checkout's migrations and one document and agent; a second session stays idle in transaction
after ``SELECT txid_current()``; then ``--jobs`` ``enqueue_evaluation`` calls of that one pair,
one commit each, timed in blocks of 500. Prints one JSON line: each block's enqueues a second,
the last block over the first, and the ``evaluations`` table's row updates and dead versions (an
enqueue that rewrites the evaluation's row leaves one a call, which nothing can remove while the
session waits). Run it for two checkouts in turn to compare them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

BLOCK = 500


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root")
    parser.add_argument("--database", default="roastq_enqueue_held")
    parser.add_argument("--jobs", type=int, default=4000)
    args = parser.parse_args()
    root = os.path.abspath(args.root)
    sys.path.insert(0, root)
    sys.path.insert(0, os.path.join(root, "bench"))
    import psycopg2
    from _common import recreate_database, seed_minimal  # the checkout's bench helpers

    url = recreate_database(args.database)
    os.environ["DATABASE_URL"] = url
    os.environ.pop("LOG_LEVEL", None)  # the defaults a user runs

    import roastq
    from roastq import db
    from roastq.api import enqueue_evaluation

    db.migrate()
    conn = psycopg2.connect(url)
    conn.autocommit = True
    (doc,), agent = seed_minimal(conn)
    holder = psycopg2.connect(url)
    with holder.cursor() as cur:
        cur.execute("SELECT txid_current()")  # idle in transaction from here on
    rates = []
    for _ in range(args.jobs // BLOCK):
        started = time.perf_counter()
        for _ in range(BLOCK):
            enqueue_evaluation(doc, agent)
        rates.append(round(BLOCK / (time.perf_counter() - started), 1))
    holder.close()
    time.sleep(1)  # the statistics collector's counts
    with conn.cursor() as cur:
        cur.execute("SELECT n_tup_upd, n_dead_tup FROM pg_stat_user_tables WHERE relname = 'evaluations'")
        updates, dead = cur.fetchone()
    result = {
        "roastq": roastq.__file__,
        "blocks_per_s": rates,
        "last_over_first": round(rates[-1] / rates[0], 2),
        "evaluation_updates": updates,
        "evaluation_dead_versions": dead,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
