"""The batch lane, the job's side: a step of a job with time to spare waits for a Message Batch.

Anthropic's Message Batches API runs the same Messages requests at half the price, with results
usually within an hour and at most 24 hours. A job may carry a deadline (``jobs.deadline``;
batch-priority jobs get ``LLM_BATCH_DEFAULT_DEADLINE``); interactive jobs never use the lane.

``lane_call`` is consulted by the Claude client after the response cache and the budget (a cached
answer never waits for a batch) and before the shared rate limiter (batch requests have their
own limits and do not take the real-time RPM). For a step of a batch-queue job whose deadline is
more than ``LLM_BATCH_MIN_SLACK`` away it writes the request to ``llm_batch_requests`` and raises
``LaneWait``: the job's message is parked (``<queue>.lane``, served by no consumer: the
broker's ``park``), using no
attempt and no thread. The driver (``roastq.llm.batch_driver``) submits, polls and collects, then
wakes the job, whose next delivery finds the step in its memo, or here:

* ``errored``: the error response becomes the SDK exception the same error would raise real-time
  (``result_error``), so the failure middleware classifies it with the same class table;
* ``invalid`` (a tool call that fails validation): ``BadLLMOutput``, as real-time;
* ``fallback`` (the deadline came near while it waited): the step runs real-time now.

``docs/llm.md`` describes the lane, its settings and how to watch it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

import httpx2 as httpx
import psycopg2.extras

from roastq import db
from roastq.exceptions import BadLLMOutput, LaneWait
from roastq.jobctx import current_job
from roastq.llm.pricing import Usage
from roastq.queues import LANE_SUFFIX
from roastq.settings import Settings
from roastq.sql import load_queries

if TYPE_CHECKING:
    import anthropic

logger = logging.getLogger("roastq.llm.batch")

Q = load_queries("batch.sql", __package__)

#: Queues whose jobs may use the lane (interactive work never waits for a batch).
LANE_QUEUES = ("batch",)
#: Suffix of the broker queue where a waiting job's message is parked.
PARK_SUFFIX = LANE_SUFFIX
PENDING = ("waiting", "submitting", "submitted")
#: An error response's type -> the HTTP status the same error has real-time (the SDK picks its
#: exception class from the status and the error's details).
ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


@dataclass(frozen=True)
class LaneAnswer:
    """A step's answer from a Message Batch (the client makes it its ToolCall)."""

    model: str
    input: dict
    usage: Usage
    price_usd: Decimal
    duration_s: float
    request_id: str | None


def enabled(settings: Settings) -> bool:
    """LLM_BATCH_LANE=auto, on the Postgres broker (it parks messages), without an external proxy
    (which may not serve the Batches API)."""
    return settings.llm_batch_lane == "auto" and not settings.rabbitmq and not settings.llm_proxy_base_url


def custom_id(request_id) -> str:
    return str(request_id).replace("-", "")


def request_id_of(custom: str) -> str | None:
    import uuid

    try:
        return str(uuid.UUID(hex=custom))
    except ValueError:
        return None


def result_error(error: dict, base_url: str = "https://api.anthropic.com") -> anthropic.APIStatusError:
    """The SDK exception an errored batch result's error response stands for."""
    inner = (error or {}).get("error") or {}
    status = ERROR_STATUS.get(inner.get("type"), 500)
    request = httpx.Request("POST", f"{str(base_url).rstrip('/')}/v1/messages/batches")
    response = httpx.Response(status, request=request, json=error)
    from anthropic._error_classes import make_status_error  # the SDK's own status -> class table

    return make_status_error(
        f"Error code: {status} - {error} (a Message Batches result)", body=error, response=response
    )


def lane_call(
    settings: Settings,
    *,
    step: str,
    model: str,
    max_tokens: int,
    system: list,
    messages: list,
    tools: list,
    tool_choice: dict,
    tool: dict,
    cache_key: str | None,
    cache_seed: str,
):
    """None: run the step real-time. Otherwise the step's answer from the lane (a LaneAnswer), or it
    raises: ``LaneWait`` (the job waits for the lane), or the lane's error for the step."""
    job = current_job.get()
    if job is None or not enabled(settings):
        return None
    with db.transaction() as cur:
        cur.execute(Q.lane_state, {"job_id": job.job_id, "step": step})
        row = cur.fetchone()
        if row is None:
            return None
        slack = row["slack_s"]
        state = row["state"]
        if state is None:
            if row["queue"] not in LANE_QUEUES or slack is None or slack <= settings.llm_batch_min_slack_s:
                return None
            params = dict(
                model=model,
                max_tokens=max_tokens,
                system=system,
                messages=messages,
                tools=tools,
                tool_choice=tool_choice,
            )
            cur.execute(
                Q.insert_request,
                {
                    "job_id": job.job_id,
                    "step": step,
                    "queue": row["queue"],
                    "model": model,
                    "params": psycopg2.extras.Json(params),
                    "tool_name": tool["name"],
                    "tool_schema": psycopg2.extras.Json(tool["input_schema"]),
                    "cache_key": cache_key,
                    "cache_seed": cache_seed,
                },
            )
            state = "new"
        elif state in PENDING and slack is not None and slack > settings.llm_batch_fallback_s:
            state = "wait"  # delivered early (a duplicate message, say): it waits on
        else:
            cur.execute(Q.consume_request, {"id": row["request_id"]})
            state = "fallback" if state in PENDING else state
    # Raised once the transaction has committed the request.
    if state == "new":
        logger.info("step %s waits in the batch lane (%.0f s to the deadline)", step, slack)
        raise LaneWait(_park_for(settings, slack), step)
    if state == "wait":
        raise LaneWait(_park_for(settings, slack), step)
    if state == "fallback":
        logger.warning(
            "step %s runs real-time: %s s left before the deadline",
            step,
            f"{slack:.0f}" if slack is not None else "no time",
        )
        return None
    if state == "errored":
        raise result_error(row["error"], settings.anthropic_base_url or "https://api.anthropic.com")
    if state == "invalid":
        raise BadLLMOutput(
            f"{step}: {(row['error'] or {}).get('message', 'invalid tool input')} (batch {row['batch_id']})",
            step=step,
            request_id=row["response_id"],
        )
    if state == "succeeded":  # collected after this attempt loaded its memo
        usage = Usage(row["input_tokens"], row["output_tokens"], row["cache_read_tokens"], row["cache_write_tokens"])
        return LaneAnswer(
            model=row["model"],
            input=row["output"],
            usage=usage,
            price_usd=row["price_usd"] or Decimal(0),
            duration_s=row["waited_s"] or 0.0,
            request_id=row["response_id"],
        )
    return None  # cancelled: the job is finishing anyway


def _park_for(settings: Settings, slack: float) -> float:
    """How long the job may wait at most: until only LLM_BATCH_FALLBACK_S is left."""
    return max(1.0, slack - settings.llm_batch_fallback_s)


def status(conn=None) -> dict:
    """The lane at a glance (``roastq status``, the metrics); on ``conn`` when given."""
    with db.transaction(conn) as cur:
        cur.execute(Q.lane_status)
        return dict(cur.fetchone())


def job_requests(job_id: str) -> list[dict]:
    """A job's lane requests, oldest first (``roastq job``)."""
    with db.transaction() as cur:
        cur.execute(Q.job_lane_requests, {"job_id": job_id})
        return [dict(r) for r in cur.fetchall()]
