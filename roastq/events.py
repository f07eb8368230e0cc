"""In-process events: the core emits them, observability (metrics, logs) subscribes.

The core never imports observability; ``observability`` registers listeners at process setup.

Events:
  ``llm_call``: model, step, duration_s, usage (Usage or None), price_usd (Decimal or None),
  exception (None on success), cached (bool: served from the response cache). A cache hit has
  ``usage`` all zeros and ``price_usd`` 0: nothing was sent or billed (its saving is in ``llm_cache``).

  The LLM cost layer (docs/llm.md) also emits:
  ``llm_cache``: outcome ("hit", "miss", "bypass", "store"), model, step, saved_usd (Decimal: what
  a hit saved, the original call's price; 0 otherwise).
  ``llm_step_memo``: step, outcome ("stored", or "resumed": a retry reused an earlier attempt's output).
  ``llm_budget_exhausted``: day (UTC date), spent_usd, cap_usd (Decimal), delay_s, model, step;
  a call was held because today's spend reached LLM_DAILY_BUDGET_USD (the job snoozes delay_s).
  ``llm_rate_limit_wait``: model, reason ("gate", "requests", "input_tokens", "output_tokens"),
  wait_s, snoozed (False: waited in the thread; True: the job snoozes wait_s).
  ``llm_rate_limit_gate``: model, closed_for_s, reason ("429" or "<kind> exhausted"); the
  model's gate is closed for every worker.
  ``llm_unknown_model``: model, price (the Price charged: the dearest known rate).
  ``llm_repair``: step, kind; one soft violation repaired in an answer before it was saved
  (``roastq/evaluation/answers.py``, ``REPAIR_KINDS``).
  ``llm_retry``: model, step, reason ("corrective", "max_tokens_raised", "shorter_answer"); one
  extra request within a call (each is also an ``llm_call``).
  ``llm_batch``: action ("submitted", "submit_failed"), queue, requests; the batch lane
  (``roastq/llm/batch_driver.py``). A batch answer is also an ``llm_call`` with ``duration_s``
  None and ``batch`` True (its tokens and dollars count; it has no call latency).

  Jobs:
  ``job_failed``: job_id, queue, actor, error_class; a job failed for good outside any message,
  where no middleware sees it (the stale-job reaper, ``roastq/ops/maintenance.py``: WORKER_LOST).
  Failures of a message being processed are counted by the middleware, not through this event.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

logger = logging.getLogger("roastq.events")

_listeners: dict[str, list[Callable]] = defaultdict(list)


def subscribe(event: str, listener: Callable) -> None:
    if listener not in _listeners[event]:
        _listeners[event].append(listener)


def unsubscribe(event: str, listener: Callable) -> None:
    if listener in _listeners[event]:
        _listeners[event].remove(listener)


def emit(event: str, **data) -> None:
    for listener in list(_listeners[event]):
        try:
            listener(**data)
        except Exception:  # a broken listener must never fail a job
            logger.exception("listener %r of %s failed", listener, event)
