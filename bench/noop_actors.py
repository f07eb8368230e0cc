"""Bench actors on our broker and full middleware stack (`dramatiq noop_actors --path bench`).

They are job actors (``roastq_job=True``): JobState starts each job, and the actor writes the
minimal result a real job writes (COMPLETED and the attempt closed, one transaction).
"""

import os
import time

import dramatiq

import actors  # noqa: F401  (our broker, middleware and actors)
from roastq import db, jobs
from roastq.jobctx import current_job

IO_WAIT_S = float(os.environ.get("BENCH_IO_WAIT_S", "1.0"))

COMPLETE = """
UPDATE jobs SET status = 'COMPLETED', completed_at = now(), updated_at = now(), worker_id = NULL,
    duration_s = EXTRACT(EPOCH FROM now() - created_at)
WHERE id = %(job_id)s
"""


def _complete(job_id: str) -> None:
    """What pipeline.save does, less the evaluation rows: job COMPLETED, attempt closed and the
    message acknowledged in one transaction."""
    job = current_job.get()
    with db.transaction() as cur:
        cur.execute(COMPLETE, {"job_id": job_id})
        jobs.finish_attempt(cur, job_id, job.attempt, job.message_id)
    job.finished_with_result = True


@dramatiq.actor(queue_name="bench", priority=100, roastq_job=True)
def noop_job(job_id):
    _complete(job_id)


@dramatiq.actor(queue_name="bench_interactive", priority=0, roastq_job=True)
def noop_job_interactive(job_id):
    _complete(job_id)


@dramatiq.actor(queue_name="bench", priority=100, roastq_job=True)
def io_job(job_id):
    time.sleep(IO_WAIT_S)  # an LLM call's wait, without the LLM
    _complete(job_id)


@dramatiq.actor(queue_name="bench", priority=100)
def noop_plain(n):
    """Not a job actor: our broker and middleware, without the job bookkeeping."""
