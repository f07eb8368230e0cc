"""Shared plumbing for the benchmarks: a fresh database, worker processes, waiting, statistics.

Benchmarks talk to the Postgres at 127.0.0.1:5432 (BENCH_POSTGRES to change), in a database of
their own that is created anew for each run.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg2

ROOT = Path(__file__).resolve().parent.parent
SERVER = os.environ.get("BENCH_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


def recreate_database(name: str) -> str:
    """Drop and recreate an empty database; return its URL."""
    admin = psycopg2.connect(SERVER)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cur.execute(f'CREATE DATABASE "{name}"')
    admin.close()
    return SERVER.rsplit("/", 1)[0] + "/" + name


def fresh_database(name: str = "roastq_bench") -> str:
    """Drop and recreate the bench database, migrate it, point roastq at it; return its URL."""
    url = recreate_database(name)
    os.environ["DATABASE_URL"] = url
    # The defaults a user runs (INFO logs, metrics on); a quieter LOG_LEVEL only to show a run beside them.
    os.environ.setdefault("LOG_LEVEL", "INFO")
    from roastq import db
    from roastq.settings import reload_settings

    reload_settings()
    db.reset()
    db.migrate()
    return url


def connect():
    conn = psycopg2.connect(os.environ["DATABASE_URL"])
    conn.autocommit = True
    return conn


def scalar(conn, sql, *params):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchone()[0]


def start_workers(module: str, *, processes: int = 1, threads: int = 8, queues=None, **env) -> subprocess.Popen:
    """`dramatiq MODULE` in its own process group, logs to a file under .roastq/bench/."""
    log_dir = ROOT / ".roastq" / "bench"
    log_dir.mkdir(parents=True, exist_ok=True)
    log = open(log_dir / f"{module.replace('.', '_')}.log", "ab")
    cmd = [
        sys.executable,
        "-m",
        "dramatiq",
        module,
        "--path",
        str(ROOT / "bench"),
        str(ROOT),
        "--processes",
        str(processes),
        "--threads",
        str(threads),
    ]
    if queues:
        cmd += ["--queues", *queues]
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **{k: str(v) for k, v in env.items()})
    return subprocess.Popen(cmd, env=full_env, stdout=log, stderr=log, start_new_session=True, cwd=ROOT)


def stop_workers(proc: subprocess.Popen) -> None:
    import signal

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_until(predicate, timeout: float, interval: float = 0.01, what: str = "condition") -> float:
    """Poll until predicate() is true; return the time.monotonic() at which it was seen true."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def wait_workers_ready(conn, processes: int, timeout: float = 60) -> None:
    """Wait until `processes` worker processes have sent a heartbeat (their consumers are up)."""
    wait_until(
        lambda: scalar(conn, "SELECT count(*) FROM worker_heartbeats") >= processes,
        timeout,
        interval=0.1,
        what="worker heartbeats",
    )
    time.sleep(0.5)  # consumers LISTEN right after boot


def percentile(values, q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def median(values) -> float:
    return statistics.median(values)


def machine() -> str:
    return f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, {platform.machine()}"


def seed_minimal(conn, n_documents: int = 1) -> tuple[list[str], str]:
    """Tiny documents and one agent, for jobs whose actor does no LLM work."""
    with conn.cursor() as cur:
        docs = []
        for i in range(n_documents):
            cur.execute("INSERT INTO documents (slug) VALUES (%s) RETURNING id", (f"bench-{i}",))
            doc = cur.fetchone()[0]
            cur.execute(
                "INSERT INTO document_versions (document_id, version, title, content) "
                "VALUES (%s, 1, 'Bench', 'Some text.')",
                (doc,),
            )
            docs.append(str(doc))
        cur.execute("INSERT INTO agents (slug) VALUES ('bench') RETURNING id")
        agent = cur.fetchone()[0]
        cur.execute(
            "INSERT INTO agent_versions (agent_id, version, name, primary_instructions) "
            "VALUES (%s, 1, 'Bench', 'Evaluate.')",
            (agent,),
        )
    return docs, str(agent)
