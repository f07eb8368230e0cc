"""A dead worker process (issue 13): `roastq up` restarts its pool, and the killed job runs again.

When one worker process dies (the OOM killer, ``kill -9``), dramatiq's main process stops the
others and exits; `roastq up` starts the pool again (roastq/cli/stack.py, ``Supervisor``), and the
new workers take over the job the dead one held (its liveness lock died with it).
"""

import os
import signal
import subprocess
import sys

import pytest
from helpers import kill_all, one, wait_for_status, wait_until

from roastq.api import enqueue_evaluation

pytestmark = pytest.mark.postgres_broker


def live_worker_pids(db) -> set[int]:
    with db.cursor() as cur:
        cur.execute("SELECT pid FROM worker_heartbeats WHERE last_seen_at > now() - interval '5 seconds'")
        return {r[0] for r in cur.fetchall()}


def test_roastq_up_restarts_its_pool_when_a_worker_is_killed_and_the_job_runs_again(db, seeded, tmp_path):
    env = dict(os.environ, PYTHONUNBUFFERED="1", METRICS_PORT="0", RECOVERY_INTERVAL_S="1", LOG_FORMAT="json")
    env.pop("ANTHROPIC_BASE_URL", None)  # `up` starts its own simulator (600 ms a call: the job runs a while)
    log = open(tmp_path / "up.log", "wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "roastq.cli.main", "up", "--processes", "1", "--threads", "2"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(lambda: live_worker_pids(db), timeout=60, what="the pool to start")
        agent = one(db, "SELECT agent_id FROM agent_versions WHERE self_critique_instructions IS NULL LIMIT 1")
        job_id = enqueue_evaluation(next(iter(seeded.documents.values())), agent)
        wait_until(
            lambda: one(db, "SELECT status FROM jobs WHERE id = %s", job_id) == "RUNNING",
            timeout=60,
            what="the job to run",
        )
        victim = int(one(db, "SELECT worker_id FROM jobs WHERE id = %s", job_id).rsplit(":", 1)[1])
        os.kill(victim, signal.SIGKILL)  # the OOM killer
        wait_until(lambda: live_worker_pids(db) - {victim}, timeout=60, what="a new worker process")
        assert up.poll() is None, "roastq up stopped with its pool"
        assert wait_for_status(db, [job_id], statuses=("COMPLETED",), timeout=90)[job_id] == "COMPLETED"
        assert one(db, "SELECT count(*) FROM job_attempts WHERE job_id = %s AND outcome = 'crashed'", job_id) == 1
        assert one(db, "SELECT count(*) FROM evaluation_versions WHERE job_id = %s", job_id) == 1
        up.send_signal(signal.SIGTERM)
        assert up.wait(60) == 0
        log.close()
        assert b"restarting in 0 s" in (tmp_path / "up.log").read_bytes()
    finally:
        kill_all(up)
