"""procrastinate (PyPI) in the peer comparison, run in the peers' venv (bench/peers/run.py makes it):

    bench/peers/.venv/bin/python bench/peers/sys_procrastinate.py [a e b c c500]

At its defaults (psycopg 3 connector, LISTEN/NOTIFY), one async task, ``concurrency`` = in flight.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import peerlib  # noqa: E402

SERVER = os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = os.environ.get("PEER_DATABASE", "roastq_peers")
URL = SERVER.rsplit("/", 1)[0] + "/" + DATABASE


def make_app():
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=URL))
    at, wait_s = os.environ.get("PEER_PROBE_AT", "end"), float(os.environ.get("PEER_WAIT_S", "0"))

    @app.task(name="noop")
    async def noop(tag):
        if at == "start":
            peerlib.probe(tag)
        if wait_s:
            await asyncio.sleep(wait_s)
        if at == "end":
            peerlib.probe(tag)

    return app, noop


class Procrastinate(peerlib.System):
    name = "procrastinate"

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.app = None
        self._tags = itertools.count()

    def setup(self):
        import psycopg

        async def go():
            if self.app is not None:
                await self.app.close_async()
            admin = await psycopg.AsyncConnection.connect(SERVER, autocommit=True)
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (DATABASE,)
            )
            await admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}"')
            await admin.execute(f'CREATE DATABASE "{DATABASE}"')
            await admin.close()
            self.app, self.task = make_app()
            await self.app.open_async()
            await self.app.schema_manager.apply_schema_async()

        self.loop.run_until_complete(go())

    def enqueue_one(self):
        tag = f"t{next(self._tags)}"
        self.loop.run_until_complete(self.task.defer_async(tag=tag))
        return tag

    def enqueue_batch(self, n):
        self.loop.run_until_complete(self.task.batch_defer_async(*({"tag": f"t{next(self._tags)}"} for _ in range(n))))

    def start_worker(self, concurrency, wait_s, probe_at, port):
        env = dict(
            os.environ,
            PEER_PROBE_PORT=str(port),
            PEER_PROBE_AT=probe_at,
            PEER_WAIT_S=str(wait_s),
            PEER_CONCURRENCY=str(concurrency),
        )
        log = open(HERE.parent.parent / ".roastq" / "bench" / "peers-procrastinate.log", "ab")
        return subprocess.Popen(
            [sys.executable, __file__, "--worker"], env=env, stdout=log, stderr=log, start_new_session=True
        )

    def close(self):
        if self.app is not None:
            self.loop.run_until_complete(self.app.close_async())


async def worker():
    app, _ = make_app()
    async with app.open_async():
        await app.run_worker_async(concurrency=int(os.environ["PEER_CONCURRENCY"]))


if __name__ == "__main__":
    if sys.argv[1:] == ["--worker"]:
        asyncio.run(worker())
    else:
        raise SystemExit(peerlib.main(Procrastinate(), sys.argv[1:]))
