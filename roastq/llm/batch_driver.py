"""The batch lane's driver: recover, sweep, submit, poll and collect, wake (``roastq.llm.batch``).

``drive()`` runs every step once, under a session advisory lock (one driver at a time, in any
process; the lock dies with its holder). The scheduler runs it every minute
(``roastq.ops.maintenance``), and each worker process offers to every ``LLM_BATCH_TICK_S``
(``middleware/batchlane.py``). Each step reads the state of the database, so a crash at any
point is caught up by the next run:

* **submit**: per queue, when the oldest waiting request has waited ``LLM_BATCH_MAX_WAIT_S`` and
  the queue's last batch is as old (or ``LLM_BATCH_MAX_REQUESTS`` wait), up to that many
  requests are marked ``submitting`` under a new submission id and committed; the create call
  happens outside any transaction; the batch id is recorded in the transaction that marks its
  requests ``submitted``. A request already in a batch is never put in another unless that batch
  gave it no answer (expired, canceled, or missing from its results);
* **recover**: requests left ``submitting`` by a driver that died belong to a batch that may or
  may not exist: the API's list of batches is searched for one created since, unknown to us, with
  as many requests; found, it is adopted (its results are then matched by ``custom_id``, and any
  request it turns out not to hold waits again); not found, the requests wait again;
* **poll**: open batches are retrieved with a backoff that starts at ``LLM_BATCH_POLL_S``; an
  ended batch's results are streamed, one transaction a result, each recorded once however often
  the stream is replayed (``succeeded``: validated, into the step memo, the ledger at batch prices
  and the response cache; ``errored``: kept for the job; ``expired``/``canceled``: waiting again,
  or fallback when the deadline is near);
* **sweep**: requests of cancelled or finished jobs leave the lane; requests whose job's deadline
  is nearer than ``LLM_BATCH_FALLBACK_S`` fall back to real-time; an open batch none of whose
  requests is still waited for is cancelled in the API;
* **wake**: a parked job whose requests are all answered goes back to its queue.
"""

from __future__ import annotations

import logging
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import psycopg2.extras

from roastq import db, events
from roastq.llm import batch
from roastq.llm.batch import Q, custom_id, request_id_of
from roastq.llm.pricing import Usage, cost_usd
from roastq.settings import get_settings
from roastq.sql import load_queries

logger = logging.getLogger("roastq.llm.batch_driver")

LLM = load_queries("llm.sql", __package__)
LOCK_KEY = "roastq.batch_lane"
#: The API's limit is 256 MB a batch; stay clear of it.
MAX_BATCH_BYTES = 200 * 1024 * 1024
#: How far back (before a stale submission began) the API's list is searched for its batch.
RECOVERY_MARGIN_S = 120.0
API_TIMEOUT_S = 60.0
#: After a refused or failed create, a queue's next submission waits this long (or the server's
#: retry-after): the API's batch limits (requests in its processing queue) are not hammered.
SUBMIT_BACKOFF_S = 30.0
_submit_after: dict[str, float] = {}  # queue -> time.monotonic() before which it is not submitted


def _client():
    from roastq.llm.client import default_claude

    return default_claude().client


def _settings():
    """The process's Claude client's settings: the lane sees what the jobs' calls see. Before the
    process has made its client, the settings it would be made with: a lane with nothing to send
    or poll never imports the client and the SDK under it (2 s and 50 MiB on a worker's boot)."""
    # The module may be half imported by a job's thread right now: no client made yet, then.
    made_default_claude = getattr(sys.modules.get("roastq.llm.client"), "made_default_claude", None)
    made = made_default_claude() if made_default_claude is not None else None
    return made.settings if made is not None else get_settings()


def drive() -> dict:
    """Run every step of the lane once, if no other driver is running; return what it did."""
    settings = _settings()
    if not batch.enabled(settings):
        return {"lane": "off"}
    conn = db.pool().getconn()
    try:
        with conn.cursor() as c:
            c.execute("SELECT pg_try_advisory_lock(hashtext(%s))", (LOCK_KEY,))
            locked = c.fetchone()[0]
        conn.commit()
        if not locked:
            return {"lane": "busy"}
        try:
            out = {"recovered": recover(), **sweep(settings), "submitted": submit(settings)}
            out.update(poll(settings))
            out["woken"] = wake()
            return out
        finally:
            with conn.cursor() as c:
                c.execute("SELECT pg_advisory_unlock(hashtext(%s))", (LOCK_KEY,))
            conn.commit()
    finally:
        db.pool().putconn(conn, close=conn.closed != 0)


# -- submit ------------------------------------------------------------------------------------


