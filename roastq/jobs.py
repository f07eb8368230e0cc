"""The one owner of the ``jobs`` table's state: its statuses and every change of state.

Every module that moves a job (the enqueue API, the job middleware, the pipeline's save, the
reaper and the reconciler, the pause) calls a function here; each is one named query of
``sql/jobs.sql``, run on the caller's cursor so that it joins the caller's transaction. No other
module writes ``jobs`` or ``job_attempts``, or spells a status.

    PENDING --start--> RUNNING --complete--> COMPLETED
       ^                  |----fail--------> FAILED      (fail_worker_lost: its workers kept dying)
       |                  |----cancel------> CANCELLED
       +--wait / snooze---+                   (request_cancel: PENDING ones at once)
       +--lose (its worker died; the message runs again)
"""

from __future__ import annotations

import enum
import uuid

from roastq import db
from roastq.failures import Decision
from roastq.sql import load_queries

J = load_queries("jobs.sql")


class JobStatus(str, enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"

    def __str__(self) -> str:
        return self.value

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})
LIVE = frozenset({JobStatus.PENDING, JobStatus.RUNNING})


def is_finished(status: str | None) -> bool:
    return status is not None and JobStatus(status).finished


# -- creation ----------------------------------------------------------------------------------


def insert(
    cur,
    *,
    job_id,
    evaluation_id,
    document_version_id,
    agent_version_id,
    queue,
    message_id,
    original_job_id=None,
    deadline=None,
    not_before=None,
) -> None:
    """A new PENDING job (its message is sent in the same transaction). ``deadline``: by when it
    must be done (the batch lane routes by it); ``not_before``: it does not start earlier."""
    cur.execute(
        J.insert,
        {
            "id": job_id,
            "evaluation_id": evaluation_id,
            "document_version_id": document_version_id,
            "agent_version_id": agent_version_id,
            "queue": queue,
            "message_id": message_id,
            "original_job_id": original_job_id,
            "deadline": deadline,
            "not_before": not_before,
        },
    )


def insert_piece(*, job_id, candidates, not_before=None) -> tuple[str, dict]:
    """The job row's part of a one-statement enqueue (``roastq.api``): the CTE ``job`` of
    ``sql/jobs.sql``'s ``insert_piece`` and its parameters. It inserts a new PENDING job from the
    one row of the statement's CTE ``source``; ``candidates`` are ``(queue, message_id, deadline)``
    for each queue the job may go to (the source's queue picks one). ``not_before``: it does not
    start earlier (also its first ``next_attempt_at``)."""
    queues, message_ids, deadlines = (list(c) for c in zip(*candidates, strict=True))
    return J.insert_piece, {
        "job_id": str(job_id),
        "job_queues": queues,
        "job_message_ids": message_ids,
        "job_deadlines": deadlines,
        "job_not_before": not_before,
    }


def insert_many(
    cur,
    *,
    job_ids,
    evaluation_ids,
    document_version_ids,
    agent_version_ids,
    queues,
    message_ids,
    deadlines=None,
    not_before=None,
) -> None:
    cur.execute(
        J.insert_many,
        {
            "ids": job_ids,
            "evaluation_ids": evaluation_ids,
            "document_version_ids": document_version_ids,
            "agent_version_ids": agent_version_ids,
            "queues": queues,
            "message_ids": message_ids,
            "deadlines": deadlines or [None] * len(job_ids),
            "not_before": not_before,
        },
    )


def set_message(cur, job_id, message_id) -> None:
    """The job's live message is a new one (the reconciler sent it again)."""
    cur.execute(J.set_message, {"job_id": job_id, "message_id": message_id})


# -- an attempt ----------------------------------------------------------------------------------


def start(
    cur, job_id, *, message_id, worker_id, stale_after_s: float, running_here: bool, durable: bool = True
) -> dict | None:
    """PENDING -> RUNNING, with a new attempt row; a RUNNING job only when its attempt is over
    (its worker is gone, or it is this worker and the job no longer runs here: ``running_here``
    False), never beside a live attempt. Returns the row (attempts, evaluation_id, agent_id,
    time_limit_s, retry_on_timeout, crashes), or None when the job cannot start (finished,
    cancelled, unknown, or running on a live worker: see ``attempt_alive``). With ``cur`` None
    it is one statement in one round trip of its own (``durable=False``: its commit does not wait
    for the WAL flush, see ``db.execute_one``)."""
    params = {
        "job_id": job_id,
        "message_id": message_id,
        "worker_id": worker_id,
        "stale_after_s": stale_after_s,
        "not_running_here": not running_here,
    }
    if cur is None:
        return (_starts_lazy if not durable else _starts).submit(params)
    cur.execute(J.start, params)
    return cur.fetchone()


