"""The middleware stack of roastq's workers, declared once, in order.

Order matters, and this is the one place that says it. Before-hooks run in list order and
after-hooks in reverse, so:

* ``ProcessSetup`` first: every other boot hook logs through the set-up logging.
* ``Retries`` early, so its after-hook runs last: by the time it re-enqueues a retry (or rejects
  a dead letter), ``JobState`` has written the job row, and ``Sentry``, ``JobLogs`` and
  ``Metrics`` have reported the same decision (``decision_for``, computed once an attempt).
* ``Sentry`` and ``JobLogs`` before ``JobState``: Sentry's before-hook opens the attempt's scope
  before anything logs, and both after-hooks run once the job row is written.
* ``SystemPause`` after ``Retries`` (which re-enqueues the snoozed message) and before
  ``JobState`` (no attempt is opened while paused).
* ``JobState`` before ``TimeLimit`` (it sets each job's time limit from its agent); ``Metrics``
  after it, so only attempts that really start are counted.
* dramatiq's ``TimeLimit``, ``ShutdownNotifications``, ``CurrentMessage``; our ``Heartbeat`` and
  ``BatchLane`` (the batch lane's driver thread); periodiq's middleware (accepts the
  ``periodic`` actor option, drops ticks older than 55 s).

Settings are read here, once, and passed to the constructors: a test builds a stack with the
options it needs (``build_stack(settings.replace(...))``) instead of patching the environment.
The brokers add their own (the pool sizer, RabbitMQ's worker set-up).
"""

from __future__ import annotations

from dramatiq.middleware import CurrentMessage, Middleware, ShutdownNotifications, TimeLimit
from periodiq import PeriodiqMiddleware

from roastq.failures import RetryPolicy
from roastq.llm import batch
from roastq.settings import Settings, get_settings

from .batchlane import BatchLane
from .heartbeat import Heartbeat
from .jobs import JobState
from .logs import JobLogs
from .metrics import Metrics
from .pause import SystemPause
from .process import ProcessSetup
from .retries import Retries
from .sentry import Sentry


def build_stack(settings: Settings | None = None, *, exporter: bool = True) -> list[Middleware]:
    """roastq's worker middleware, in order (see the module's docstring for why)."""
    settings = settings or get_settings()
    policy = RetryPolicy(backoff_scale=settings.backoff_scale)
    return [
        ProcessSetup(),
        Retries(policy),
        Sentry(policy),
        JobLogs(),
        SystemPause(snooze_s=settings.pause_snooze_s),
        JobState(policy, crash_limit=settings.job_crash_limit),
        Metrics(policy, exporter=exporter),
        TimeLimit(),
        ShutdownNotifications(),
        CurrentMessage(),
        Heartbeat(interval_s=settings.heartbeat_interval_s),
        BatchLane(enabled=batch.enabled(settings), tick_s=settings.llm_batch_tick_s),
        PeriodiqMiddleware(skip_delay=55),
    ]