def submit(settings, *, force: bool = False) -> int:
    """Submit the batches that are due; return how many were created."""
    created = 0
    with db.transaction() as cur:
        cur.execute(Q.waiting_by_queue)
        queues = [dict(r) for r in cur.fetchall()]
    for q in queues:
        full = q["waiting"] >= settings.llm_batch_max_requests
        due = q["oldest_s"] >= settings.llm_batch_max_wait_s and (
            q["last_batch_s"] is None or q["last_batch_s"] >= settings.llm_batch_max_wait_s
        )
        if force or ((full or due) and time.monotonic() >= _submit_after.get(q["queue"], 0.0)):
            created += _submit_one(settings, q["queue"])
    return created


def _submit_one(settings, queue: str) -> int:
    submission = str(uuid.uuid4())
    with db.transaction() as cur:
        cur.execute(
            Q.claim_requests, {"queue": queue, "limit": settings.llm_batch_max_requests, "submission_id": submission}
        )
        claimed = cur.fetchall()
        size, keep, tail = 0, [], []
        for r in claimed:  # the API's size limit: the rest waits for the next batch
            size += len(psycopg2.extras.json.dumps(r["params"])) + 100
            (keep if size <= MAX_BATCH_BYTES else tail).append(r)
        if tail:
            cur.execute(Q.unclaim_requests, {"submission_id": submission, "ids": [str(r["id"]) for r in tail]})
    if not keep:
        return 0
    requests = [{"custom_id": custom_id(r["id"]), "params": r["params"]} for r in keep]
    try:
        created = _client().messages.batches.create(requests=requests, timeout=API_TIMEOUT_S)
    except Exception as exc:
        import anthropic

        if isinstance(exc, anthropic.APIStatusError):  # refused: no batch was made
            with db.transaction() as cur:
                cur.execute(Q.unclaim_requests, {"submission_id": submission, "ids": None})
            logger.warning("batch of %d %s requests refused (%s): they wait for the next", len(keep), queue, exc)
        else:  # it may have been made: the next run looks for it (recover)
            logger.warning(
                "creating a batch of %d %s requests failed (%s): the next run checks whether it exists",
                len(keep),
                queue,
                type(exc).__name__,
            )
        events.emit("llm_batch", action="submit_failed", queue=queue, requests=len(keep))
        retry_after = _retry_after_s(exc)
        _submit_after[queue] = time.monotonic() + (
            retry_after if retry_after is not None else min(SUBMIT_BACKOFF_S, settings.llm_batch_max_wait_s)
        )
        return 0
    _record(settings, created, queue=queue, submission=submission, count=len(keep), adopted=False)
    logger.info("batch %s submitted: %d %s requests", created.id, len(keep), queue)
    events.emit("llm_batch", action="submitted", queue=queue, requests=len(keep))
    return 1


def _retry_after_s(exc) -> float | None:
    headers = getattr(getattr(exc, "response", None), "headers", None) or {}
    try:
        return float(headers["retry-after"]) if "retry-after" in headers else None
    except ValueError:
        return None


def _record(settings, created, *, queue: str, submission: str, count: int, adopted: bool) -> None:
    with db.transaction() as cur:
        cur.execute(
            Q.record_batch,
            {
                "id": created.id,
                "queue": queue,
                "submission_id": submission,
                "request_count": count,
                "processing_status": created.processing_status,
                "api_created_at": created.created_at,
                "expires_at": created.expires_at,
                "adopted": adopted,
                "poll_s": settings.llm_batch_poll_s,
            },
        )
        cur.execute(Q.mark_submitted, {"batch_id": created.id, "submission_id": submission})


def recover() -> int:
    """Find the batches of submissions whose driver died between the create call and its record."""
    with db.transaction() as cur:
        cur.execute(Q.stale_submissions)
        stale = [dict(r) for r in cur.fetchall()]
    if not stale:
        return 0
    settings = _settings()
    oldest = min(s["since"] for s in stale) - timedelta(seconds=RECOVERY_MARGIN_S)
    candidates = []
    for b in _client().messages.batches.list(limit=100, timeout=API_TIMEOUT_S):  # newest first
        if b.created_at < oldest:
            break
        candidates.append(b)
    with db.transaction() as cur:
        cur.execute(Q.known_batch_ids, {"ids": [b.id for b in candidates]})
        known = {r["id"] for r in cur.fetchall()}
    unknown = [b for b in candidates if b.id not in known]
    found = 0
    for s in sorted(stale, key=lambda s: s["since"]):
        since = s["since"] - timedelta(seconds=RECOVERY_MARGIN_S)
        match = next(
            (
                b
                for b in reversed(unknown)  # oldest first: submissions were made in order
                if b.created_at >= since and _total(b.request_counts) == s["n"]
            ),
            None,
        )
        if match is None:
            with db.transaction() as cur:
                cur.execute(Q.unclaim_requests, {"submission_id": s["submission_id"], "ids": None})
            logger.warning("submission %s (%d requests) made no batch: they wait again", s["submission_id"], s["n"])
            continue
        unknown.remove(match)
        _record(settings, match, queue=s["queue"], submission=str(s["submission_id"]), count=s["n"], adopted=True)
        found += 1
        logger.warning("batch %s adopted: created by a submitter that died before recording it", match.id)
    return found


