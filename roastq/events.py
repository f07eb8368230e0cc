"""In-process events: the core emits them, observability (metrics, logs) subscribes.

The core never imports observability; ``observability`` registers listeners at process setup.

Events:
  ``llm_call``: model, step, duration_s, usage (Usage or None), price_usd (Decimal or None),
  exception (None on success), cached (bool: served from the response cache).
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Callable

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