class _GroupStart(db.Grouped):
    """The starts of deliveries that begin at the same moment on this worker, in one statement
    (``start_many``); a lone start is ``start`` itself, as before. A burst's threads that free up
    together (the second round of 1-second jobs at 500 in flight, whose messages were prefetched
    and did not start with their consume) each sent a round trip of its own: 4 to 38 ms each, in
    the crowd of the first round's results. A failed group is run again one start at a time, so
    that only the one at fault fails."""

    def __init__(self, *, durable: bool):
        super().__init__()
        self.durable = durable

    def _one(self, params: dict) -> dict | None:
        return db.execute_one(J.start, params, durable=self.durable, prepared=True)

    def _serve(self, group, leader) -> None:
        first = group[0].request
        if len(group) == 1 or any(
            (m.request["worker_id"], m.request["stale_after_s"]) != (first["worker_id"], first["stale_after_s"])
            for m in group
        ):
            self._each_alone(group, self._one)  # alone, or not one statement's worth (another worker id)
            return
        try:
            rows = db.execute_one(
                J.start_many,
                {
                    "job_ids": [m.request["job_id"] for m in group],
                    "message_ids": [m.request["message_id"] for m in group],
                    "not_running_here": [m.request["not_running_here"] for m in group],
                    "worker_id": first["worker_id"],
                    "stale_after_s": first["stale_after_s"],
                },
                durable=self.durable,
                fetch="all",
                prepared=True,
            )
        except BaseException as exc:  # undone whole: each alone now
            self._each_alone(group, self._one, leader=leader, failed=exc)
            return
        by_job = {str(row["id"]): row for row in rows}
        for m in group:
            m.result = by_job.get(str(m.request["job_id"]))


_starts = _GroupStart(durable=True)
_starts_lazy = _GroupStart(durable=False)


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


#: The start of a consumed batch's jobs, CTEs of the broker's consume statement (``start_piece``).
START_PIECE = J.start_piece


def start_piece(candidates: list[tuple[str, str]]) -> dict:
    """The parameters of ``START_PIECE`` for ``candidates``, ``(message_id, job_id)`` pairs: the
    messages of the batch whose jobs may start with their consume (PENDING jobs only, by their
    live message; the statement's row of each started one is what ``start`` returns). The
    consume's ``consumer_id`` is the worker the jobs run on."""
    return {
        "start_message_ids": [m for m, _ in candidates],
        "start_job_ids": [j for _, j in candidates],
    }


#: Jobs this process started with their message's consume (the broker's consumer adds them, the
#: message carrying the start as ``roastq_started``) whose delivery has not yet begun (the job
#: middleware takes them out): the job runs here, as far as a delivery of another message of it is
#: concerned.
started_with_consume: set[str] = set()


def unstart(cur, messages, *, worker_id: str) -> None:
    """Undo the starts made with the consume of ``messages`` whose attempts never began (requeued,
    never handed out, stopped before JobState): their jobs are PENDING again as before the consume,
    this worker's attempt gone (a job started again since, or by another worker, is left alone).
    Messages without such a start are passed over. With ``cur`` None, one round trip of its own."""
    started = []
    for message in messages:
        start = getattr(message, "roastq_started", None)
        if start is not None:
            del message.roastq_started
            started.append(start)
    if not started:
        return
    params = {
        "job_ids": [s["job_id"] for s in started],
        "attempts": [s["attempts"] for s in started],
        "worker_id": worker_id,
    }
    try:
        if cur is None:
            db.execute_one(J.unstart, params, fetch=None)
        else:
            cur.execute(J.unstart, params)
    finally:
        for s in started:
            started_with_consume.discard(s["job_id"])


def attempt_alive(cur, job_id, *, stale_after_s: float) -> bool:
    """The job is RUNNING on a worker that is alive (``roastq_worker_alive``)."""
    cur.execute(J.attempt_alive, {"job_id": job_id, "stale_after_s": stale_after_s})
    row = cur.fetchone()
    return bool(row and row["alive"])


def end_attempt(
    cur,
    job_id,
    attempt: int,
    outcome: str,
    *,
    decision: Decision | None = None,
    error_class: str | None = None,
    error: str | None = None,
) -> None:
    """Close the attempt with its outcome (``Action.outcome``, "completed" or "crashed")."""
    waits = decision is not None and decision.waits
    _write(
        cur,
        J.end_attempt,
        {
            "job_id": job_id,
            "attempt": attempt,
            "outcome": outcome,
            "error_class": str(decision.error_class) if decision else error_class,
            "error": decision.error if decision else error,
            "delay_s": decision.delay_s if waits else None,
            "delay_reason": decision.delay_reason if waits else None,
        },
    )


def close_crashed_attempts(cur, job_id) -> None:
    """Attempts left open by a worker that died are closed as crashed."""
    cur.execute(J.close_crashed_attempts, {"job_id": job_id})