def _total(counts) -> int:
    return sum(getattr(counts, k) for k in ("processing", "succeeded", "errored", "canceled", "expired"))


# -- poll and collect --------------------------------------------------------------------------


def poll(settings) -> dict:
    with db.transaction() as cur:
        cur.execute(Q.due_batches, {"limit": 50})
        due = [dict(r) for r in cur.fetchall()]
    out = {"polled": 0, "collected": 0, "results": 0}
    if not due:
        return out
    client = _client()
    for b in due:
        next_s = min(settings.llm_batch_poll_max_s, settings.llm_batch_poll_s * 2 ** min(b["polls"], 20))
        try:
            got = client.messages.batches.retrieve(b["id"], timeout=API_TIMEOUT_S)
        except Exception as exc:
            with db.transaction() as cur:
                cur.execute(
                    Q.batch_poll_failed,
                    {"id": b["id"], "error": f"{type(exc).__name__}: {exc}"[:500], "next_poll_s": next_s},
                )
            logger.warning("polling batch %s failed: %s", b["id"], type(exc).__name__)
            continue
        out["polled"] += 1
        with db.transaction() as cur:
            cur.execute(
                Q.batch_polled,
                {
                    "id": b["id"],
                    "processing_status": got.processing_status,
                    "request_counts": psycopg2.extras.Json(got.request_counts.model_dump()),
                    "ended_at": got.ended_at,
                    "expires_at": got.expires_at,
                    "next_poll_s": 0 if got.processing_status == "ended" else next_s,
                },
            )
        if got.processing_status == "ended":
            try:
                out["results"] += collect(settings, b["id"])
                out["collected"] += 1
            except Exception as exc:  # a stream cut halfway: what was recorded stays, the rest next time
                with db.transaction() as cur:
                    cur.execute(
                        Q.batch_poll_failed,
                        {
                            "id": b["id"],
                            "next_poll_s": settings.llm_batch_poll_s,
                            "error": f"results: {type(exc).__name__}: {exc}"[:500],
                        },
                    )
                logger.warning("collecting batch %s failed midway (%s): resumed next time", b["id"], type(exc).__name__)
    return out


def collect(settings, batch_id: str) -> int:
    """Stream an ended batch's results and record each; then the requests it did not answer wait
    again. Idempotent: a result already recorded is skipped."""
    n = 0
    for line in _client().messages.batches.results(batch_id, timeout=API_TIMEOUT_S):
        n += _record_result(settings, batch_id, line)
    with db.transaction() as cur:
        cur.execute(Q.unanswered_requests, {"batch_id": batch_id})
        for r in cur.fetchall():
            _requeue(cur, settings, r["id"], "missing", slack=None)
        cur.execute(Q.batch_collected, {"id": batch_id})
    logger.info("batch %s collected: %d results recorded", batch_id, n)
    return n


