"""The roastq worker of the peer comparison: `dramatiq roastq_worker --path bench/peers`.

Imports ``actors`` (our broker, the full middleware stack, the default logging) and gives the two
evaluation actors a no-op body that still does a job's bookkeeping: JobState starts the job, the
body writes COMPLETED (on a live job only) and closes the attempt with the ack in one transaction,
through ``roastq.jobs`` (what ``pipeline.save`` does, less the evaluation rows). That transaction
reads nothing back, so it is committed in a group with other threads' (``db.grouped_transaction``);
``pipeline.save`` reads the next version number under the job's lock and commits on its own. So ``enqueue_evaluation`` and
``enqueue_evaluations`` are timed on their real path. ``peer_plain`` is the same broker and
middleware with no job row ("roastq plain").
"""

import os
import sys
import time
from pathlib import Path

import dramatiq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peerlib import probe  # noqa: E402

import actors  # noqa: E402
from roastq import db, jobs  # noqa: E402
from roastq.jobctx import current_job  # noqa: E402

PROBE_AT = os.environ.get("PEER_PROBE_AT", "end")
WAIT_S = float(os.environ.get("PEER_WAIT_S", "0"))


def noop_job(job_id: str) -> None:
    if PROBE_AT == "start":
        probe(job_id)
    if WAIT_S:
        time.sleep(WAIT_S)
    job = current_job.get()
    with db.grouped_transaction() as cur:  # pipeline.save's bookkeeping, without the evaluation's rows
        jobs.complete(cur, job_id, evaluation_version_id=None, price_usd=0)
        jobs.finish_attempt(cur, job_id, job.attempt, job.message_id)
    job.finished_with_result = True
    if PROBE_AT == "end":
        probe(job_id)


actors.evaluate_document.fn = noop_job
actors.evaluate_document_batch.fn = noop_job


@dramatiq.actor(queue_name="peer")
def peer_plain(tag):
    if PROBE_AT == "start":
        probe(tag)
    if WAIT_S:
        time.sleep(WAIT_S)
    if PROBE_AT == "end":
        probe(tag)
