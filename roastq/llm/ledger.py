"""The cost ledger: every billed response and every cache saving, written as it happens.

``record_billed`` adds one billed response (usable or not: a response that fails validation was
paid for all the same) to its job step in ``job_steps`` and to today's ``llm_spend_daily``, in one
statement. ``record_saved`` does the same for a cache hit, which bills nothing: the step's
``cached`` flag and ``saved_usd``, and today's savings. When the result is saved, each step's
``tasks`` row is read from ``job_steps``, so a step's price is everything it cost over all of the
job's attempts, counted once, and ``jobs.price_usd`` is the sum of its tasks.
"""

from __future__ import annotations

from decimal import Decimal

from roastq import db
from roastq.llm.pricing import Usage
from roastq.sql import load_queries

Q = load_queries("llm.sql", __package__)


def record_billed(*, job_id: str | None, step: str, model: str, usage: Usage, price_usd: Decimal) -> None:
    with db.transaction() as cur:
        cur.execute(
            Q.ledger_billed,
            {
                "job_id": job_id,
                "step": step,
                "model": model,
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cache_read_tokens": usage.cache_read_tokens,
                "cache_write_tokens": usage.cache_write_tokens,
                "price_usd": price_usd,
            },
        )


def record_saved(*, job_id: str | None, step: str, model: str, saved_usd: Decimal, cur) -> None:
    """In the caller's transaction: the cache lookup that found the hit."""
    cur.execute(Q.ledger_saved, {"job_id": job_id, "step": step, "model": model, "saved_usd": saved_usd})


def step_ledger(job_id: str, cur) -> dict[str, dict]:
    """The job's steps, by name: tokens, price, cached, saved (in the caller's transaction)."""
    cur.execute(Q.step_ledger, {"job_id": job_id})
    return {row["step"]: dict(row) for row in cur.fetchall()}