def _record_result(settings, batch_id: str, line) -> int:
    rid = request_id_of(line.custom_id)
    if rid is None:
        return 0
    result = line.result
    cache_entry = None
    with db.transaction() as cur:
        cur.execute(Q.lock_result_request, {"id": rid})
        req = cur.fetchone()
        if req is None:
            return 0
        mine = req["state"] == "submitted" and req["batch_id"] == batch_id
        if result.type == "succeeded":
            message = result.message
            usage = Usage.from_api(message.usage)
            price = cost_usd(req["model"], usage, batch=True)
            if not mine:  # fallback or cancelled meanwhile: paid for, but no one waits for it
                cur.execute(Q.bill_ignored, {"id": rid, "price_usd": price, **_tokens(usage)})
                if cur.fetchone() is not None:
                    _ledger(cur, req, usage, price)
                return 0
            saved = cost_usd(req["model"], usage) - price
            output, error, state = _validated(req, message)
            cur.execute(
                Q.request_answered,
                {
                    "id": rid,
                    "state": state,
                    "output": psycopg2.extras.Json(output) if output is not None else None,
                    "error": psycopg2.extras.Json(error) if error else None,
                    "response_id": message.id,
                    "price_usd": price,
                    "saved_usd": saved,
                    **_tokens(usage),
                },
            )
            _ledger(cur, req, usage, price)
            if state == "succeeded":
                waited = (datetime.now(UTC) - req["created_at"]).total_seconds()
                cur.execute(
                    LLM.memo_store,
                    {
                        "job_id": req["job_id"],
                        "step": req["step"],
                        "output": psycopg2.extras.Json(output),
                        "model": req["model"],
                        "duration_s": waited,
                        "attempt": None,
                        "request_id": message.id,
                    },
                )
                if req["cache_key"] and settings.llm_cache_enabled:
                    cache_entry = (req, message, usage, price)
            # Tokens and dollars count with every other call's; a batch answer has no call latency.
            events.emit(
                "llm_call",
                model=req["model"],
                step=req["step"],
                duration_s=None,
                usage=usage,
                price_usd=price,
                exception=None,
                cached=False,
                batch=True,
            )
        elif not mine:
            return 0
        elif result.type == "errored":
            cur.execute(Q.request_errored, {"id": rid, "error": psycopg2.extras.Json(result.error.model_dump())})
        else:  # expired, canceled
            _requeue(cur, settings, rid, result.type, slack=req["slack_s"])
    if cache_entry is not None:
        _cache(settings, *cache_entry)
    return 1


def _tokens(usage: Usage) -> dict:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "cache_read_tokens": usage.cache_read_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
    }


def _ledger(cur, req, usage: Usage, price: Decimal) -> None:
    cur.execute(
        LLM.ledger_billed,
        {"job_id": req["job_id"], "step": req["step"], "model": req["model"], "price_usd": price, **_tokens(usage)},
    )


def _validated(req, message):
    """(output, error, state): the forced tool's input, checked as a real-time answer is."""
    from roastq.exceptions import BadLLMOutput
    from roastq.llm.toolcall import tool_input

    tool = {"name": req["tool_name"], "input_schema": req["tool_schema"]}
    try:
        return tool_input(message.content, tool, step=req["step"], request_id=message.id), None, "succeeded"
    except BadLLMOutput as exc:
        return None, {"message": str(exc)}, "invalid"


def _cache(settings, req, message, usage, price) -> None:
    from roastq.llm import cache

    try:  # best effort, as in the real-time path
        cache.store(
            req["cache_key"],
            model=req["model"],
            step=req["step"],
            seed=req["cache_seed"] or "",
            response=message.model_dump(mode="json"),
            usage=usage,
            price_usd=price,
            request_id=message.id,
            ttl_s=settings.llm_cache_ttl_s,
        )
    except Exception:
        logger.exception("storing a batch answer in the response cache failed")


def _requeue(cur, settings, rid, result: str, *, slack) -> None:
    near = slack is not None and slack <= settings.llm_batch_fallback_s
    cur.execute(Q.request_requeued, {"id": rid, "state": "fallback" if near else "waiting", "result": result})


# -- sweep and wake ----------------------------------------------------------------------------


def sweep(settings) -> dict:
    with db.transaction() as cur:
        cur.execute(Q.cancel_requests_of_finished_jobs)
        cancelled = cur.rowcount
        cur.execute(Q.fall_back_near_deadline, {"fallback_s": settings.llm_batch_fallback_s})
        fell_back = cur.rowcount
        cur.execute(Q.batches_without_live_requests)
        idle = [r["id"] for r in cur.fetchall()]
    for batch_id in idle:
        try:
            got = _client().messages.batches.cancel(batch_id, timeout=API_TIMEOUT_S)
        except Exception as exc:
            logger.warning("cancelling batch %s failed (%s): tried again next time", batch_id, type(exc).__name__)
            continue
        with db.transaction() as cur:
            cur.execute(Q.batch_cancel_requested, {"id": batch_id, "processing_status": got.processing_status})
        logger.info("batch %s cancelled: none of its requests is waited for", batch_id)
    if fell_back:
        logger.warning("%d lane requests fell back to real-time: their deadline is near", fell_back)
    return {"cancelled_requests": cancelled, "fell_back": fell_back, "cancelled_batches": len(idle)}


def wake() -> int:
    with db.transaction() as cur:
        cur.execute(Q.wake_parked_jobs)
        return cur.fetchone()["woken"]


def run_forever(stop, tick_s: float | None = None) -> None:
    """Drive the lane every ``tick_s`` until ``stop`` (a threading.Event) is set."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            drive()
        except Exception:
            logger.exception("batch lane run failed")
        stop.wait(max(0.05, (tick_s or _settings().llm_batch_tick_s) - (time.monotonic() - started)))
