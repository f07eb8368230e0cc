"""The app-facing API: enqueue evaluations.

A job row and its Dramatiq message are written in one transaction. Given the caller's ``conn``,
both commit or roll back with the caller's own transaction (nothing is committed here); without
it, roastq commits them itself.

``enqueue_evaluation`` and ``rerun_job`` are one statement each (``enqueue_evaluation`` and
``rerun_job`` in ``sql/queries.sql``): the job id and the message are made here (the message by
the broker's own code, ``roastq.brokers.job_messages``), and the statement is composed of the
lookups of this module, the job row's piece of ``roastq.jobs`` and the message's piece of the
broker (``roastq.brokers.prepare_send``). On the caller's connection it is one execute in the
caller's transaction; without one it runs in autocommit, one round trip that is its own commit.

Sending configures nothing in the caller's process: no logging, Sentry or metrics set-up, no
files, no threads (``roastq.brokers.sending_broker``; the worker module ``actors`` is never
imported here). That set-up belongs to worker processes, at boot.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from roastq import db, jobs
from roastq.brokers import announce_sent, job_messages, prepare_send, send_job, send_jobs
from roastq.db import Q
from roastq.ids import new_id
from roastq.queues import BATCH, INTERACTIVE, JOB_QUEUES
from roastq.settings import get_settings

PRIORITIES = JOB_QUEUES


class EnqueueError(ValueError):
    """The evaluation cannot be enqueued (unknown document or agent, bad priority)."""


def parse_id(value, what: str) -> str:
    """`value` as a canonical UUID string, or EnqueueError naming `what`."""
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise EnqueueError(f"{what} {value!r} is not a valid id") from None


def _check_priority(priority: str) -> None:
    if priority not in PRIORITIES:
        raise EnqueueError(f"priority must be one of {PRIORITIES}, got {priority!r}")


def _when(value, what: str) -> datetime | None:
    """An absolute UTC time from a datetime (naive: UTC), a timedelta or seconds from now."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, timedelta):
        return datetime.now(UTC) + value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.now(UTC) + timedelta(seconds=value)
    raise EnqueueError(f"{what} must be a datetime, a timedelta or seconds, got {value!r}")


def _schedule(priority: str, deadline, not_before) -> tuple[datetime | None, datetime | None, int | None]:
    """(deadline, not_before, delay in ms): a batch job without a deadline gets the default one
    (LLM_BATCH_DEFAULT_DEADLINE), counted from its start time."""
    start = _when(not_before, "not_before")
    now = datetime.now(UTC)
    due = _when(deadline, "deadline")
    if due is None and priority == BATCH:
        due = max(start or now, now) + timedelta(seconds=get_settings().llm_batch_default_deadline_s)
    if due is not None and start is not None and due <= start:
        raise EnqueueError(f"the deadline ({due.isoformat()}) must come after the start time ({start.isoformat()})")
    delay_ms = int((start - now).total_seconds() * 1000) if start is not None and start > now else None
    return due, start, delay_ms


def insert_and_send(
    cur,
    *,
    evaluation_id,
    document_version_id,
    agent_version_id,
    queue,
    original_job_id=None,
    deadline=None,
    not_before=None,
) -> str:
    """A new job row and its message, on the caller's cursor; returns the job id."""
    job_id = new_id()
    due, start, delay_ms = _schedule(queue, deadline, not_before)
    message = send_job(cur, queue, job_id, delay_ms=delay_ms)
    jobs.insert(
        cur,
        job_id=job_id,
        evaluation_id=evaluation_id,
        document_version_id=document_version_id,
        agent_version_id=agent_version_id,
        queue=queue,
        message_id=message.message_id,
        original_job_id=original_job_id,
        deadline=due,
        not_before=start,
    )
    return job_id


