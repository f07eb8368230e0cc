"""Worker heartbeats and the job's worker id."""

import socket

from helpers import one, running_worker, stack_options, wait_until


def test_worker_heartbeat_row_lives_with_the_worker(db, broker, sim):
    with stack_options(broker, heartbeat_interval_s=0.2), running_worker(broker, threads=3):
        wait_until(lambda: one(db, "SELECT count(*) FROM worker_heartbeats") == 1, what="a heartbeat")
        hostname, threads, queues, first = one(
            db, "SELECT hostname, threads, queues, last_seen_at FROM worker_heartbeats"
        )
        assert (hostname, threads) == (socket.gethostname(), 3)
        assert set(queues) >= {"interactive", "batch"}
        wait_until(lambda: one(db, "SELECT last_seen_at FROM worker_heartbeats") > first, what="a second beat")
    assert one(db, "SELECT count(*) FROM worker_heartbeats") == 0  # a graceful stop removes the row


def test_running_job_names_its_worker(db, seeded, worker, sim):
    from roastq.api import enqueue_evaluation
    from roastq.jobctx import worker_id

    sim.configure(latency_ms=500, jitter_ms=0)
    job_id = enqueue_evaluation(next(iter(seeded.documents.values())), next(iter(seeded.agents.values())))
    wait_until(lambda: one(db, "SELECT status FROM jobs WHERE id = %s", job_id) == "RUNNING", what="RUNNING")
    assert one(db, "SELECT worker_id FROM jobs WHERE id = %s", job_id) == worker_id()
    wait_until(lambda: one(db, "SELECT status FROM jobs WHERE id = %s", job_id) == "COMPLETED", what="COMPLETED")
    assert one(db, "SELECT worker_id FROM jobs WHERE id = %s", job_id) is None
