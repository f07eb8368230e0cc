"""Keep the ``jobs`` table true, whatever happens to the message.

For actors declared with ``roastq_job=True`` (their one argument is a job id):

* before: reject a message whose payload is not a known job id (one log line; a dead letter);
  skip a job that is already finished or cancelled; back off (snooze) from a job whose attempt
  runs on a live worker, never starting a second attempt beside it; otherwise mark it RUNNING
  (``attempts`` + 1, ``started_at``), open a ``job_attempts`` row, set the job's time limit from
  its agent and publish the job's context to the pipeline;
* after: record the attempt's outcome: PENDING with ``next_attempt_at`` while a retry waits,
  FAILED with its error class, or CANCELLED. COMPLETED is written by the actor itself, in the
  same transaction as the result.

Place it before ``TimeLimit`` (it sets the time limit) and after ``Retries`` (so that its after
hook runs first and the job row says what happens before the retry is enqueued).
"""

from __future__ import annotations

import random
import threading
import time

import psycopg2
from dramatiq.middleware import Middleware, MiddlewareError, SkipMessage

from observability.logging import HotLogger
from roastq import db, jobs
from roastq.exceptions import Snooze
from roastq.failures import Action, ErrorClass, RetryPolicy
from roastq.jobctx import JobContext, current_job, start_error, worker_id, worker_stale_after_s
from roastq.jobs import JobStatus, job_id_of, started_with_consume

from .retries import decision_for

#: Two lines every job: built as JSON directly in a worker, stdlib records elsewhere (HotLogger).
logger = HotLogger("roastq.jobs")


def _with_retries(write, tries: int = 5) -> None:
    """Write an attempt's outcome, again after a lost connection (a terminated session, a
    restart): left unwritten, the job would read RUNNING on a live worker, and its next delivery
    would back off from an attempt that has ended."""
    for n in range(tries):
        try:
            return write()
        except (psycopg2.OperationalError, psycopg2.InterfaceError) as exc:
            if n == tries - 1:
                raise
            logger.warning("could not record the attempt's outcome (%s): again in %.1f s", exc, 0.2 * 2**n)
            time.sleep(0.2 * 2**n)


class AttemptAlive(Snooze, MiddlewareError):
    """This delivery found an attempt of its job running on a live worker: it waits (a Snooze,
    re-enqueued by Retries). A ``MiddlewareError``, so that dramatiq lets it stop the message."""


class _Deliveries:
    """The deliveries of one job under way in this process: how many, whether one of them runs
    the job, and the lock under which they start one at a time."""

    __slots__ = ("count", "running", "starting")

    def __init__(self):
        self.count = 0
        self.running = False
        self.starting = threading.Lock()


