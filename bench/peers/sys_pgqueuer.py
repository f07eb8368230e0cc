"""pgqueuer (PyPI) in the peer comparison, run in the peers' venv (bench/peers/run.py makes it):

    bench/peers/.venv/bin/python bench/peers/sys_pgqueuer.py [a e b c c500]

At its defaults (asyncpg, LISTEN/NOTIFY, jobs logged to pgqueuer_log), with one async entrypoint;
``max_concurrent_tasks`` is the concurrency (batch_size halved where pgqueuer requires it).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import peerlib  # noqa: E402

SERVER = os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = os.environ.get("PEER_DATABASE", "roastq_peers")
URL = SERVER.rsplit("/", 1)[0] + "/" + DATABASE


async def _fresh():
    import asyncpg

    admin = await asyncpg.connect(SERVER)
    await admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", DATABASE)
    await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}"')
    await admin.execute(f'CREATE DATABASE "{DATABASE}"')
    await admin.close()


class PgQueuer(peerlib.System):
    name = "pgqueuer"

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.conn = None
        self._tags = itertools.count()

    def setup(self):
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries

        async def go():
            if self.conn is not None:
                await self.conn.close()
            await _fresh()
            self.conn = await asyncpg.connect(URL)
            self.queries = Queries(AsyncpgDriver(self.conn))
            await self.queries.install()

        self.loop.run_until_complete(go())

    def enqueue_one(self):
        tag = f"t{next(self._tags)}"
        self.loop.run_until_complete(self.queries.enqueue("noop", tag.encode()))
        return tag

    def enqueue_batch(self, n):
        tags = [f"t{next(self._tags)}".encode() for _ in range(n)]
        self.loop.run_until_complete(self.queries.enqueue(["noop"] * n, tags, [0] * n))

    def start_worker(self, concurrency, wait_s, probe_at, port):
        env = dict(
            os.environ,
            PEER_PROBE_PORT=str(port),
            PEER_PROBE_AT=probe_at,
            PEER_WAIT_S=str(wait_s),
            PEER_CONCURRENCY=str(concurrency),
        )
        log = open(HERE.parent.parent / ".roastq" / "bench" / "peers-pgqueuer.log", "ab")
        return subprocess.Popen(
            [sys.executable, __file__, "--worker"], env=env, stdout=log, stderr=log, start_new_session=True
        )

    def close(self):
        if self.conn is not None:
            self.loop.run_until_complete(self.conn.close())


async def worker():
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries, QueueManager

    at, wait_s = os.environ["PEER_PROBE_AT"], float(os.environ["PEER_WAIT_S"])
    concurrency = int(os.environ["PEER_CONCURRENCY"])
    conn = await asyncpg.connect(URL)
    qm = QueueManager(Queries(AsyncpgDriver(conn)))

    @qm.entrypoint("noop")
    async def noop(job):
        tag = job.payload.decode()
        if at == "start":
            peerlib.probe(tag)
        if wait_s:
            await asyncio.sleep(wait_s)
        if at == "end":
            peerlib.probe(tag)

    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, qm.shutdown.set)
    await qm.run(batch_size=min(10, concurrency // 2), max_concurrent_tasks=concurrency)


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        asyncio.run(worker())
    else:
        raise SystemExit(peerlib.main(PgQueuer(), sys.argv[1:]))