def wait(cur, job_id, decision: Decision) -> None:
    """RUNNING -> PENDING until ``decision.delay_s`` from now: a retry or a snooze (whose
    ``error_class`` SNOOZED says why the job waits)."""
    _write(
        cur,
        J.wait,
        {
            "job_id": job_id,
            "delay_s": decision.delay_s,
            "error_class": str(decision.error_class),
            "error": decision.error,
        },
    )


def hold(cur, job_id, *, delay_s: float, error: str) -> None:
    """A PENDING job held (the system is paused) until ``delay_s`` from now: SNOOZED."""
    cur.execute(J.hold, {"job_id": job_id, "delay_s": delay_s, "error": error})


def fail(cur, job_id, error_class, error: str) -> None:
    """PENDING or RUNNING -> FAILED, for good."""
    _write(cur, J.fail, {"job_id": job_id, "error_class": str(error_class), "error": error})


def fail_worker_lost(cur, job_id, error: str) -> None:
    """RUNNING -> FAILED as WORKER_LOST: its workers died under it too often (a poison message)."""
    cur.execute(J.fail_worker_lost, {"job_id": job_id, "error": error})


def lose(cur, job_id, error: str) -> None:
    """RUNNING -> PENDING: its worker died; its message runs again (WORKER_LOST says why)."""
    cur.execute(J.lose, {"job_id": job_id, "error": error})


def cancel(cur, job_id, reason: str) -> bool:
    """PENDING or RUNNING -> CANCELLED. False if the job had already finished."""
    cur.execute(J.cancel, {"job_id": job_id, "reason": reason})
    return cur.fetchone() is not None


def request_cancel(cur, job_id, reason: str) -> str | None:
    """Cancel: a PENDING job at once, a RUNNING one is flagged and stops at its next step.
    Returns the status after the request, or None if the job is unknown or finished."""
    cur.execute(J.request_cancel, {"job_id": job_id, "reason": reason})
    row = cur.fetchone()
    return row["status"] if row is not None else None


def cancel_requested(cur, job_id) -> bool:
    cur.execute(J.cancel_requested, {"job_id": job_id})
    row = cur.fetchone()
    return bool(row and row["cancelled"])


# -- the result ------------------------------------------------------------------------------------


def lock(cur, job_id, *, answer: bool = True) -> dict | None:
    """The job row, locked until the transaction ends (the result is saved under this lock).
    ``answer=False`` on a ``db.lean_transaction()``: the lock goes out with the next statement,
    which reads what it needs of the row (no round trip of its own); returns None."""
    if isinstance(cur, db.LeanCursor):  # a pooled session: prepared once, as the writes below
        if not answer:
            cur.defer(J.lock, {"job_id": job_id}, prepared=True)
            return None
        cur.execute(J.lock, {"job_id": job_id}, prepared=True)
    else:
        cur.execute(J.lock, {"job_id": job_id})
    return cur.fetchone()


def _write(cur, sql: str, params: dict) -> None:
    """A write whose answer nobody reads: sent with the COMMIT on a ``db.lean_transaction()``, as
    that pooled session's prepared statement."""
    if isinstance(cur, db.LeanCursor | db.DeferredWrites):
        cur.defer(sql, params, prepared=True)
    else:
        cur.execute(sql, params)


#: SQLSTATE of a result for a job that is already finished (``complete``, migration 0018).
ALREADY_FINISHED = "RQ001"


def already_finished(exc: BaseException) -> bool:
    """``exc`` is the error of a result's transaction whose job was already finished."""
    return getattr(exc, "pgcode", None) == ALREADY_FINISHED


def complete(cur, job_id, *, evaluation_version_id, price_usd) -> None:
    """-> COMPLETED, with its evaluation version and price (in the result's transaction). A job
    already finished (a duplicate delivery's result came first) fails the transaction with
    ``ALREADY_FINISHED`` (``already_finished(exc)``): no lock and read of the job row first."""
    _write(cur, J.complete, {"job_id": job_id, "evaluation_version_id": evaluation_version_id, "price_usd": price_usd})


def finish_attempt(cur, job_id, attempt: int, message_id) -> None:
    """With the result: the attempt ends as completed and the broker message is marked done."""
    _write(cur, J.finish_attempt, {"job_id": job_id, "attempt": attempt, "message_id": message_id})


def append_logs(cur, job_ids: list, lines: list, *, durable: bool = True) -> None:
    """Log lines of finished attempts, many jobs in one statement (a ``job_logs`` row and jsonb
    array a job, insert-only); with
    ``cur`` None, one round trip of its own (``durable=False``: lines a crash may lose are in the
    process's log anyway)."""
    params = {"job_ids": job_ids, "lines": lines}
    if cur is None:
        db.execute_one(J.append_logs, params, durable=durable, fetch=None, prepared=True)
        return
    cur.execute(J.append_logs, params)
