"""What the two Node peers (sys_pgboss.py, sys_graphile.py) share: Node 22 and the npm packages in
``bench/peers/.node`` (run.py installs them), a fresh database, and a Node worker process started
and stopped the way the Python peers' workers are (standard library and psycopg: the peers' venv).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent
NODE = HERE / ".node" / "node_modules" / ".bin" / "node"
SCRIPTS = HERE / "node"
SERVER = os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = os.environ.get("PEER_DATABASE", "roastq_peers")
URL = SERVER.rsplit("/", 1)[0] + "/" + DATABASE


def fresh_database() -> None:
    import psycopg

    with psycopg.connect(SERVER, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (DATABASE,))
        admin.execute(f'DROP DATABASE IF EXISTS "{DATABASE}"')
        admin.execute(f'CREATE DATABASE "{DATABASE}"')


def node_env(**extra) -> dict:
    if not NODE.exists():
        raise SystemExit(f"peers: no Node 22 at {NODE} (bench/peers/run.py installs it)")
    return dict(os.environ, PEER_URL=URL, **{k: str(v) for k, v in extra.items()})


def log_file(system: str):
    path = HERE.parent.parent / ".roastq" / "bench" / f"peers-{system}.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    return open(path, "ab")


def start_node_worker(system: str, script: str, concurrency: int, wait_s: float, probe_at: str, port: int):
    """The system's Node worker (``node <script> worker``); the job bodies probe from its pid."""
    env = node_env(PEER_PROBE_PORT=port, PEER_PROBE_AT=probe_at, PEER_WAIT_S=wait_s, PEER_CONCURRENCY=concurrency)
    log = log_file(system)
    return subprocess.Popen(
        [str(NODE), str(SCRIPTS / script), "worker"], env=env, stdout=log, stderr=log, start_new_session=True
    )
