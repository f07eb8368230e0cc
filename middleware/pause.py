"""Hold job messages while the system is paused (``roastq pause``): jobs wait, nothing fails.

Before a job's attempt starts, the pause is checked; while it is on the message is snoozed
(``Snooze``: re-enqueued after ``PAUSE_SNOOZE_S`` plus up to 25% jitter, using no attempt) and the
job row stays PENDING with ``error_class`` SNOOZED and ``next_attempt_at``, so ``roastq jobs`` shows
why it waits. Attempts already running finish. Non-job actors (housekeeping) are not paused.

Place it after ``Retries`` (whose after-hook re-enqueues the snoozed message) and before
``JobState`` (so that no attempt is opened and ``attempts`` is not counted).
"""

from __future__ import annotations

import logging
import random

from dramatiq.middleware import Middleware, MiddlewareError

from roastq import db, jobs
from roastq.exceptions import Snooze
from roastq.jobctx import worker_id
from roastq.ops import pause

from .jobs import job_id_of

logger = logging.getLogger("roastq.pause")


class SystemPaused(Snooze, MiddlewareError):
    """The Snooze of a paused job. Dramatiq swallows (and logs) any exception a before-hook raises,
    except a ``MiddlewareError``: this one must stop the message, so it is both."""


class SystemPause(Middleware):
    """Snooze job messages while ``system_state`` says the system is paused.

    Applies to actors declared with ``roastq_job=True``; reads the pause at most once a second
    per process.

    Parameters:
      snooze_s(float): how long a held job waits before it looks again (``PAUSE_SNOOZE_S``),
        plus up to 25% jitter.
    """

    def __init__(self, *, snooze_s: float = 30.0):
        self.snooze_s = snooze_s

    def before_process_message(self, broker, message):
        if not broker.get_actor(message.actor_name).options.get("roastq_job", False):
            return
        try:
            paused = pause.current()
        except Exception as exc:  # the database is down: JobState meets it next and retries the job
            logger.warning("could not read the pause state: %s", exc)
            return
        if paused is None:
            return
        # Jitter: when the pause ends, the waiting jobs come back spread out, not all at once.
        delay_s = self.snooze_s * random.uniform(1.0, 1.25)
        job_id = job_id_of(message)
        if job_id is not None:
            try:
                with db.transaction() as cur:
                    # started with its consume: PENDING again, then held
                    jobs.unstart(cur, [message], worker_id=worker_id())
                    jobs.hold(
                        cur,
                        job_id,
                        delay_s=delay_s,
                        error=f"system paused: {paused.get('reason') or 'no reason given'}",
                    )
            except Exception as exc:  # the row is only informative: the message still waits
                logger.warning("could not mark job %s as paused: %s", job_id, exc)
        # An expected exception: dramatiq logs it in one INFO line instead of an ERROR traceback a
        # message. Removed again in the after-hook, before the message is serialised.
        message.options["throws"] = Snooze
        raise SystemPaused(delay_s, "system_paused")

    def after_process_message(self, broker, message, *, result=None, exception=None):
        if message.options.get("throws") is Snooze:
            del message.options["throws"]

    after_skip_message = after_process_message
