"""Rate limits shared by every worker process and host, enforced in Postgres.

One ``llm_rate_limits`` row per model holds a GCRA schedule for each limit (requests, input tokens
and output tokens per minute): the time at which the next request may start. ``reserve`` is one
call of ``llm_rate_reserve`` (migration 0005): under the row lock, on the database's clock, it
finds the earliest start that every limit and the gate allow and books it, so waiters are served
in the order they asked and no process can overrun another's booking. ``settle`` then charges what
the estimate missed (output tokens are only known at the end), remembers the limits the API's
headers announced and, after a 429 or a response saying nothing is left, closes the model's gate
for everyone until the reset time.

Limits: ``LLM_RPM_LIMIT``/``LLM_INPUT_TPM_LIMIT``/``LLM_OUTPUT_TPM_LIMIT`` for every model,
``LLM_RATE_LIMITS`` per model; a limit left at 0 is learned from the
``anthropic-ratelimit-*-limit`` headers (``LLM_RATE_LIMITS_FROM_HEADERS``). Requests are paced at
``LLM_RATE_HEADROOM`` of each limit, smoothly (no burst), which also keeps a sliding-window limiter
happy. Cache-read tokens do not count against input tokens (as at Anthropic).

Waiting is never a failure: a wait up to ``LLM_RATE_MAX_WAIT_S`` (and at most half of the job's
time left) happens in the calling thread; a longer one books nothing and raises ``Snooze``, which
re-enqueues the job with that delay without using up an attempt.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import dataclass
from datetime import datetime

from roastq import db, events
from roastq.exceptions import Snooze
from roastq.jobctx import current_job
from roastq.settings import Settings, SettingsError
from roastq.sql import load_queries

logger = logging.getLogger("roastq.llm.ratelimit")

Q = load_queries("llm.sql", __package__)

#: Reset times in headers have one-second resolution: reopening a gate a second late is cheap,
#: a second early is a 429.
HEADER_RESET_MARGIN_S = 1.0
RETRY_AFTER_MARGIN_S = 0.05
#: How the API names its limits in headers, and our names for them.
HEADER_KINDS = {"requests": "rpm", "input-tokens": "input_tpm", "output-tokens": "output_tpm", "tokens": None}


@dataclass(frozen=True)
class Limits:
    """Configured limits for one model (0: not configured, learned from the headers if allowed)."""

    rpm: float = 0.0
    input_tpm: float = 0.0
    output_tpm: float = 0.0


def configured_limits(settings: Settings, model: str) -> Limits:
    per_model = settings.llm_rate_limits.get(model) or {}
    return Limits(
        rpm=float(per_model.get("rpm", settings.llm_rpm_limit)),
        input_tpm=float(per_model.get("input_tpm", settings.llm_input_tpm_limit)),
        output_tpm=float(per_model.get("output_tpm", settings.llm_output_tpm_limit)),
    )


def estimate_input_tokens(system: list, messages: list, tools: list) -> int:
    """About 4 characters a token: ``settle`` corrects the booking with the real count."""
    chars = len(json.dumps(tools)) if tools else 0
    for part in [system] + [m.get("content") for m in messages]:
        if isinstance(part, str):
            chars += len(part)
        elif isinstance(part, list):
            chars += sum(len(b.get("text", "")) for b in part if isinstance(b, dict))
    return max(1, math.ceil(chars / 4))


def _max_wait_s(settings: Settings) -> float:
    limit = settings.llm_rate_max_wait_s
    job = current_job.get()
    if job is not None:  # a wait must leave the job time for the call itself
        limit = min(limit, max(0.0, job.time_left() / 2))
    return limit


@dataclass(frozen=True)
class Reservation:
    wait_s: float  # slept in this thread before the request
    reason: str | None  # what made it wait: gate, requests, input_tokens, output_tokens
    start_at: datetime  # the booked start, on the database's clock


def acquire(settings: Settings, model: str, input_tokens: int, *, sleep=time.sleep) -> Reservation:
    """Book a start for one request and sleep until it. Raises Snooze when the wait would be
    longer than this thread should block."""
    headroom = settings.llm_rate_headroom
    if not 0 < headroom <= 1:
        raise SettingsError(f"LLM_RATE_HEADROOM must be in (0, 1], got {headroom}")
    limits = configured_limits(settings, model)
    max_wait = _max_wait_s(settings)
    with db.transaction() as cur:
        cur.execute(
            Q.rate_reserve,
            {
                "model": model,
                "rpm": limits.rpm,
                "input_tpm": limits.input_tpm,
                "output_tpm": limits.output_tpm,
                "headroom": headroom,
                "input_tokens": input_tokens,
                "max_wait_s": max_wait,
            },
        )
        row = cur.fetchone()
    wait, reason = max(0.0, row["wait_s"]), row["reason"]
    if not row["reserved"]:
        # Come back about when the limiter frees up; spread the returns a little.
        delay = wait + random.uniform(0, min(5.0, 0.2 * wait))
        events.emit("llm_rate_limit_wait", model=model, reason=reason, wait_s=delay, snoozed=True)
        logger.info(
            "rate limit (%s) on %s: %.1f s to wait, more than %.1f s: the job snoozes", reason, model, wait, max_wait
        )
        raise Snooze(delay, "rate_limit")
    if wait > 0:
        events.emit("llm_rate_limit_wait", model=model, reason=reason, wait_s=wait, snoozed=False)
        logger.debug("rate limit (%s) on %s: waiting %.2f s", reason, model, wait)
        sleep(wait)
    return Reservation(wait, reason, row["start_at"])


def settle(
    settings: Settings,
    model: str,
    *,
    input_estimate: int,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    headers=None,
    status: int | None = None,
    gate_allowed: bool = True,
) -> float | None:
    """After the call: correct the booking, learn limits, close the gate if the server said so.
    ``input_tokens`` None means the request was not billed (an error): the estimate is given back.
    Returns the seconds the gate was closed for, or None."""
    learned = learned_limits(headers) if settings.llm_rate_limits_from_headers else {}
    gate_s, gate_reason = gate_delay(headers, status) if gate_allowed else (None, None)
    if gate_s is not None:
        events.emit("llm_rate_limit_gate", model=model, closed_for_s=gate_s, reason=gate_reason)
        logger.warning("rate limit gate for %s closed for %.1f s (%s)", model, gate_s, gate_reason)
    with db.transaction() as cur:
        cur.execute(
            Q.rate_settle,
            {
                "model": model,
                "input_delta": (input_tokens if input_tokens is not None else 0) - input_estimate,
                "output_tokens": output_tokens or 0,
                "learned_rpm": learned.get("rpm"),
                "learned_input_tpm": learned.get("input_tpm"),
                "learned_output_tpm": learned.get("output_tpm"),
                "gate_s": gate_s,
                "gate_reason": gate_reason,
            },
        )
    return gate_s


def learned_limits(headers) -> dict[str, float]:
    out = {}
    for kind, name in HEADER_KINDS.items():
        raw = headers.get(f"anthropic-ratelimit-{kind}-limit") if headers else None
        if name and raw:
            try:
                out[name] = float(raw)
            except ValueError:
                pass
    return out


def gate_delay(headers, status: int | None) -> tuple[float | None, str | None]:
    """How long everyone must wait, from a 429's Retry-After or from a limit with nothing left."""
    if not headers:
        return None, None
    if status == 429:
        for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
            raw = headers.get(name)
            if raw is not None:
                try:
                    return float(raw) * scale + RETRY_AFTER_MARGIN_S, "429"
                except ValueError:
                    pass
    exhausted = []
    for kind in HEADER_KINDS:
        if headers.get(f"anthropic-ratelimit-{kind}-remaining") == "0":
            reset = _seconds_until(headers.get(f"anthropic-ratelimit-{kind}-reset"))
            if reset is not None:
                exhausted.append((reset + HEADER_RESET_MARGIN_S, f"{kind} exhausted"))
    if exhausted:
        return max(exhausted)
    return None, None


def _seconds_until(rfc3339: str | None) -> float | None:
    if not rfc3339:
        return None
    try:
        return max(0.0, datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp() - time.time())
    except ValueError:
        return None


def state() -> list[dict]:
    """Every model's limiter: learned and effective limits, and the gate (for the CLI, metrics)."""
    with db.transaction() as cur:
        cur.execute(Q.rate_state)
        return [dict(r) for r in cur.fetchall()]
