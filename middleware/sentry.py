"""Sentry events for jobs: exactly one event per job that fails for good, none per retried attempt.

sentry-sdk's Dramatiq integration reports every failed attempt (four events for a job retried
three times). This middleware reports once, when ``decision_for`` says the failure is final
(``Action.FAIL``), or when a message is rejected as not being a job. Earlier attempts of the
job become breadcrumbs (from ``job_attempts``, so attempts in other processes count too), as do
the attempt's own log lines (sentry-sdk's logging integration, configured in
``observability.sentry``). Cancellations are not failures and send nothing.

Each event: grouped by actor and error class (``fingerprint``); tags ``actor``, ``queue``,
``error_class``, ``agent_id``, ``attempt``; the job in the ``job`` context; level ``fatal`` for
classes whose policy says so (``AUTH``, ``SPEND_LIMIT``), else ``error``. Events are flushed when
the worker stops (a dramatiq worker process exits without running atexit hooks).

Place it before ``JobState`` in the middleware list: its before hook opens the attempt's own
Sentry scope before anything logs, and its after hook runs once the job row is written.
"""

from __future__ import annotations

import logging
from datetime import UTC

import sentry_sdk
from dramatiq.common import q_name
from dramatiq.middleware import Middleware

from observability.sentry import flush
from roastq import db
from roastq.db import Q
from roastq.failures import Action, ErrorClass, RetryPolicy

from .jobs import job_id_of
from .retries import decision_for

logger = logging.getLogger("roastq.sentry")


class Sentry(Middleware):
    """Report final job failures to Sentry (a no-op while ``SENTRY_DSN`` is unset).

    Parameters:
      policy(RetryPolicy): the decision after a failed attempt (shared with ``Retries``).
      flush_timeout_s(float): how long a stopping worker waits for unsent events (default 10).
    """

    def __init__(self, policy: RetryPolicy, *, flush_timeout_s: float = 10.0):
        self.policy = policy
        self.flush_timeout_s = flush_timeout_s

    def before_process_message(self, broker, message):
        # Breadcrumbs of this attempt only: worker threads are reused for many messages.
        scope = sentry_sdk.isolation_scope()
        scope.__enter__()
        message._roastq_sentry_scope = scope

    def _close_scope(self, message):
        scope = getattr(message, "_roastq_sentry_scope", None)
        if scope is not None:
            del message._roastq_sentry_scope
            scope.__exit__(None, None, None)

    def after_process_message(self, broker, message, *, result=None, exception=None):
        try:
            if exception is not None and sentry_sdk.get_client().is_active():
                decision = decision_for(message, exception, self.policy)
                if decision.action is Action.FAIL:
                    self._report(message, exception, decision)
        except Exception:  # reporting must never change what happens to the job
            logger.exception("could not report the failure to Sentry")
        finally:
            self._close_scope(message)

    def after_skip_message(self, broker, message):
        try:
            if message.failed and sentry_sdk.get_client().is_active():
                with sentry_sdk.new_scope() as scope:
                    _tag(scope, message, ErrorClass.INPUT, attempt=None, agent_id=None)
                    scope.set_context("job", {"message_id": message.message_id})
                    scope.fingerprint = ["roastq", message.actor_name, str(ErrorClass.INPUT)]
                    sentry_sdk.capture_message(
                        f"{message.actor_name}: message rejected, its payload is not a known job", level="error"
                    )
        finally:
            self._close_scope(message)

    def after_worker_shutdown(self, broker, worker):
        flush(self.flush_timeout_s)

    def _report(self, message, exception, decision):
        job = getattr(message, "roastq_job", None)
        job_id = job.job_id if job is not None else job_id_of(message)
        attempt = job.attempt if job is not None else None
        with sentry_sdk.new_scope() as scope:
            _tag(scope, message, decision.error_class, attempt=attempt, agent_id=job.agent_id if job else None)
            scope.set_context(
                "job",
                {
                    "job_id": job_id,
                    "evaluation_id": job.evaluation_id if job else None,
                    "message_id": message.message_id,
                    "attempt": attempt,
                    "error": decision.error,
                },
            )
            scope.fingerprint = ["roastq", message.actor_name, str(decision.error_class)]
            scope.set_level(decision.level)
            if job_id is not None and attempt is not None:
                for crumb in _earlier_attempts(job_id, attempt):
                    scope.add_breadcrumb(crumb)
            sentry_sdk.capture_exception(exception)


def _tag(scope, message, error_class, *, attempt, agent_id):
    queue = q_name(message.queue_name)
    scope.set_tag("actor", message.actor_name)
    scope.set_tag("queue", queue)
    scope.set_tag("error_class", str(error_class))
    if agent_id is not None:
        scope.set_tag("agent_id", agent_id)
    if attempt is not None:
        scope.set_tag("attempt", str(attempt))
    scope.set_transaction_name(message.actor_name)


def _earlier_attempts(job_id: str, attempt: int) -> list[dict]:
    """One breadcrumb per earlier attempt of the job, from ``job_attempts``."""
    try:
        with db.transaction() as cur:
            cur.execute(Q.job_attempts, {"job_id": job_id})
            rows = [r for r in cur.fetchall() if r["attempt"] < attempt]
    except Exception as exc:  # the database may be why the job failed
        logger.warning("no attempt breadcrumbs: %s", exc)
        return []
    crumbs = []
    for r in rows:
        when = r["ended_at"] or r["started_at"]
        text = f"attempt {r['attempt']}: {r['outcome'] or 'unknown'}"
        if r["error_class"]:
            text += f" ({r['error_class']}): {r['error']}"
        if r["delay_s"] is not None:
            text += f"; retried after {float(r['delay_s']):.1f} s ({r['delay_reason']})"
        crumbs.append(
            {
                "type": "default",
                "category": "job.attempt",
                "level": "warning",
                "message": text,
                "timestamp": when.astimezone(UTC) if when else None,
                "data": {
                    "attempt": r["attempt"],
                    "outcome": r["outcome"],
                    "error_class": r["error_class"],
                    "delay_s": float(r["delay_s"]) if r["delay_s"] is not None else None,
                    "delay_reason": r["delay_reason"],
                },
            }
        )
    return crumbs
