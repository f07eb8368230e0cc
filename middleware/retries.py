"""Retries by error class, with exponential backoff, full jitter and the server's Retry-After.

Used instead of dramatiq's ``Retries`` for our actors. The decision (retry after a delay, fail,
or cancel) is made once per failed attempt by ``decision_for`` and kept on the message, so the
job-state middleware, the logs, Sentry and the metrics all report the same decision.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime

from dramatiq.middleware import Middleware

from roastq.redact import clean_error
from roastq.settings import get_settings

from .errors import CLASS_POLICIES, TIMEOUT_RETRIED, ClassPolicy, ErrorClass, classify

#: Rate-limit waits do not use up attempts, but they are bounded.
MAX_WAITS = 20
MAX_WAIT_TOTAL_S = 1800.0


@dataclass(frozen=True)
class Decision:
    action: str  # "retry", "fail" or "cancel"
    error_class: ErrorClass
    error: str  # clean: no secrets, at most 1,000 characters
    level: str = "error"
    delay_s: float = 0.0
    delay_reason: str | None = None  # "backoff" or "server_requested"
    counts_attempt: bool = True

    @property
    def final(self) -> bool:
        return self.action != "retry"


def server_delay_s(exc: BaseException) -> float | None:
    """The delay the server asked for, in seconds: the largest of retry-after-ms, retry-after
    (seconds or an HTTP date) and the reset time of any exhausted rate limit. None if it asked
    for nothing."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    asked: list[float] = []
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            asked.append(float(ms) / 1000)
        except ValueError:
            pass
    if (ra := headers.get("retry-after")) is not None:
        try:
            asked.append(float(ra))
        except ValueError:
            try:
                asked.append(parsedate_to_datetime(ra).timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
        if headers.get(f"anthropic-ratelimit-{kind}-remaining") == "0":
            reset = headers.get(f"anthropic-ratelimit-{kind}-reset")
            if reset:
                try:
                    asked.append(datetime.fromisoformat(reset.replace("Z", "+00:00")).timestamp() - time.time())
                except ValueError:
                    pass
    return max(0.0, max(asked)) if asked else None


def policy_for(error_class: ErrorClass, *, retry_on_timeout: bool = False) -> ClassPolicy:
    if error_class is ErrorClass.TIMEOUT and retry_on_timeout:
        return TIMEOUT_RETRIED
    return CLASS_POLICIES[error_class]


def decide(exc: BaseException, options: dict, *, retry_on_timeout: bool = False, rng=random) -> Decision:
    """The decision for one failed attempt, given the message's retry counters in ``options``."""
    error_class = classify(exc)
    policy = policy_for(error_class, retry_on_timeout=retry_on_timeout)
    error = clean_error(exc)
    if error_class is ErrorClass.CANCELLED:
        return Decision("cancel", error_class, error)
    if error_class is ErrorClass.SNOOZED:
        return Decision("retry", error_class, error, delay_s=exc.delay_s, delay_reason=exc.reason,
                        counts_attempt=False)
    if not policy.retry:
        return Decision("fail", error_class, error, level=policy.level)

    server = server_delay_s(exc)
    if not policy.counts_attempt:
        waits, waited = options.get("waits", 0), options.get("waited_s", 0.0)
        delay = server if server is not None else _backoff(policy, waits + 1, rng)
        if waits >= MAX_WAITS or waited + delay > MAX_WAIT_TOTAL_S:
            return Decision("fail", error_class, f"{error} (gave up after {waits} rate-limit waits)", level=policy.level)
        # A little jitter on top, never below what the server asked, so workers don't stampede.
        delay += rng.uniform(0, min(1.0, 0.1 * delay))
        return Decision("retry", error_class, error, delay_s=delay,
                        delay_reason="server_requested" if server is not None else "backoff",
                        counts_attempt=False)

    counted = options.get("retries", 0) + 1
    if counted >= policy.max_attempts:
        return Decision("fail", error_class, error, level=policy.level)
    backoff = _backoff(policy, counted, rng)
    if server is not None and server >= backoff:
        return Decision("retry", error_class, error, delay_s=server, delay_reason="server_requested")
    return Decision("retry", error_class, error, delay_s=backoff, delay_reason="backoff")


def _backoff(policy: ClassPolicy, n: int, rng) -> float:
    """Full jitter (AWS): uniform(0, min(cap, base * 2**(n-1))), times BACKOFF_SCALE."""
    scale = get_settings().backoff_scale
    return rng.uniform(0, scale * min(policy.cap_s, policy.base_s * 2 ** (n - 1)))


def decision_for(message, exception: BaseException) -> Decision:
    """The decision for this message's failed attempt, computed once and kept on the message."""
    decision = getattr(message, "roastq_decision", None)
    if decision is None:
        job = getattr(message, "roastq_job", None)
        decision = decide(exception, message.options, retry_on_timeout=bool(job and job.retry_on_timeout))
        message.roastq_decision = decision
    return decision


class Retries(Middleware):
    """Retry failed messages according to their error class.

    A retry re-enqueues the message with the chosen delay; a final failure marks the message
    failed, so the broker rejects it (a dead letter that stays queryable in ``dramatiq.queue``).
    Message options kept across retries: ``retries`` (counted failures), ``waits`` and
    ``waited_s`` (rate-limit waits), ``bypass_cache`` (the next attempt must not be served a
    cached answer: set after BAD_LLM_OUTPUT).
    """

    def after_process_message(self, broker, message, *, result=None, exception=None):
        if exception is None:
            return
        decision = decision_for(message, exception)
        if decision.final:
            message.fail()
            return
        if decision.error_class is ErrorClass.SNOOZED:
            pass  # a wait we chose ourselves: no attempt used, no rate-limit wait counted
        elif decision.counts_attempt:
            message.options["retries"] = message.options.get("retries", 0) + 1
        else:
            message.options["waits"] = message.options.get("waits", 0) + 1
            message.options["waited_s"] = message.options.get("waited_s", 0.0) + decision.delay_s
        message.options["bypass_cache"] = decision.error_class is ErrorClass.BAD_LLM_OUTPUT
        message.options.pop("traceback", None)
        if getattr(exception, "parks", False) and hasattr(broker, "park"):
            broker.park(message)  # a step waits in the batch lane, which wakes the job (roastq/llm/batch.py)
            return
        broker.enqueue(message, delay=max(1, int(decision.delay_s * 1000)))

