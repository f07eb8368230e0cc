"""graphile-worker 0.18 (npm) in the peer comparison, run in the peers' venv with Node 22 from
``bench/peers/.node`` (bench/peers/run.py installs both):

    bench/peers/.venv/bin/python bench/peers/sys_graphile.py [a e b c c500]

Its worker is Node (``node/graphile.mjs worker``: ``run()`` with ``concurrency`` = in flight and a
task list of one task, the rest at its defaults: LISTEN/NOTIFY, a pool of 10, no local queue, no
batched completion, its console logger; it warns that a pool smaller than the concurrency may be
slow, but the concurrency + 2 it suggests would not fit Postgres's 100 connections at 500); its schema is installed by its ``runMigrations``
(``node/graphile.mjs migrate``) on the fresh database. Jobs are added from Python the way its docs
give for code outside Node: its SQL API on one psycopg connection in autocommit, one
``graphile_worker.add_job(...)`` a job for E and B, one ``graphile_worker.add_jobs(...)`` of n job
specs for A and C (the statement its Node ``addJobs`` sends). The worker's RSS is the Node
process's.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import nodepeer  # noqa: E402
import peerlib  # noqa: E402

ADD_JOB = "SELECT FROM graphile_worker.add_job('noop', %s::json)"
ADD_JOBS = """SELECT FROM graphile_worker.add_jobs(
  array(SELECT json_populate_recordset(NULL::graphile_worker.job_spec, %s::json)))"""


class Graphile(peerlib.System):
    name = "graphile"
    dsn = nodepeer.URL

    def __init__(self):
        self.conn = None
        self._tags = itertools.count()

    def setup(self):
        import psycopg

        if self.conn is not None:
            self.conn.close()
        nodepeer.fresh_database()
        subprocess.run(
            [str(nodepeer.NODE), str(nodepeer.SCRIPTS / "graphile.mjs"), "migrate"],
            env=nodepeer.node_env(),
            check=True,
            stdout=nodepeer.log_file("graphile"),
            stderr=subprocess.STDOUT,
        )
        self.conn = psycopg.connect(nodepeer.URL, autocommit=True)

    def enqueue_one(self):
        tag = f"t{next(self._tags)}"
        self.conn.execute(ADD_JOB, (json.dumps({"tag": tag}),))
        return tag

    def enqueue_batch(self, n):
        specs = [{"identifier": "noop", "payload": {"tag": f"t{next(self._tags)}"}} for _ in range(n)]
        self.conn.execute(ADD_JOBS, (json.dumps(specs),))

    def start_worker(self, concurrency, wait_s, probe_at, port):
        return nodepeer.start_node_worker("graphile", "graphile.mjs", concurrency, wait_s, probe_at, port)

    def close(self):
        if self.conn is not None:
            self.conn.close()


if __name__ == "__main__":
    raise SystemExit(peerlib.main(Graphile(), sys.argv[1:]))
