"""Run the whole stack on one machine: database, Claude (or the simulator), and workers.

Used by ``roastq up`` (foreground until Ctrl-C) and ``roastq demo``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from roastq import db
from roastq.settings import get_settings

#: The demo's simulator: realistic latency, a few transient faults, so retries show, and answers
#: that sometimes break their schema as real models do, so repairs show.
DEMO_SIM = dict(
    latency_ms=600.0,
    jitter_ms=300.0,
    fault_rate=0.06,
    seed=7,
    sloppiness=0.3,
    faults=("rate_limit", "overloaded", "server_error", "drop", "bad_tool_input"),
)


@contextmanager
def stack(
    *,
    processes: int = 2,
    threads: int = 8,
    worker_log: Path | None = None,
    sim_config: dict | None = None,
    scheduler: bool = False,
    console: bool = False,
):
    """Start the simulator (unless ANTHROPIC_API_KEY is set), a worker pool and, if asked, the
    scheduler (`periodiq actors`) and the console (`roastq console`); stop them all after."""
    settings = get_settings()
    url = db.database_url()
    db.migrate()
    env = dict(os.environ, DATABASE_URL=url, PYTHONUNBUFFERED="1")
    sim = None
    if settings.anthropic_api_key:
        print("ANTHROPIC_API_KEY is set: calling Claude", file=sys.stderr)
    else:
        from roastq.simulator.server import SimConfig, Simulator

        sim = Simulator(SimConfig(**(sim_config or DEMO_SIM))).start()
        env["ANTHROPIC_BASE_URL"] = sim.url
        print(f"Claude simulator on {sim.url}", file=sys.stderr)
    out = None
    if worker_log is not None:
        worker_log.parent.mkdir(parents=True, exist_ok=True)
        out = open(worker_log, "ab")
    workers = start_pool(env, processes, threads, out)
    periodic = None
    if scheduler:  # periodiq reads its cron specs in local time: run it in UTC, as in production
        periodiq = str(Path(sys.executable).with_name("periodiq"))
        periodic = subprocess.Popen(
            [periodiq, "actors"], env=dict(env, TZ="UTC"), stdout=out, stderr=out, start_new_session=True
        )
        print(f"scheduler started (pid {periodic.pid})", file=sys.stderr)
    supervisor = Supervisor(env, processes, threads, workers, out)
    web = None
    if console:
        web = subprocess.Popen(
            [sys.executable, "-m", "roastq.cli", "console"], env=env, stdout=out, stderr=out, start_new_session=True
        )
        print(f"console on http://{settings.console_host}:{settings.console_port}/ (pid {web.pid})", file=sys.stderr)
    try:
        yield supervisor, sim
    finally:
        if web is not None:
            stop_workers(web, timeout=5.0)
        if periodic is not None:
            stop_workers(periodic)
        stop_workers(supervisor.workers)
        if sim is not None:
            sim.stop()
        if out is not None:
            out.close()


def start_pool(env: dict, processes: int, threads: int, out=None) -> subprocess.Popen:
    workers = subprocess.Popen(
        # `python -m actors` is `dramatiq actors` with our JSON logging in the main process too.
        [sys.executable, "-m", "actors", "--processes", str(processes), "--threads", str(threads)],
        env=env,
        stdout=out,
        stderr=out,
        start_new_session=True,
    )
    workers.roastq_started = time.monotonic()
    print(f"workers started: {processes} processes x {threads} threads (pid {workers.pid})", file=sys.stderr)
    return workers


class Supervisor:
    """Restart a worker pool that exits by itself, as systemd's ``Restart=always`` does.

    When one worker process dies (the OOM killer, ``kill -9``), dramatiq's main process stops
    the others and exits (code 1): left alone, nothing would run. The pool is started again at
    once; one that keeps dying within ``RESTART_WINDOW_S`` of its start waits longer each time
    (1, 2, 4 ... 30 s), so that a crash loop does not spin.
    """

    RESTART_WINDOW_S = 10.0
    MAX_DELAY_S = 30.0

    def __init__(self, env: dict, processes: int, threads: int, workers: subprocess.Popen, out=None):
        self.env, self.processes, self.threads, self.out = env, processes, threads, out
        self.workers = workers
        self.restarts = 0
        self._quick_exits = 0
        self._restart_at: float | None = None

    def check(self) -> subprocess.Popen:
        """Call often: restart the pool when it is due; return the pool running now."""
        now = time.monotonic()
        if self._restart_at is None and self.workers.poll() is not None:
            lived = now - self.workers.roastq_started
            self._quick_exits = self._quick_exits + 1 if lived < self.RESTART_WINDOW_S else 0
            delay = 0.0 if self._quick_exits <= 1 else min(self.MAX_DELAY_S, 2.0 ** (self._quick_exits - 2))
            print(
                f"worker pool (pid {self.workers.pid}) exited with code {self.workers.returncode} "
                f"after {lived:.0f} s: restarting in {delay:.0f} s",
                file=sys.stderr,
            )
            self._restart_at = now + delay
        if self._restart_at is not None and now >= self._restart_at:
            self._restart_at = None
            self.workers = start_pool(self.env, self.processes, self.threads, self.out)
            self.restarts += 1
        return self.workers


def stop_workers(workers: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM (graceful: running jobs finish, prefetched messages are requeued), then SIGKILL."""
    if workers.poll() is not None:
        return
    try:
        # To dramatiq's main process only: it forwards SIGTERM to its workers. A second SIGTERM
        # (sent to the whole group, say) would make them exit at once instead of finishing.
        workers.send_signal(signal.SIGTERM)
        workers.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(workers.pid, signal.SIGKILL)
        workers.wait()
    except ProcessLookupError:
        pass


def run_up(*, processes: int, threads: int) -> int:
    # SIGTERM (from a supervisor, or `timeout`) stops the stack as Ctrl-C does: nothing is left behind.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    with stack(processes=processes, threads=threads, scheduler=True, console=True) as (supervisor, _sim):
        print("roastq is up; Ctrl-C to stop", file=sys.stderr)
        try:
            while True:  # a pool that dies (a worker killed: dramatiq stops them all) is restarted
                supervisor.check()
                time.sleep(0.2)
        except KeyboardInterrupt:
            print("\nstopping...", file=sys.stderr)
    return 0
