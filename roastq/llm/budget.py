"""The budget guard: a daily spend cap on LLM calls (``LLM_DAILY_BUDGET_USD``, UTC days).

Before each billable call (a cache hit or a memoised step costs nothing and is never held) the
guard reads today's spend from ``llm_spend_daily``, which the ledger adds every billed response to.
At or over the cap the call does not start: the job raises ``Snooze`` and comes back after
``LLM_BUDGET_RECHECK_S`` or at the start of the next UTC day, whichever is sooner, so it resumes
by itself the next day, or soon after the cap is raised (a new value and a worker restart). It is
never failed and uses up no attempt. Calls already in flight finish, so a day may end a few calls
over the cap.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from roastq import db, events
from roastq.exceptions import Snooze
from roastq.settings import Settings
from roastq.sql import load_queries

logger = logging.getLogger("roastq.llm.budget")

Q = load_queries("llm.sql", __package__)

#: Held jobs come back spread over this fraction of the recheck delay, not all at once.
RECHECK_JITTER = 0.1


@dataclass(frozen=True)
class BudgetStatus:
    day: date  # the UTC day
    spent_usd: Decimal
    cap_usd: Decimal | None  # None: no cap
    day_left_s: float

    @property
    def exhausted(self) -> bool:
        return self.cap_usd is not None and self.spent_usd >= self.cap_usd


def status(settings: Settings, conn=None) -> BudgetStatus:
    """Today's spend against the cap (also for the CLI and the metrics collector, which passes
    its own connection ``conn``; else a pooled one)."""
    with db.transaction(conn) as cur:
        cur.execute(Q.spend_today)
        row = cur.fetchone()
    cap = Decimal(str(settings.llm_daily_budget_usd)) if settings.llm_daily_budget_usd > 0 else None
    return BudgetStatus(row["day"], Decimal(row["spent_usd"]), cap, float(row["day_left_s"]))


def recheck_delay_s(settings: Settings, day_left_s: float) -> float:
    """When a held job looks again: at the next UTC day at the latest, else after the recheck delay."""
    base = min(settings.llm_budget_recheck_s, day_left_s + 1.0)
    return base + random.uniform(0, RECHECK_JITTER * base)


def check(settings: Settings, *, model: str, step: str) -> None:
    """Raise Snooze if today's spend has reached the cap; do nothing when there is no cap."""
    if settings.llm_daily_budget_usd <= 0:
        return
    now = status(settings)
    if not now.exhausted:
        return
    delay = recheck_delay_s(settings, now.day_left_s)
    events.emit(
        "llm_budget_exhausted",
        day=now.day,
        spent_usd=now.spent_usd,
        cap_usd=now.cap_usd,
        delay_s=delay,
        model=model,
        step=step,
    )
    logger.warning(
        "daily LLM budget spent ($%s of $%s on %s): %s waits %.0f s", now.spent_usd, now.cap_usd, now.day, step, delay
    )
    raise Snooze(delay, "budget")