def one_statement(template: str, params: dict, *, queues, deadlines: dict, not_before, delay_ms):
    """A one-statement enqueue's SQL, its parameters and its messages by queue (``template``: a
    query of ``sql/queries.sql`` with a CTE ``source`` and the markers ``{job}`` and ``{send}``;
    ``queues``: the queues the job may go to, the source's picks one; ``deadlines`` by queue)."""
    job_id = new_id()
    messages = job_messages(queues, job_id, delay_ms=delay_ms)
    job_sql, job_params = jobs.insert_piece(
        job_id=job_id,
        candidates=[(q, messages[q].message_id, deadlines[q]) for q in queues],
        not_before=not_before,
    )
    send_sql, send_params = prepare_send(list(messages.values()), delay_ms=delay_ms)
    sql = template.replace("{job}", job_sql).replace("{send}", send_sql)
    return sql, {**params, **job_params, **send_params}, messages


def _one_statement(template: str, params: dict, *, queues, deadlines: dict, not_before, delay_ms, conn) -> dict:
    """Run a one-statement enqueue (``one_statement``); return its one row (``job_id`` None when
    nothing was written)."""
    sql, params, messages = one_statement(
        template, params, queues=queues, deadlines=deadlines, not_before=not_before, delay_ms=delay_ms
    )
    with db.statement(conn) as cur:
        if conn is None:  # a pooled session: parsed and planned once a session
            db.execute_prepared(cur, sql, params)
        else:
            cur.execute(sql, params)
        row = cur.fetchone()
    if row["job_id"] is not None:
        announce_sent(messages[row["queue"]], delay_ms=delay_ms)
    return row


def enqueue_evaluation(
    document_id, agent_id, *, priority: str = INTERACTIVE, deadline=None, not_before=None, conn=None
) -> str:
    """Enqueue an evaluation of a document by an agent; return the job id.

    The document's and agent's latest versions are pinned on the job now: edits made after this
    call do not change what the job evaluates. ``deadline`` (a datetime, a timedelta or seconds
    from now; batch jobs default to LLM_BATCH_DEFAULT_DEADLINE): a batch job with time to spare
    sends its LLM steps through the batch lane at half the price (docs/llm.md). ``not_before``
    (the same kinds): the job does not start before then.

    One statement (see the module's docstring): an unknown document or agent writes nothing and
    raises EnqueueError.
    """
    _check_priority(priority)
    document_id = parse_id(document_id, "document id")
    agent_id = parse_id(agent_id, "agent id")
    due, start, delay_ms = _schedule(priority, deadline, not_before)
    for _ in range(3):
        row = _one_statement(
            Q.enqueue_evaluation,
            {"document_id": document_id, "agent_id": agent_id, "queue": priority},
            queues=[priority],
            deadlines={priority: due},
            not_before=start,
            delay_ms=delay_ms,
            conn=conn,
        )
        if row["job_id"] is not None or not (row["documents"] and row["agents"]):
            break
        # The evaluation was inserted by a concurrent first enqueue after this statement's
        # snapshot: nothing was written; the next statement's snapshot sees it.
    if row["documents"] == 0:
        raise EnqueueError(f"unknown document {document_id}")
    if row["agents"] == 0:
        raise EnqueueError(f"unknown agent {agent_id}")
    if row["job_id"] is None or row["sent"] != 1:  # not expected: the statement writes both or neither
        raise EnqueueError(f"the evaluation of document {document_id} by agent {agent_id} was not enqueued")
    return str(row["job_id"])


