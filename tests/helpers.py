"""Small helpers for tests: polling the jobs table and one-line queries."""

import time
from contextlib import contextmanager


def wait_for_status(conn, job_ids, statuses=("COMPLETED", "FAILED", "CANCELLED"), timeout=30.0) -> dict:
    """Poll until every job has one of ``statuses``; return {job_id: status}."""
    deadline = time.monotonic() + timeout
    ids = [str(j) for j in job_ids]
    while True:
        with conn.cursor() as cur:
            cur.execute("SELECT id::text, status FROM jobs WHERE id = ANY(%s::uuid[])", (ids,))
            found = dict(cur.fetchall())
        if len(found) == len(ids) and all(s in statuses for s in found.values()):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs not finished after {timeout} s: {found}")
        time.sleep(0.05)


def one(conn, sql, *params):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        row = cur.fetchone()
    return row[0] if row and len(row) == 1 else row


def rows(conn, sql, *params):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def start_workers(processes=1, threads=2, **env_overrides):
    """A real `dramatiq actors` worker pool in its own process group (to kill it whole)."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PYTHONUNBUFFERED="1", LOG_FORMAT="json", **{k: str(v) for k, v in env_overrides.items()})
    return subprocess.Popen(
        [sys.executable, "-m", "dramatiq", "actors", "--processes", str(processes), "--threads", str(threads)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


def kill_group(proc, sig):
    import os

    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def kill_all(*procs):
    """SIGKILL what is still running of the given worker pools (test clean-up), and reap them."""
    import signal

    for proc in procs:
        if proc is not None:  # the group, even when its main process has already exited
            kill_group(proc, signal.SIGKILL)
            proc.wait()


def wait_until(predicate, timeout=30.0, interval=0.05, what="condition"):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


@contextmanager
def running_worker(broker, threads=4):
    """A dramatiq Worker in this process; stopped and detached from the broker afterwards."""
    import dramatiq

    before = list(broker.middleware)
    w = dramatiq.Worker(broker, worker_threads=threads, worker_timeout=100)
    w.start()
    try:
        yield w
    finally:
        w.stop(timeout=10_000)
        broker.middleware[:] = before


@contextmanager
def stack_options(broker, **changes):
    """For the duration, the test broker's middleware has the options a stack built with these
    settings has (``backoff_scale``, ``pause_snooze_s``, ``heartbeat_interval_s``,
    ``job_crash_limit``): middleware options are constructor arguments (middleware/stack.py), read
    from the settings once, so a test sets them here instead of in the environment."""
    from middleware.stack import build_stack
    from roastq.settings import get_settings

    fresh = {type(mw): mw for mw in build_stack(get_settings().replace(**changes), exporter=False)}
    saved = []
    for mw in broker.middleware:
        new = fresh.get(type(mw))
        for attr in ("policy", "snooze_s", "interval_s", "crash_limit", "enabled", "tick_s"):
            if new is not None and attr in vars(new):
                saved.append((mw, attr, getattr(mw, attr)))
                setattr(mw, attr, getattr(new, attr))
    try:
        yield
    finally:
        for mw, attr, value in saved:
            setattr(mw, attr, value)
