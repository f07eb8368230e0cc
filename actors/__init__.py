"""The Dramatiq entry point: ``dramatiq actors`` runs workers, ``periodiq actors`` the scheduler.

Importing this module builds the broker with roastq's middleware stack (``middleware.stack``) and
declares the actors, and does nothing else: an app may import it to call
``evaluate_document.send(job_id)`` without roastq touching its logging, Sentry or metrics. A
worker process is set up when it boots (``ProcessSetup``, ``Metrics``); the scheduler, which
never boots a worker, is set up here when ``periodiq`` is the program running.
"""

import os
import sys

import dramatiq

from middleware.stack import build_stack
from roastq.brokers import make_broker
from roastq.evaluation import pipeline
from roastq.queues import BATCH, INTERACTIVE, JOB_ACTORS, JOB_PRIORITIES

broker = make_broker(middleware=build_stack())
dramatiq.set_broker(broker)


def _evaluate_document(job_id: str) -> None:
    pipeline.evaluate(job_id)


def _job_actor(queue: str):
    return dramatiq.actor(
        _evaluate_document,
        actor_name=JOB_ACTORS[queue],
        queue_name=queue,
        priority=JOB_PRIORITIES[queue],
        roastq_job=True,
    )


#: Interactive evaluations: a person is waiting. Workers take these before batch work.
evaluate_document = _job_actor(INTERACTIVE)
#: Batch evaluations (re-running an agent over many documents): lower priority, own queue.
evaluate_document_batch = _job_actor(BATCH)

ACTOR_FOR_QUEUE = {INTERACTIVE: evaluate_document, BATCH: evaluate_document_batch}

from actors import periodic  # noqa: E402,F401  (the housekeeping actors)

if os.path.basename(sys.argv[0]) == "periodiq":  # the scheduler's own process: an entry point
    from observability.process import setup_process

    setup_process()