class JobState(Middleware):
    """Maintain ``jobs`` and ``job_attempts`` for job actors (through ``roastq.jobs``).

    Parameters:
      policy(RetryPolicy): the decision after a failed attempt (shared with ``Retries``).
      crash_limit(int): a job whose worker died under it this many times fails as WORKER_LOST
        at its next delivery (``JOB_CRASH_LIMIT``).

    Actor options:
      roastq_job(bool): the actor runs a job; its only argument is the job id.
    """

    def __init__(self, policy: RetryPolicy, *, crash_limit: int = 3):
        self.policy = policy
        self.crash_limit = crash_limit
        #: deliveries under way in this process, by job (``_Deliveries``): a delivery of a job
        #: that runs here must back off, and one of a job this worker's row names but that no
        #: longer runs here may take over (its attempt ended, though writing the job row failed).
        #: The deliveries of one job start one at a time, so that each sees whether another has
        #: just started it: two at once had both started it (tests/test_run_once.py).
        self._here: dict[str, _Deliveries] = {}
        self._here_lock = threading.Lock()

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
            self._reject(
                message, f"payload is not a job id: args={list(message.args)!r:.200} kwargs={sorted(message.kwargs)!r}"
            )
        with self._here_lock:
            here = self._here.get(job_id)
            if here is None:
                here = self._here[job_id] = _Deliveries()
            here.count += 1
        message.roastq_here = job_id  # uncounted at the delivery's end, whatever it is
        try:
            with here.starting:
                started = self._start(message, job_id, here)
                if started is not None:
                    here.running = message.roastq_runs = True
        except (SkipMessage, AttemptAlive):
            raise
        except Exception as exc:  # the database is down, say: the actor raises it, and it is retried
            start_error.set(exc)
            return
        if started is None:
            raise SkipMessage()
        row, ctx = started
        if row["crashes"] >= self.crash_limit:
            self._lost(message, ctx, row["crashes"])
        message.roastq_job = ctx
        message.options["time_limit"] = int(row["time_limit_s"] * 1000)
        current_job.set(ctx)
        logger.info("job started: attempt %d, time limit %d s", ctx.attempt, row["time_limit_s"])

    def _start(self, message, job_id, here: _Deliveries):
        """Under ``here.starting``: no other delivery of the job starts meanwhile in this process."""
        row = self._started_with_consume(message, job_id, here)
        if row is None:
            row = self._start_now(message, job_id, here)
            if row is None:
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

    @staticmethod
    def _started_with_consume(message, job_id, here: _Deliveries) -> dict | None:
        """The row of the start made with the message's consume (``jobs.start_piece``), or None.
        Such a start is undone when a delivery of the job runs here (it cannot have been
        PENDING then, unless written so by hand): this delivery then starts as any other."""
        started = getattr(message, "roastq_started", None)
        if started is None:
            return None
        if here.running:
            jobs.unstart(None, [message], worker_id=worker_id())
            return None
        del message.roastq_started
        started_with_consume.discard(job_id)
        return started

    def _start_now(self, message, job_id, here: _Deliveries) -> dict | None:
        """The delivery's own start; None when the job cannot start (``_refused``). A job started
        with another message's consume and not yet taken by its delivery runs here too."""
        stale = worker_stale_after_s()
        who = {"message_id": message.message_id, "worker_id": worker_id(), "stale_after_s": stale}
        running_here = here.running or job_id in started_with_consume
        # One round trip, committed without waiting for the WAL flush: if Postgres crashes before
        # a later commit flushes it, the job is PENDING again and its message is delivered again,
        # as if this attempt had not begun (docs/architecture.md, "synchronous_commit").
        row = jobs.start(None, job_id, running_here=running_here, durable=False, **who)
        if row is not None:
            return row
        with db.transaction() as cur:
            job = jobs.lock(cur, job_id)
            if job is None:
                self._reject(message, f"unknown job {job_id}")
            # The job may have changed since the start was refused: a retry's message can
            # arrive before the attempt that sent it has recorded its end. Under the row lock
            # the start is tried once more, and what it decides is final.
            row = jobs.start(cur, job_id, running_here=running_here, **who)
            if row is None:
                self._refused(cur, message, job, stale)
        return row

    def _refused(self, cur, message, job, stale) -> None:
        """The start was refused under the job row's lock (``cur``'s transaction): back off from
        a live attempt, cancel a job whose cancel was asked before it ran, or skip a finished one."""
        job_id = str(job["id"])
        if job["status"] == JobStatus.RUNNING:
            if jobs.attempt_alive(cur, job_id, stale_after_s=stale) or job["cancel_requested_at"] is None:
                self._back_off(message, job)
        if job["cancel_requested_at"] is not None and JobStatus(job["status"]) in jobs.LIVE:
            jobs.close_crashed_attempts(cur, job_id)
            jobs.cancel(cur, job_id, "cancelled before it ran")
            logger.info("job %s cancelled: skipped", job_id)
        else:
            logger.info("job %s already %s: message skipped", job_id, job["status"])

    @staticmethod
    def _back_off(message, job):
        """An attempt of this job runs on a live worker: leave it alone, and look again once that
        worker could be gone (a snooze: no attempt used). If it dies, this delivery takes over;
        if it finishes, this delivery is skipped."""
        delay_s = worker_stale_after_s() * random.uniform(1.0, 1.25)
        logger.warning(
            "job %s runs on live worker %s: this delivery backs off for %.1f s", job["id"], job["worker_id"], delay_s
        )
        message.roastq_backed_off = True  # counted by the metrics middleware
        message.options["throws"] = Snooze  # an expected exception: one INFO line, no traceback
        raise AttemptAlive(delay_s, f"an attempt runs on live worker {job['worker_id']}")

    def _lost(self, message, ctx, crashes: int):
        """Its worker died under it `crashes` times: a poison message. Fail it for good, rather
        than let the surviving workers pick it up (and die) again and again."""
        error = f"its worker died {crashes} times while running it"
        with db.transaction() as cur:
            jobs.fail_worker_lost(cur, ctx.job_id, error)
            jobs.end_attempt(
                cur, ctx.job_id, ctx.attempt, Action.FAIL.outcome, error_class=str(ErrorClass.WORKER_LOST), error=error
            )
        logger.error("job %s failed (WORKER_LOST): %s", ctx.job_id, error)
        message.roastq_error_class = str(ErrorClass.WORKER_LOST)  # what the metrics count this dead letter as
        message.fail()
        raise SkipMessage(error)

    @staticmethod
    def _reject(message, why: str):
        logger.error("message %s rejected: %s", message.message_id, why)
        message.fail()
        raise SkipMessage(why)

    def _uncount(self, message) -> None:
        job_id = getattr(message, "roastq_here", None)
        if job_id is None:
            return
        del message.roastq_here
        runs = getattr(message, "roastq_runs", False)
        with self._here_lock:
            here = self._here[job_id]
            if runs:
                del message.roastq_runs
                here.running = False
            here.count -= 1
            if here.count <= 0:
                del self._here[job_id]

    def after_process_message(self, broker, message, *, result=None, exception=None):
        try:
            self._unclaimed(message)
            self._after(message, exception)
        finally:
            self._uncount(message)

    @staticmethod
    def _unclaimed(message) -> None:
        """A start made with the consume that no delivery took (a middleware before this one
        stopped the message: an age limit, say) is undone, and the job is PENDING again."""
        try:
            jobs.unstart(None, [message], worker_id=worker_id())
        except Exception as exc:  # its next delivery here takes the job over (counted as crashed)
            logger.warning("could not undo the start of a job whose delivery stopped before it began: %s", exc)

    def _after(self, message, exception):
        if message.options.get("throws") is Snooze and isinstance(exception, AttemptAlive):
            del message.options["throws"]  # not to be serialised with the re-enqueued message
        ctx = getattr(message, "roastq_job", None)
        if ctx is None:
            return
        try:
            if exception is None:
                if ctx.finished_with_result:
                    message.roastq_acked = True  # the result's transaction acknowledged the message
                else:  # a duplicate delivery whose result was discarded
                    with db.grouped_transaction() as cur:
                        jobs.end_attempt(cur, ctx.job_id, ctx.attempt, "completed")
                logger.info("job completed")
                return
            decision = decision_for(message, exception, self.policy)
            _with_retries(lambda: self._record_outcome(ctx, decision))
            if decision.action is Action.RETRY:
                logger.warning(
                    "job attempt failed (%s): retry in %.1f s (%s)",
                    decision.error_class,
                    decision.delay_s,
                    decision.delay_reason,
                )
            elif decision.action is Action.SNOOZE:
                logger.info("job snoozed: runs again in %.1f s (%s)", decision.delay_s, decision.delay_reason)
            elif decision.action is Action.CANCEL:
                logger.info("job cancelled: %s", decision.error)
            else:
                logger.error("job failed (%s): %s", decision.error_class, decision.error)
        finally:
            current_job.set(None)

    @staticmethod
    def _record_outcome(ctx, decision) -> None:
        """In a group commit (``db.grouped_transaction``) with other threads' outcomes and
        results, but a cancel, which reads whether the job was still live."""
        with db.transaction() if decision.action is Action.CANCEL else db.grouped_transaction() as cur:
            if decision.waits:
                jobs.wait(cur, ctx.job_id, decision)
            elif decision.action is Action.CANCEL:
                jobs.cancel(cur, ctx.job_id, decision.error)
            else:
                jobs.fail(cur, ctx.job_id, decision.error_class, decision.error)
            jobs.end_attempt(cur, ctx.job_id, ctx.attempt, decision.action.outcome, decision=decision)

    def after_skip_message(self, broker, message):
        current_job.set(None)
        try:
            self._unclaimed(message)
        finally:
            self._uncount(message)
