"""Keep the ``jobs`` table true, whatever happens to the message.

For actors declared with ``roastq_job=True`` (their one argument is a job id):

* before: reject a message whose payload is not a known job id (one log line; a dead letter);
  skip a job that is already finished or cancelled; otherwise mark it RUNNING (``attempts`` + 1,
  ``started_at``), open a ``job_attempts`` row, set the job's time limit from its agent and
  publish the job's context to the pipeline;
* after: record the attempt's outcome: PENDING with ``next_attempt_at`` while a retry waits,
  FAILED with its error class, or CANCELLED. COMPLETED is written by the actor itself, in the
  same transaction as the result.

Place it before ``TimeLimit`` (it sets the time limit) and after ``Retries`` (so that its after
hook runs first and the job row says what happens before the retry is enqueued).
"""

from __future__ import annotations

import logging
import time
import uuid

from dramatiq.middleware import Middleware, SkipMessage

from roastq import db
from roastq.db import Q
from roastq.settings import get_settings
from roastq.jobctx import JobContext, current_job, start_error, worker_id

from .errors import ErrorClass
from .retries import decision_for

logger = logging.getLogger("roastq.jobs")


def job_id_of(message) -> str | None:
    """The job id a message carries, or None if its payload is not (job_id,)."""
    args, kwargs = tuple(message.args), dict(message.kwargs)
    if len(args) == 1 and not kwargs:
        raw = args[0]
    elif not args and set(kwargs) == {"job_id"}:
        raw = kwargs["job_id"]
    else:
        return None
    if not isinstance(raw, str):
        return None
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        return None


class JobState(Middleware):
    """Maintain ``jobs`` and ``job_attempts`` for job actors.

    Actor options:
      roastq_job(bool): the actor runs a job; its only argument is the job id.
    """

    @property
    def actor_options(self):
        return {"roastq_job"}

    def _is_job(self, broker, message) -> bool:
        return broker.get_actor(message.actor_name).options.get("roastq_job", False)

    def before_process_message(self, broker, message):
        if not self._is_job(broker, message):
            return
        start_error.set(None)
        job_id = job_id_of(message)
        if job_id is None:
            self._reject(message, f"payload is not a job id: args={list(message.args)!r:.200} kwargs={sorted(message.kwargs)!r}")
        try:
            started = self._start(message, job_id)
        except SkipMessage:
            raise
        except Exception as exc:  # the database is down, say: the actor raises it, and it is retried
            start_error.set(exc)
            return
        if started is None:
            raise SkipMessage()
        row, ctx = started
        if row["crashes"] >= get_settings().job_crash_limit:
            self._lost(message, ctx, row["crashes"])
        message.roastq_job = ctx
        message.options["time_limit"] = int(row["time_limit_s"] * 1000)
        current_job.set(ctx)
        logger.info("job started: attempt %d, time limit %d s", ctx.attempt, row["time_limit_s"])

    def _start(self, message, job_id):
        # One round trip, committed without waiting for the WAL flush: if Postgres crashes before
        # a later commit flushes it, the job is PENDING again and its message is delivered again,
        # as if this attempt had not begun (docs/architecture.md, "synchronous_commit").
        row = db.execute_one(Q.start_job, {"job_id": job_id, "message_id": message.message_id,
                                           "worker_id": worker_id()}, durable=False)
        if row is None:
            with db.transaction() as cur:
                cur.execute(Q.job_by_id, {"job_id": job_id})
                job = cur.fetchone()
                if job is None:
                    self._reject(message, f"unknown job {job_id}")
                if job["cancel_requested_at"] is not None and job["status"] in ("PENDING", "RUNNING"):
                    cur.execute(Q.close_crashed_attempts, {"job_id": job_id})
                    cur.execute(Q.job_cancelled, {"job_id": job_id, "reason": "cancelled before it ran"})
                    logger.info("job %s cancelled: skipped", job_id)
                else:
                    logger.info("job %s already %s: message skipped", job_id, job["status"])
                return None
        ctx = JobContext(
            job_id=job_id,
            message_id=message.message_id,
            actor=message.actor_name,
            queue=message.queue_name,
            attempt=row["attempts"],
            evaluation_id=str(row["evaluation_id"]),
            agent_id=str(row["agent_id"]),
            deadline=time.monotonic() + row["time_limit_s"],
            bypass_cache=bool(message.options.get("bypass_cache")),
            retry_on_timeout=row["retry_on_timeout"],
        )
        return row, ctx

    def _lost(self, message, ctx, crashes: int):
        """Its worker died under it `crashes` times: a poison message. Fail it for good, rather
        than let the surviving workers pick it up (and die) again and again."""
        error = f"its worker died {crashes} times while running it"
        with db.transaction() as cur:
            cur.execute(Q.job_lost, {"job_id": ctx.job_id, "error": error})
            self._end_attempt(ctx, "failed", cur=cur, error_class="WORKER_LOST", error=error)
        logger.error("job %s failed (WORKER_LOST): %s", ctx.job_id, error)
        message.roastq_error_class = "WORKER_LOST"  # what the metrics count this dead letter as
        message.fail()
        raise SkipMessage(error)

    @staticmethod
    def _reject(message, why: str):
        logger.error("message %s rejected: %s", message.message_id, why)
        message.fail()
        raise SkipMessage(why)

    def after_process_message(self, broker, message, *, result=None, exception=None):
        ctx = getattr(message, "roastq_job", None)
        if ctx is None:
            return
        try:
            if exception is None:
                if ctx.finished_with_result:
                    message.roastq_acked = True  # the result's transaction acknowledged the message
                else:  # a duplicate delivery whose result was discarded
                    self._end_attempt(ctx, "completed")
                logger.info("job completed")
                return
            decision = decision_for(message, exception)
            with db.transaction() as cur:
                if decision.action == "retry":
                    cur.execute(Q.job_wait_retry, {"job_id": ctx.job_id, "delay_s": decision.delay_s,
                                                   "error_class": str(decision.error_class), "error": decision.error})
                elif decision.action == "cancel":
                    cur.execute(Q.job_cancelled, {"job_id": ctx.job_id, "reason": decision.error})
                else:
                    cur.execute(Q.job_fail, {"job_id": ctx.job_id, "error_class": str(decision.error_class),
                                             "error": decision.error})
                outcome = {"retry": "retry", "cancel": "cancelled"}.get(decision.action, "failed")
                if decision.error_class is ErrorClass.SNOOZED:
                    outcome = "snoozed"
                self._end_attempt(ctx, outcome, decision, cur=cur)
            if decision.action == "retry":
                logger.warning("job attempt failed (%s): retry in %.1f s (%s)", decision.error_class,
                               decision.delay_s, decision.delay_reason)
            elif decision.action == "cancel":
                logger.info("job cancelled: %s", decision.error)
            else:
                logger.error("job failed (%s): %s", decision.error_class, decision.error)
        finally:
            current_job.set(None)

    def _end_attempt(self, ctx, outcome, decision=None, cur=None, error_class=None, error=None):
        params = {
            "job_id": ctx.job_id, "attempt": ctx.attempt, "outcome": outcome,
            "error_class": str(decision.error_class) if decision else error_class,
            "error": decision.error if decision else error,
            "delay_s": decision.delay_s if decision and decision.action == "retry" else None,
            "delay_reason": decision.delay_reason if decision and decision.action == "retry" else None,
        }
        with db.transaction(cur.connection if cur else None) as c:
            c.execute(Q.end_attempt, params)

    def after_skip_message(self, broker, message):
        current_job.set(None)