def enqueue_evaluations(pairs, *, priority: str = BATCH, deadline=None, not_before=None, conn=None) -> list[str]:
    """Enqueue many evaluations (``(document_id, agent_id)`` pairs) in one transaction with a
    handful of round trips, whatever their number; return the job ids in the pairs' order.
    ``deadline`` and ``not_before`` as for ``enqueue_evaluation``, the same for every job.

    All or nothing: an unknown document or agent raises EnqueueError and writes no job.
    """
    _check_priority(priority)
    pairs = [(parse_id(d, "document id"), parse_id(a, "agent id")) for d, a in pairs]
    if not pairs:
        return []
    with db.transaction(conn) as cur:
        cur.execute(Q.latest_document_versions, {"ids": sorted({d for d, _ in pairs})})
        doc_versions = {str(r["document_id"]): r["id"] for r in cur.fetchall()}
        cur.execute(Q.latest_agent_versions, {"ids": sorted({a for _, a in pairs})})
        agent_versions = {str(r["agent_id"]): r["id"] for r in cur.fetchall()}
        for d, a in pairs:
            if d not in doc_versions:
                raise EnqueueError(f"unknown document {d}")
            if a not in agent_versions:
                raise EnqueueError(f"unknown agent {a}")
        distinct = sorted(set(pairs))
        evaluations: dict = {}
        for _ in range(3):  # pairs inserted concurrently after a statement's snapshot: again
            missing = [p for p in distinct if p not in evaluations]
            if not missing:
                break
            cur.execute(
                Q.upsert_evaluations, {"document_ids": [d for d, _ in missing], "agent_ids": [a for _, a in missing]}
            )
            evaluations.update({(str(r["document_id"]), str(r["agent_id"])): r["id"] for r in cur.fetchall()})
        if any(p not in evaluations for p in distinct):
            raise EnqueueError("the evaluations were being created concurrently: nothing enqueued, try again")
        job_ids = [new_id() for _ in pairs]
        due, start, delay_ms = _schedule(priority, deadline, not_before)
        messages = send_jobs(cur, priority, job_ids, delay_ms=delay_ms)
        jobs.insert_many(
            cur,
            job_ids=job_ids,
            evaluation_ids=[evaluations[p] for p in pairs],
            document_version_ids=[doc_versions[d] for d, _ in pairs],
            agent_version_ids=[agent_versions[a] for _, a in pairs],
            queues=[priority] * len(pairs),
            message_ids=[m.message_id for m in messages],
            deadlines=[due] * len(pairs),
            not_before=start,
        )
    return job_ids


def rerun_job(job_id, *, conn=None) -> str:
    """Run a finished job again as a new job (same pinned versions and queue, a batch job the
    default deadline), linked by original_job_id. One statement, as ``enqueue_evaluation``: the
    original's queue is read in it, so the message is made for each job queue and the statement
    writes the one of the original's queue."""
    job_id = parse_id(job_id, "job id")
    row = _one_statement(
        Q.rerun_job,
        {"original_job_id": job_id, "finished": sorted(str(s) for s in jobs.FINISHED)},
        queues=list(JOB_QUEUES),
        deadlines={q: _schedule(q, None, None)[0] for q in JOB_QUEUES},
        not_before=None,
        delay_ms=None,
        conn=conn,
    )
    if row["original_status"] is None:
        raise EnqueueError(f"unknown job {job_id}")
    if not jobs.is_finished(row["original_status"]):
        raise EnqueueError(f"job {job_id} is {row['original_status']}: only a finished job can be rerun")
    if row["job_id"] is None or row["sent"] != 1:
        raise EnqueueError(f"job {job_id}'s queue {row['queue']!r} is not one of {JOB_QUEUES}")
    return str(row["job_id"])


def cancel_job(job_id, *, reason: str = "cancelled by operator", conn=None) -> str:
    """Cancel a job: a PENDING one never runs; a RUNNING one stops at its next step boundary.
    Returns the job's status after the request."""
    job_id = parse_id(job_id, "job id")
    with db.transaction(conn) as cur:
        status = jobs.request_cancel(cur, job_id, reason)
        if status is not None:
            return status
        cur.execute(Q.job_by_id, {"job_id": job_id})
        job = cur.fetchone()
    if job is None:
        raise EnqueueError(f"unknown job {job_id}")
    raise EnqueueError(f"job {job_id} is already {job['status']}")
