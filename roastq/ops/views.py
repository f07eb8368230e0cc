"""What a job produced and what the queue holds, read for people: the CLI (``roastq status``,
``jobs``, ``job``) and the console (roastq/console/) both read through these functions and the
named queries in views.sql and ops.sql."""

from __future__ import annotations

from datetime import UTC, datetime

from roastq import db
from roastq.api import parse_id
from roastq.db import Q
from roastq.ops import maintenance
from roastq.ops import pause as system_pause
from roastq.queues import ALL_QUEUES
from roastq.settings import get_settings
from roastq.sql import load_queries

VIEWS = load_queries("views.sql", __package__)
OPS = load_queries("ops.sql", __package__)


def status_data(*, overview: bool = False, conn=None) -> dict:
    """What `roastq status` shows. ``overview`` (the console's overview page, refreshed every few
    seconds): without the reads whose cost grows with history (finished messages, every job's
    status); jobs are counted as waiting and running now, and finished in the last 24 hours.

    Every read is one statement on one pooled connection in autocommit (or on ``conn``): one
    round trip each, no BEGIN and COMMIT around them. Each statement sees its own snapshot, as it
    did inside a READ COMMITTED transaction."""
    if conn is None:
        with db.autocommit() as cur:
            return status_data(overview=overview, conn=cur.connection)
    stale = maintenance.stale_after_s()
    with db.transaction(conn) as cur:
        cur.execute(OPS.job_counts_recent if overview else Q.job_counts)
        jobs = {r["status"]: r["n"] for r in cur.fetchall()}
        queues = []
        if not overview:
            cur.execute(Q.queue_counts)
            queues = [dict(r) for r in cur.fetchall()]
        cur.execute(OPS.queue_summary, {"with_done": not overview})
        summary = {r["queue"]: dict(r) for r in cur.fetchall()}
        cur.execute(Q.live_workers, {"stale_after_s": stale})
        workers = [dict(r) for r in cur.fetchall()]
        cur.execute(OPS.last_ticks)
        ticks = [dict(r) for r in cur.fetchall()]
    paused = system_pause.state(conn)
    now = datetime.now(UTC)
    for w in workers:
        w["last_seen_s"] = (now - w["last_seen_at"]).total_seconds()
    zero = dict(queued=0, delayed=0, in_flight=0, orphaned=0, dead=0, done=0, oldest_queued_age_s=None)
    per_queue = [summary.get(q, dict(zero, queue=q)) for q in ALL_QUEUES]
    per_queue += [row for name, row in sorted(summary.items()) if name not in ALL_QUEUES]
    extra = {"broker": "postgres"}
    if get_settings().rabbitmq:  # messages live in RabbitMQ: dramatiq.queue is empty (docs/scaling.md)
        from roastq.brokers.outbox import backlog
        from roastq.brokers.rabbitmq import rabbitmq_summary

        per_queue = rabbitmq_summary(ALL_QUEUES)
        extra = {"broker": "rabbitmq", "outbox": backlog()}
    # "queues" (messages by queue and state) is kept as it was for existing scripts.
    from roastq.llm import batch

    return {
        "paused": paused,
        "jobs": jobs,
        "queue_summary": per_queue,
        "queues": queues,
        "workers": workers,
        "scheduler": ticks,
        "batch_lane": dict(batch.status(conn), enabled=batch.enabled(get_settings())),
        **extra,
    }


def find_jobs(filters: dict, limit: int) -> list[dict]:
    """Jobs matching ``filters`` (those of ``_filters``, plus optional ``search``, a text in the
    document's title, and ``after_created_at``/``after_id``, the last row of the page before)."""
    params = dict(search=None, after_created_at=None, after_id=None)
    params.update(filters, limit=limit)
    with db.transaction() as cur:
        cur.execute(OPS.find_jobs, params)
        return [dict(r) for r in cur.fetchall()]


