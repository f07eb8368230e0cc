"""Housekeeping: what the scheduler runs every tick (and ``roastq maintenance run`` by hand).

Every task looks at the state of the database, not at what happened since its last run, so a
skipped or lost tick is caught up by the next one, and running a task twice changes nothing more.

* ``reap_stale_jobs``: RUNNING jobs whose worker stopped beating. The broker's own rescans rerun
  an orphaned message, but only while some worker consumes its queue, and nothing reruns a job
  whose message is gone: the reaper makes the row true (PENDING, attempt closed as crashed) and
  makes sure a message will run it (requeued, or a new one), or fails the job once its workers
  died ``JOB_CRASH_LIMIT`` times under it (a job that kills its worker must not kill them all).
* ``recover_orphans``: messages left 'consumed' by a dead worker go back to 'queued' with a
  NOTIFY, so `status` counts them as waiting and an idle worker takes them at once.
* ``reconcile_jobs``: a PENDING job with no live message gets one (after ``RECONCILE_GRACE_S``);
  a live message whose job has finished is retired.
* ``enforce_retention``: finished broker messages older than ``RETENTION_DAYS`` (dead letters:
  ``DEAD_LETTER_RETENTION_DAYS``) are deleted in small batches; ``jobs`` rows are kept.
* ``roll_up_costs``: ``cost_daily`` recomputed for today and yesterday (UTC) from ``tasks``.
* ``drive_batch_lane``: the batch lane's submit, poll, collect, fallback and wake-up
  (``roastq.llm.batch_driver``), also driven by every worker every ``LLM_BATCH_TICK_S``.

A worker that holds a message (its advisory lock) is alive, whatever its heartbeat says: nothing
here touches such a message or its job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from roastq import db, events, jobs
from roastq.brokers import send_job
from roastq.jobctx import worker_stale_after_s
from roastq.queues import JOB_ACTORS, JOB_QUEUES
from roastq.settings import get_settings
from roastq.sql import load_queries

logger = logging.getLogger("roastq.ops.maintenance")

OPS = load_queries("ops.sql", __package__)

DAY_S = 86400.0


def stale_after_s() -> float:
    """A worker is gone after three missed heartbeats (``jobctx.worker_stale_after_s``)."""
    return worker_stale_after_s()


# -- sending -------------------------------------------------------------------------------------


def resend(cur, job_id, queue: str, *, delay_s: float = 0.0) -> str:
    """Give a job a new message (on the caller's transaction); return its message id."""
    if queue not in JOB_ACTORS:
        raise ValueError(f"job {job_id} has queue {queue!r}, which no actor serves")
    delay_ms = int(delay_s * 1000)
    message = send_job(cur, queue, job_id, delay_ms=delay_ms or None)
    jobs.set_message(cur, job_id, message.message_id)
    return message.message_id


# -- the tasks ---------------------------------------------------------------------------------


def reap_stale_jobs(limit: int = 500) -> dict:
    stale = stale_after_s()
    crash_limit = get_settings().job_crash_limit
    with db.transaction() as cur:
        cur.execute(OPS.stale_running_jobs, {"stale_after_s": stale, "limit": limit})
        jobs = [(r["id"], r["queue"]) for r in cur.fetchall()]
    counts = {"requeued": 0, "resent": 0, "failed": 0, "alive": 0}
    for job_id, queue in jobs:
        with db.transaction() as cur:  # one job a transaction: a bad one does not hold up the rest
            outcome = _reap_one(cur, job_id, stale, crash_limit)
        if outcome:
            counts[outcome] += 1
        if outcome == "failed":  # committed: now tell the listeners (no middleware sees this failure)
            _job_failed(job_id, queue, "WORKER_LOST")
    return counts


def _job_failed(job_id, queue: str, error_class: str) -> None:
    """A job failed for good outside any message: the metrics of a worker process (where the
    scheduler's tasks run) count it with the failures of messages (``roastq_messages_failed_total``)."""
    events.emit("job_failed", job_id=str(job_id), queue=queue, actor=JOB_ACTORS.get(queue, ""), error_class=error_class)


def _reap_one(cur, job_id, stale: float, crash_limit: int) -> str | None:
    cur.execute(OPS.lock_stale_job, {"job_id": job_id, "stale_after_s": stale})
    job = cur.fetchone()
    if job is None:
        return None  # it moved on meanwhile (finished, or a live worker took it)
    live = job["message_state"] in ("queued", "consumed")
    if job["message_state"] is not None:
        cur.execute(OPS.try_message_lock, {"queue_name": job["message_queue"], "message_id": job["message_id"]})
        if not cur.fetchone()["free"]:
            # Its worker still holds the message: alive, only its heartbeat is late.
            logger.warning(
                "job %s: worker %s has not beaten for %.0f s but still holds the message",
                job_id,
                job["worker_id"],
                stale,
            )
            return "alive"
    jobs.close_crashed_attempts(cur, job_id)
    crashes = job["crashes"] + cur.rowcount
    who = job["worker_id"] or "an unknown worker"
    if crashes >= crash_limit:
        error = f"its worker died {crashes} times while running it (last: {who})"
        jobs.fail_worker_lost(cur, job_id, error)
        if live:
            cur.execute(OPS.reject_message, {"message_id": job["message_id"]})
        logger.error("job %s failed: %s", job_id, error)
        return "failed"
    error = f"worker {who} stopped beating while running it: it runs again"
    jobs.lose(cur, job_id, error)
    if live:
        cur.execute(OPS.requeue_messages, {"message_ids": [job["message_id"]]})
        logger.warning("job %s: %s (message requeued)", job_id, error)
        return "requeued"
    if get_settings().rabbitmq:
        # RabbitMQ delivers the message again once the dead worker's connection closes (it was
        # never acknowledged); a message lost anyway is resent by reconcile_jobs.
        logger.warning("job %s: %s (RabbitMQ redelivers its message)", job_id, error)
        return "requeued"
    resend(cur, job_id, job["queue"])
    logger.warning("job %s: %s (its message was gone: sent a new one)", job_id, error)
    return "resent"


def recover_orphans(limit: int = 1000) -> dict:
    with db.transaction() as cur:
        cur.execute(OPS.recover_orphans, {"stale_after_s": stale_after_s(), "limit": limit})
        return {"requeued": cur.fetchone()["requeued"]}


def _pending_jobs_without_message(grace: float, limit: int) -> list:
    if not get_settings().rabbitmq:
        with db.transaction() as cur:
            cur.execute(OPS.pending_jobs_without_message, {"grace_s": grace, "limit": limit})
            return [r["id"] for r in cur.fetchall()]
    # RabbitMQ cannot be asked about one message: a job counts as without one when its time came
    # more than the grace ago, its outbox row was relayed, and its queue holds nothing waiting.
    from roastq.brokers.rabbitmq import BQ, rabbitmq_counts

    counts = rabbitmq_counts(list(JOB_QUEUES))
    idle = [q for q, c in counts.items() if not c["queued"] and not c["delayed"]]
    with db.transaction() as cur:
        cur.execute(BQ.stalled_pending_jobs, {"grace_s": grace, "limit": limit, "queues": idle})
        return [r["id"] for r in cur.fetchall()]


def reconcile_jobs(limit: int = 1000) -> dict:
    grace = get_settings().reconcile_grace_s
    job_ids = _pending_jobs_without_message(grace, limit)
    resent = 0
    for job_id in job_ids:
        with db.transaction() as cur:
            cur.execute(OPS.lock_pending_job, {"job_id": job_id})
            job = cur.fetchone()
            if job is None:
                continue  # it got a message, started or was cancelled meanwhile
            resend(cur, job_id, job["queue"], delay_s=float(job["wait_s"] or 0))
            resent += 1
            logger.warning("job %s was PENDING with no live message: sent a new one", job_id)
    with db.transaction() as cur:
        cur.execute(OPS.retire_messages_of_finished_jobs, {"job_actors": sorted(JOB_ACTORS.values()), "limit": limit})
        retired = cur.rowcount
    return {"resent": resent, "retired": retired}


def purge_messages(
    states: tuple[str, ...],
    *,
    older_than_s: float,
    queue: str | None = None,
    batch: int = 5000,
    progress: Callable[[int, int], None] | None = None,
) -> int:
    """Delete finished broker messages (``done``, ``rejected``) in batches; return how many."""
    if not set(states) <= {"done", "rejected"}:
        raise ValueError(f"only finished messages can be purged, not {states}")
    params = {"states": list(states), "older_than_s": older_than_s, "queue": queue, "batch": batch}
    total = None
    if progress is not None:
        with db.transaction() as cur:
            cur.execute(OPS.count_finished_messages, params)
            total = cur.fetchone()["n"]
    deleted = 0
    while True:
        with db.transaction() as cur:
            cur.execute(OPS.delete_finished_messages, params)
            n = cur.rowcount
        deleted += n
        if progress is not None:
            progress(deleted, max(total, deleted))
        if n < batch:
            return deleted


def enforce_retention(batch: int = 5000) -> dict:
    s = get_settings()
    done = purge_messages(("done",), older_than_s=s.retention_days * DAY_S, batch=batch)
    dead = purge_messages(("rejected",), older_than_s=s.dead_letter_retention_days * DAY_S, batch=batch)
    from roastq.brokers.outbox import purge_sent

    relayed = purge_sent(s.retention_days * DAY_S, batch=batch)  # RabbitMQ's outbox (roastq/brokers/outbox.py)
    from roastq.brokers.results import clear_expired

    expired_results = clear_expired(batch)  # store_results=True actors (roastq/brokers/results.py)
    with db.transaction() as cur:
        cur.execute(OPS.delete_old_ticks, {"days": 30})
        ticks = cur.rowcount
        cur.execute(OPS.delete_dead_heartbeats, {"days": 1})
        heartbeats = cur.rowcount
    return {
        "done_messages": done,
        "dead_letters": dead,
        "relayed_outbox_rows": relayed,
        "ticks": ticks,
        "dead_heartbeats": heartbeats,
        "expired_results": expired_results,
    }


def roll_up_costs(days: int = 2) -> dict:
    with db.transaction() as cur:
        cur.execute(OPS.lock_cost_rollup)  # a run by hand and the scheduler's must not interleave
        cur.execute(OPS.delete_cost_days, {"days": days})
        cur.execute(OPS.roll_up_costs, {"days": days})
        return {"days": days, "rows": cur.rowcount}


def drive_batch_lane() -> dict:
    """The batch lane's backstop: workers drive it every few seconds (middleware/batchlane.py)."""
    from roastq.llm import batch_driver

    return batch_driver.drive()


@dataclass(frozen=True)
class Task:
    fn: Callable[[], dict]
    cron: str  # periodiq's cron syntax (UTC minutes)
    what: str


#: The periodic tasks: actors/periodic.py declares one periodic actor each.
TASKS: dict[str, Task] = {
    "reap_stale_jobs": Task(reap_stale_jobs, "* * * * *", "RUNNING jobs whose worker is gone: rerun or fail"),
    "recover_orphans": Task(recover_orphans, "* * * * *", "messages a dead worker left consumed: requeue"),
    "reconcile_jobs": Task(reconcile_jobs, "*/5 * * * *", "jobs without messages, messages of finished jobs"),
    "enforce_retention": Task(enforce_retention, "17 * * * *", "delete old finished broker messages"),
    "roll_up_costs": Task(roll_up_costs, "5 * * * *", "cost_daily for today and yesterday"),
    "drive_batch_lane": Task(drive_batch_lane, "* * * * *", "batch lane: submit, poll, collect, fall back, wake"),
}
