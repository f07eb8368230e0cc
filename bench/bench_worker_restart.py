"""A dead worker process (issue 13, item 5): from a SIGKILL of the worker running a job until
the job runs again, with `roastq up` restarting the pool in between (its Supervisor, as systemd's
Restart=always or compose's restart policy would).

`roastq up --processes 1` runs the pool (and the simulator, its scheduler); each round enqueues
one evaluation, waits until it is RUNNING, SIGKILLs the worker process that runs it (dramatiq's
main process then exits: the whole pool is gone) and measures, from the kill: the new pool's
first heartbeat, the job's second attempt starting, and the job COMPLETED. Defaults (INFO logs,
metrics on, RECOVERY_INTERVAL_S=10).

    .venv/bin/python bench/bench_worker_restart.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, connect, fresh_database, machine, median, scalar, wait_until  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    fresh_database("roastq_runonce_up")
    os.environ["LOG_LEVEL"] = "INFO"
    from roastq.api import enqueue_evaluation
    from roastq.evaluation.seed import seed

    seeded = seed()
    conn = connect()
    agent = scalar(conn, "SELECT agent_id FROM agent_versions WHERE self_critique_instructions IS NULL LIMIT 1")
    document = next(iter(seeded.documents.values()))
    log = (
        open(ROOT / ".roastq" / "bench" / "worker_restart.log", "ab")
        if (ROOT / ".roastq" / "bench").exists()
        else subprocess.DEVNULL
    )
    env = dict(os.environ, PYTHONUNBUFFERED="1", METRICS_PORT="0")
    env.pop("ANTHROPIC_BASE_URL", None)
    up = subprocess.Popen(
        [sys.executable, "-m", "roastq.cli.main", "up", "--processes", "1", "--threads", "8"],
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
        cwd=ROOT,
    )
    beats, reruns, completions = [], [], []
    try:
        wait_until(lambda: scalar(conn, "SELECT count(*) FROM worker_heartbeats"), 90, 0.1, "the pool")
        for _ in range(args.rounds):
            job = enqueue_evaluation(document, agent)
            wait_until(
                lambda: scalar(conn, "SELECT status FROM jobs WHERE id = %s", job) == "RUNNING", 60, 0.005, "RUNNING"
            )
            victim = int(scalar(conn, "SELECT worker_id FROM jobs WHERE id = %s", job).rsplit(":", 1)[1])
            killed, killed_mono = time.time(), time.monotonic()
            os.kill(victim, signal.SIGKILL)
            t_beat = wait_until(
                lambda: scalar(
                    conn,
                    "SELECT count(*) FROM worker_heartbeats WHERE pid <> %s AND started_at > to_timestamp(%s)",
                    victim,
                    killed,
                ),
                120,
                0.02,
                "a new pool",
            )
            beats.append(t_beat - killed_mono)
            wait_until(
                lambda: scalar(conn, "SELECT count(*) FROM job_attempts WHERE job_id = %s", job) >= 2,
                120,
                0.02,
                "the second attempt",
            )
            reruns.append(
                scalar(
                    conn,
                    "SELECT EXTRACT(EPOCH FROM started_at)::float8 FROM job_attempts WHERE job_id = %s AND attempt = 2",
                    job,
                )
                - killed
            )
            wait_until(
                lambda: scalar(conn, "SELECT status FROM jobs WHERE id = %s", job) == "COMPLETED",
                120,
                0.02,
                "COMPLETED",
            )
            completions.append(
                scalar(conn, "SELECT EXTRACT(EPOCH FROM completed_at)::float8 FROM jobs WHERE id = %s", job) - killed
            )
            print(
                f"round: new pool beats {beats[-1]:.1f} s, job runs again {reruns[-1]:.1f} s, "
                f"completed {completions[-1]:.1f} s after the kill",
                flush=True,
            )
        restarts = up.poll() is None
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
    print(f"# {machine()}")
    print(
        f"kill -9 of the worker running a job, `roastq up --processes 1 --threads 8` restarting the pool, "
        f"{args.rounds} rounds (up still running: {restarts}):"
    )
    for name, values in (
        ("new pool's first heartbeat", beats),
        ("the job runs again", reruns),
        ("the job completed", completions),
    ):
        print(f"  {name:28s} median {median(values):5.1f} s  (min {min(values):.1f}, max {max(values):.1f})")


if __name__ == "__main__":
    main()