def job_detail(job_id: str, *, with_document: bool = False) -> dict | None:
    """A job with its attempts, tasks, LLM calls, reruns and evaluation (grade, summary, analysis,
    self-critique, highlights with their validity); ``with_document`` adds the document's text
    (what the highlights' offsets point into). None for an unknown job."""
    job_id = parse_id(job_id, "job id")
    with db.transaction() as cur:
        cur.execute(Q.job_by_id, {"job_id": job_id})
        job = cur.fetchone()
        if job is None:
            return None
        data = dict(job)
        cur.execute(Q.job_logs, {"job_id": job_id})
        data["logs"] = cur.fetchone()["logs"]
        cur.execute(Q.job_attempts, {"job_id": job_id})
        data["attempt_log"] = [dict(r) for r in cur.fetchall()]
        cur.execute(Q.job_tasks, {"job_id": job_id})
        data["tasks"] = [dict(r) for r in cur.fetchall()]
        cur.execute(VIEWS.job_llm_calls, {"job_id": job_id})
        data["llm_calls"] = [dict(r) for r in cur.fetchall()]
        cur.execute(VIEWS.job_reruns, {"job_id": job_id})
        data["reruns"] = [dict(r) for r in cur.fetchall()]
        cur.execute(VIEWS.job_subject, {"job_id": job_id})
        subject = dict(cur.fetchone())
        text = subject.pop("document_prepend") + subject.pop("document_content")
        data.update(subject)
        if with_document:
            data["document_text"] = text
        cur.execute(VIEWS.job_evaluation, {"job_id": job_id})
        evaluation = cur.fetchone()
        data["evaluation"] = None
        if evaluation is not None:
            evaluation = dict(evaluation)
            cur.execute(VIEWS.evaluation_highlights, {"evaluation_version_id": evaluation["id"]})
            evaluation["highlights"] = [dict(r) for r in cur.fetchall()]
            data["evaluation"] = evaluation
    return data


def document_segments(text: str, highlights: list[dict]) -> list[tuple[str, int | None]]:
    """The document cut into ``(text, highlight number)`` pieces, a number (1-based, in the order
    of ``highlights``) where a located highlight covers the piece, None elsewhere. Highlights that
    overlap one already placed are not marked a second time."""
    spans = sorted(
        (h["start_offset"], h["end_offset"], n)
        for n, h in enumerate(highlights, 1)
        if h.get("is_valid")
        and h.get("start_offset") is not None
        and h.get("end_offset") is not None
        and 0 <= h["start_offset"] < h["end_offset"] <= len(text)
    )
    pieces, at = [], 0
    for start, end, n in spans:
        if start < at:
            continue
        if start > at:
            pieces.append((text[at:start], None))
        pieces.append((text[start:end], n))
        at = end
    if at < len(text):
        pieces.append((text[at:], None))
    return pieces


def overview_data() -> dict:
    """The console's overview: ``status_data(overview=True)`` and the last hour's throughput,
    read on one connection (one round trip a statement)."""
    with db.autocommit() as cur:
        status = status_data(overview=True, conn=cur.connection)
        cur.execute(VIEWS.throughput_last_hour)
        return {"status": status, "throughput": [dict(r) for r in cur.fetchall()]}


def dead_letter_groups(conn=None) -> list[dict]:
    with db.transaction(conn) as cur:
        cur.execute(VIEWS.dead_letter_groups)
        return [dict(r) for r in cur.fetchall()]


def dead_letters(
    *, error_class: str | None = None, agent_id: str | None = None, limit: int = 200, conn=None
) -> list[dict]:
    with db.transaction(conn) as cur:
        cur.execute(VIEWS.dead_letters, {"error_class": error_class, "agent_id": agent_id, "limit": limit})
        return [dict(r) for r in cur.fetchall()]


def dead_letter_page(*, error_class: str | None = None, agent_id: str | None = None, limit: int = 100) -> dict:
    """The dead-letter page: the groups and one group's (or all) newest letters, on one
    connection (one round trip a statement)."""
    with db.autocommit() as cur:
        return {
            "groups": dead_letter_groups(cur.connection),
            "letters": dead_letters(error_class=error_class, agent_id=agent_id, limit=limit, conn=cur.connection),
        }


def throughput_last_hour() -> list[dict]:
    with db.transaction() as cur:
        cur.execute(VIEWS.throughput_last_hour)
        return [dict(r) for r in cur.fetchall()]


def costs(days: int = 7) -> dict:
    """Spend by day, agent and model (the scheduler's roll-up), live spend by day and model with
    the response cache's savings, and today's spend against the budget."""
    from roastq.llm import budget

    with db.transaction() as cur:
        cur.execute(OPS.cost_report, {"days": days})
        by_agent = [dict(r) for r in cur.fetchall()]
        cur.execute(VIEWS.spend_by_day, {"days": days})
        by_model = [dict(r) for r in cur.fetchall()]
    today = budget.status(get_settings())
    return {
        "by_agent": by_agent,
        "by_model": by_model,
        "today": {"day": today.day, "spent_usd": today.spent_usd, "cap_usd": today.cap_usd},
    }
