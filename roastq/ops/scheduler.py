"""Exactly once per tick: the guard around every periodic task.

periodiq (``periodiq actors``) sends each periodic actor's message at every matching minute, once
per scheduler process, and again when a scheduler restarts within the minute. So a tick may be
fired several times; the worker that processes the first fire claims ``(task, tick)`` in
``schedule_ticks`` (a primary key: one insert wins, the others conflict) and runs the task; any
other fire of the same tick only counts itself as a duplicate and returns.

The tick is the minute periodiq scheduled the message for (``scheduled_at``, truncated to the
minute): the same for two schedulers, and for a scheduler restarted within that minute.

A claimed tick runs at most once: if its worker dies midway, the tick is not run again. Every
task is written to catch up at its next tick (the reaper, the roll-up and the rest look at the
state of the database, not at what happened since the last tick), so nothing is lost but time.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable

from roastq import db
from roastq.jobctx import worker_id
from roastq.sql import load_queries

logger = logging.getLogger("roastq.ops.scheduler")

OPS = load_queries("ops.sql", __package__)


def claim(task: str, scheduled_at: str, *, who: str | None = None):
    """Claim ``task`` for the tick of ``scheduled_at``: the tick (a datetime) if this fire won,
    None if the tick was already claimed (the duplicate is counted)."""
    with db.transaction() as cur:
        cur.execute(OPS.claim_tick, {"task": task, "scheduled_at": scheduled_at, "worker_id": who or worker_id()})
        row = cur.fetchone()
        if row is not None:
            return row["tick"]
        cur.execute(OPS.count_duplicate_tick, {"task": task, "scheduled_at": scheduled_at})
        return None


def run_tick(task: str, scheduled_at: str | None, fn: Callable[[], dict]) -> dict | None:
    """Run ``fn`` for this fire of ``task`` unless its tick already ran; return its result.

    Without ``scheduled_at`` (a message sent by hand, not by periodiq) the task simply runs.
    A failure is recorded on the tick and logged, not raised: retrying the message would only
    meet the claimed tick; the next tick runs the task again.
    """
    if scheduled_at is None:
        logger.info("periodic %s: sent by hand, running unguarded", task)
        return fn()
    tick = claim(task, scheduled_at)
    if tick is None:
        logger.info("periodic %s: tick of %s already claimed: duplicate fire skipped", task, scheduled_at)
        return None
    with db.transaction() as cur:
        cur.execute(OPS.start_tick, {"task": task, "tick": tick})
    started = time.monotonic()
    outcome, result, error = "ok", None, None
    try:
        result = fn()
        return result
    except Exception as exc:
        outcome, error = "failed", f"{type(exc).__name__}: {exc}"[:1000]
        logger.exception("periodic %s (tick %s) failed", task, tick)
        return None
    finally:
        try:
            with db.transaction() as cur:
                cur.execute(
                    OPS.finish_tick,
                    {
                        "task": task,
                        "tick": tick,
                        "outcome": outcome,
                        "error": error,
                        "result": json.dumps(result, default=str) if result is not None else None,
                    },
                )
        except Exception:
            logger.exception("periodic %s: could not record the end of tick %s", task, tick)
        if outcome == "ok":
            logger.info("periodic %s (tick %s) done in %.2f s: %s", task, tick, time.monotonic() - started, result)
