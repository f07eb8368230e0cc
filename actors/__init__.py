"""The Dramatiq entry point: ``dramatiq actors`` runs workers, ``periodiq actors`` the scheduler.

Importing this module configures the process (logging), builds the broker with our middleware
stack, and declares the actors.
"""

import dramatiq
from dramatiq.middleware import CurrentMessage, ShutdownNotifications, TimeLimit

from middleware.batchlane import BatchLane
from middleware.heartbeat import Heartbeat
from middleware.jobs import JobState
from middleware.logs import JobLogs
from middleware.metrics import Metrics
from middleware.retries import Retries
from middleware.sentry import Sentry
from observability.logging import setup_logging
from observability.sentry import setup_sentry
from roastq.evaluation import pipeline
from roastq.brokers import make_broker

setup_logging()
setup_sentry()

# Order matters: JobState sets each job's time limit before TimeLimit reads it, and after a
# failure its hook runs before Retries' (after-hooks run in reverse), so the job row says what
# happens before the retry is enqueued. Sentry and JobLogs come before JobState so that their
# after-hooks run once the job row is written; Metrics after it, so that it counts only attempts
# that start. Metrics replaces dramatiq's Prometheus middleware (and runs the one exporter).
# The broker is Postgres (dramatiq-pg, hardened) unless BROKER_URL names RabbitMQ: the same
# middleware either way (roastq/brokers/__init__.py).
broker = make_broker(
    middleware=[
        Retries(),
        Sentry(),
        JobLogs(),
        JobState(),
        Metrics(),
        TimeLimit(),
        ShutdownNotifications(),
        CurrentMessage(),
        Heartbeat(),
        BatchLane(),
    ]
)
dramatiq.set_broker(broker)


def _evaluate_document(job_id: str) -> None:
    pipeline.evaluate(job_id)


#: Interactive evaluations: a person is waiting. Workers take these before batch work.
evaluate_document = dramatiq.actor(
    _evaluate_document, actor_name="evaluate_document", queue_name="interactive", priority=0, roastq_job=True
)
#: Batch evaluations (re-running an agent over many documents): lower priority, own queue.
evaluate_document_batch = dramatiq.actor(
    _evaluate_document, actor_name="evaluate_document_batch", queue_name="batch", priority=100, roastq_job=True
)

ACTOR_FOR_QUEUE = {"interactive": evaluate_document, "batch": evaluate_document_batch}

# Operations. The system pause holds job messages before an attempt starts (so after Retries,
# which re-enqueues them, and before JobState); periodiq's middleware accepts the `periodic`
# option and drops periodic messages older than a tick; actors/periodic.py declares them.
from middleware.pause import SystemPause  # noqa: E402
from periodiq import PeriodiqMiddleware  # noqa: E402

broker.add_middleware(SystemPause(), before=JobState)
broker.add_middleware(PeriodiqMiddleware(skip_delay=55))

from actors import periodic  # noqa: E402,F401
