"""The dramatiq systems of the peer comparison, run in the project's venv:

    .venv/bin/python bench/peers/sys_dramatiq.py jobs|plain|stock [a e b c c500]

* jobs: roastq's whole job path (``enqueue_evaluation(s)``, a jobs row, the full middleware stack,
  the default INFO logs and metrics);
* plain: our broker and middleware, an actor with no job row;
* stock: dramatiq-pg 0.12 as shipped, dramatiq's default middleware.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))
import peerlib  # noqa: E402

SERVER = os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = os.environ.get("PEER_DATABASE", "roastq_peers")
#: Finished jobs (and done messages) put in the tables before the workloads: PEER_PREFILL=1000000.
PREFILL = int(os.environ.get("PEER_PREFILL", "0"))


def fresh_database() -> str:
    import psycopg2

    admin = psycopg2.connect(SERVER)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (DATABASE,))
        cur.execute(f'DROP DATABASE IF EXISTS "{DATABASE}"')
        cur.execute(f'CREATE DATABASE "{DATABASE}"')
    admin.close()
    return SERVER.rsplit("/", 1)[0] + "/" + DATABASE


class Dramatiq(peerlib.System):
    def __init__(self, mode: str):
        self.mode = mode
        self.name = {"jobs": "roastq jobs", "plain": "roastq plain", "stock": "stock dramatiq-pg"}[mode]
        self.url = self.dsn = fresh_database()
        os.environ["DATABASE_URL"] = self.url
        os.environ.pop("LOG_LEVEL", None)  # the defaults a user runs
        self._tags = itertools.count()
        import psycopg2

        if mode == "stock":
            # dramatiq-pg's schema.sql is a psql script: the same schema, as our first migration.
            conn = psycopg2.connect(self.url)
            with conn, conn.cursor() as cur:
                cur.execute((ROOT / "roastq" / "sql" / "migrations" / "0001_broker.sql").read_text())
            conn.close()
            import stock_worker

            self.actor = stock_worker.peer_plain
        else:
            from roastq import db

            db.migrate()
            import roastq_worker

            self.actor = roastq_worker.peer_plain
        self.conn = psycopg2.connect(self.url)
        self.conn.autocommit = True
        if mode == "jobs":
            sys.path.insert(0, str(ROOT / "bench"))
            from _common import seed_minimal

            (self.doc,), self.agent = seed_minimal(self.conn)

    def setup(self):
        with self.conn.cursor() as cur:
            if self.mode == "jobs":
                cur.execute("TRUNCATE dramatiq.queue, job_attempts, jobs CASCADE")
                if PREFILL:
                    self._prefill(cur, PREFILL)
            else:
                cur.execute("TRUNCATE dramatiq.queue")
            cur.execute("VACUUM ANALYZE")

    def _prefill(self, cur, n: int) -> None:
        """n finished jobs (with their attempt and their done message) already in the tables, as
        after weeks of work within the retention (the growth run of issue 14, item 5), with the
        time-ordered ids roastq gives them (roastq/ids.py)."""
        message = self.actor.message("00000000-0000-0000-0000-000000000000").encode().decode()
        cur.execute(
            "INSERT INTO evaluations (document_id, agent_id) VALUES (%s, %s) ON CONFLICT DO NOTHING",
            (self.doc, self.agent),
        )
        cur.execute("SET session_replication_role = replica")  # no foreign-key checks for the fill
        cur.execute(
            """
            WITH e AS (SELECT id FROM evaluations LIMIT 1),
            dv AS (SELECT id FROM document_versions LIMIT 1), av AS (SELECT id FROM agent_versions LIMIT 1)
            INSERT INTO jobs (id, evaluation_id, document_version_id, agent_version_id, status, queue, attempts,
                              created_at, started_at, completed_at, updated_at, duration_s, message_id)
            SELECT roastq_uuid7(t), e.id, dv.id, av.id, 'COMPLETED', 'batch', 1, t, t, t, t, 0.01, roastq_uuid7(t)
            FROM e, dv, av, generate_series(1, %(n)s) AS g,
                 LATERAL (SELECT now() - make_interval(secs => g * 0.5) AS t) AS ts""",
            {"n": n},
        )
        cur.execute("""INSERT INTO job_attempts (job_id, attempt, message_id, started_at, ended_at, outcome)
                       SELECT id, 1, message_id, started_at, completed_at, 'completed' FROM jobs""")
        cur.execute(
            """INSERT INTO dramatiq.queue (queue_name, message_id, "state", mtime, message)
                       SELECT 'batch', message_id, 'done', completed_at, %(m)s::jsonb FROM jobs""",
            {"m": message},
        )
        cur.execute("SET session_replication_role = DEFAULT")

    def enqueue_one(self) -> str:
        if self.mode == "jobs":
            from roastq.api import enqueue_evaluation

            return enqueue_evaluation(self.doc, self.agent)
        tag = f"t{next(self._tags)}"
        self.actor.send(tag)
        return tag

    def enqueue_batch(self, n: int) -> None:
        if self.mode == "jobs":
            from roastq.api import enqueue_evaluations

            enqueue_evaluations([(self.doc, self.agent)] * n)
            return
        # Neither broker has a batch send: the rows and their NOTIFYs, in one statement.
        messages = [self.actor.message(f"t{next(self._tags)}") for _ in range(n)]
        from roastq.db import Q

        with self.conn.cursor() as cur:
            cur.execute(
                Q.enqueue_messages,
                {
                    "queues": ["peer"] * n,
                    "message_ids": [m.message_id for m in messages],
                    "messages": [m.encode().decode() for m in messages],
                },
            )

    def start_worker(self, concurrency, wait_s, probe_at, port):
        log_dir = ROOT / ".roastq" / "bench"
        log_dir.mkdir(parents=True, exist_ok=True)
        log = open(log_dir / f"peers-{self.mode}.log", "ab")
        module = "stock_worker" if self.mode == "stock" else "roastq_worker"
        queues = ["interactive", "batch"] if self.mode == "jobs" else ["peer"]
        cmd = [
            sys.executable,
            "-m",
            "dramatiq",
            module,
            "--path",
            str(HERE),
            str(ROOT),
            "--processes",
            "1",
            "--threads",
            str(concurrency),
            "--queues",
            *queues,
        ]
        env = dict(
            os.environ,
            PEER_PROBE_PORT=str(port),
            PEER_PROBE_AT=probe_at,
            PEER_WAIT_S=str(wait_s),
            METRICS_PORT="0",
            PYTHONUNBUFFERED="1",
        )
        return subprocess.Popen(cmd, env=env, stdout=log, stderr=log, start_new_session=True, cwd=ROOT)

    def stop_worker(self, worker):
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()

    def close(self):
        self.conn.close()


if __name__ == "__main__":
    raise SystemExit(peerlib.main(Dramatiq(sys.argv[1]), sys.argv[2:]))
