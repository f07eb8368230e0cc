"""The app-facing API: enqueue evaluations.

A job row and its Dramatiq message are written in one transaction. Given the caller's ``conn``,
both commit or roll back with the caller's own transaction (nothing is committed here); without
it, roastq commits them itself.
"""

from __future__ import annotations

import uuid
from contextlib import contextmanager

from roastq import db
from roastq.db import Q

PRIORITIES = ("interactive", "batch")


class EnqueueError(ValueError):
    """The evaluation cannot be enqueued (unknown document or agent, bad priority)."""


def _uuid(value, what: str) -> str:
    try:
        return str(uuid.UUID(str(value)))
    except ValueError:
        raise EnqueueError(f"{what} {value!r} is not a valid id") from None


def _check_priority(priority: str) -> None:
    if priority not in PRIORITIES:
        raise EnqueueError(f"priority must be one of {PRIORITIES}, got {priority!r}")


def _actor(queue: str):
    from actors import ACTOR_FOR_QUEUE  # the edge that sends messages may reach the actors

    return ACTOR_FOR_QUEUE[queue]


def _insert_and_send(cur, *, evaluation_id, document_version_id, agent_version_id, queue,
                     original_job_id=None) -> str:
    """A job with versions already known, and its message (the legacy import's path)."""
    actor = _actor(queue)
    job_id = str(uuid.uuid4())
    message = actor.message(job_id)
    cur.execute(Q.insert_job, {
        "id": job_id, "evaluation_id": evaluation_id, "document_version_id": document_version_id,
        "agent_version_id": agent_version_id, "queue": queue, "message_id": message.message_id,
        "original_job_id": original_job_id,
    })
    actor.broker.enqueue_on(cur, message)
    return job_id


@contextmanager
def _one_statement(conn):
    """A cursor for one statement: on the caller's connection (in the caller's transaction), or
    on a pooled connection in autocommit, so that the statement is its own transaction and costs
    one round trip (psycopg2's BEGIN and COMMIT would be two more)."""
    if conn is not None:
        with db.transaction(conn) as cur:
            yield cur
        return
    with db.autocommit() as cur:
        yield cur


#: A NOTIFY payload must stay under 8,000 bytes: a bigger message is announced by its id.
_NOTIFY_MAX = 8000


def _send_job(cur, *, queues, document_id=None, agent_id=None, priority=None, rerun_of=None) -> dict:
    """The job and its message in one statement (``enqueue_job``); one candidate message for
    each of ``queues`` (the job's queue decides which is sent). Returns the statement's row, with
    ``job_id`` and the message sent."""
    from roastq.brokers import is_rabbitmq

    job_id = str(uuid.uuid4())
    actors = [_actor(q) for q in queues]
    messages = [actor.message(job_id) for actor in actors]
    encoded = [m.encode().decode("utf-8") for m in messages]
    broker = actors[0].broker
    cur.execute(Q.enqueue_job, {
        "job_id": job_id, "document_id": document_id, "agent_id": agent_id, "queue": priority,
        "rerun_of": rerun_of, "outbox": is_rabbitmq(broker), "queues": list(queues),
        "queue_names": [m.queue_name for m in messages], "message_ids": [m.message_id for m in messages],
        "messages": encoded,
        "notifies": [e if len(e.encode()) < _NOTIFY_MAX else '{"message_id": "%s"}' % m.message_id
                     for e, m in zip(encoded, messages)],
    })
    row = dict(cur.fetchone())
    row["job_id"] = job_id
    if row["created"]:
        # The broker's enqueue hooks (metrics count the message), for the message sent.
        sent = next(m for m in messages if m.message_id == str(row["message_id"]))
        broker.emit_before("enqueue", sent, None)
        broker.emit_after("enqueue", sent, None)
    return row


def enqueue_evaluation(document_id, agent_id, *, priority: str = "interactive", conn=None) -> str:
    """Enqueue an evaluation of a document by an agent; return the job id.

    The document's and agent's latest versions are pinned on the job now: edits made after this
    call do not change what the job evaluates. One statement: with the caller's ``conn``, one
    round trip in the caller's transaction; without it, that and the commit.
    """
    _check_priority(priority)
    document_id = _uuid(document_id, "document id")
    agent_id = _uuid(agent_id, "agent id")
    with _one_statement(conn) as cur:
        row = _send_job(cur, queues=[priority], document_id=document_id, agent_id=agent_id, priority=priority)
    if not row["document_known"]:
        raise EnqueueError(f"unknown document {document_id}")
    if not row["agent_known"]:
        raise EnqueueError(f"unknown agent {agent_id}")
    return row["job_id"]


def enqueue_evaluations(pairs, *, priority: str = "batch", conn=None) -> list[str]:
    """Enqueue many evaluations (``(document_id, agent_id)`` pairs) in one transaction with a
    handful of round trips, whatever their number; return the job ids in the pairs' order.

    All or nothing: an unknown document or agent raises EnqueueError and writes no job.
    """
    _check_priority(priority)
    pairs = [(_uuid(d, "document id"), _uuid(a, "agent id")) for d, a in pairs]
    if not pairs:
        return []
    actor = _actor(priority)
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
        cur.execute(Q.upsert_evaluations, {"document_ids": [d for d, _ in distinct],
                                           "agent_ids": [a for _, a in distinct]})
        evaluations = {(str(r["document_id"]), str(r["agent_id"])): r["id"] for r in cur.fetchall()}
        job_ids = [str(uuid.uuid4()) for _ in pairs]
        messages = [actor.message(job_id) for job_id in job_ids]
        cur.execute(Q.insert_jobs, {
            "ids": job_ids, "evaluation_ids": [evaluations[p] for p in pairs],
            "document_version_ids": [doc_versions[d] for d, _ in pairs],
            "agent_version_ids": [agent_versions[a] for _, a in pairs],
            "queues": [priority] * len(pairs), "message_ids": [m.message_id for m in messages],
        })
        actor.broker.enqueue_many_on(cur, messages)
    return job_ids


def rerun_job(job_id, *, conn=None) -> str:
    """Run a finished job again as a new job (same pinned versions), linked by original_job_id.
    One statement, as ``enqueue_evaluation``."""
    job_id = _uuid(job_id, "job id")
    with _one_statement(conn) as cur:
        row = _send_job(cur, queues=PRIORITIES, rerun_of=job_id)
    if row["rerun_status"] is None:
        raise EnqueueError(f"unknown job {job_id}")
    if not row["created"]:
        raise EnqueueError(f"job {job_id} is {row['rerun_status']}: only a finished job can be rerun")
    return row["job_id"]


def cancel_job(job_id, *, reason: str = "cancelled by operator", conn=None) -> str:
    """Cancel a job: a PENDING one never runs; a RUNNING one stops at its next step boundary.
    Returns the job's status after the request."""
    job_id = _uuid(job_id, "job id")
    with db.transaction(conn) as cur:
        cur.execute(Q.request_cancel, {"job_id": job_id, "reason": reason})
        row = cur.fetchone()
        if row is not None:
            return row["status"]
        cur.execute(Q.job_by_id, {"job_id": job_id})
        job = cur.fetchone()
    if job is None:
        raise EnqueueError(f"unknown job {job_id}")
    raise EnqueueError(f"job {job_id} is already {job['status']}")
