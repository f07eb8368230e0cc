"""Step memoisation: each pipeline step's output, stored per job as soon as the step succeeds.

A retry loads the job's finished steps and resumes at the first one without an output: a fault in
the self-critique call re-runs the self-critique call only, never the analysis before it. Outputs
live in ``job_steps`` beside the step's ledger (what it was billed), and are deleted with the job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from decimal import Decimal

import psycopg2.extras

from roastq import db, events
from roastq.llm.pricing import Usage
from roastq.sql import load_queries

logger = logging.getLogger("roastq.llm.memo")

Q = load_queries("llm.sql", __package__)


@dataclass(frozen=True)
class StepOutput:
    step: str
    output: dict
    model: str | None
    usage: Usage  # billed over all attempts so far
    price_usd: Decimal
    cached: bool
    saved_usd: Decimal
    duration_s: float
    request_id: str | None


class StepMemo:
    """The finished steps of one job, loaded once when the attempt starts."""

    def __init__(self, job_id: str):
        self.job_id = job_id
        with db.transaction() as cur:
            cur.execute(Q.memo_load, {"job_id": job_id})
            self._done = {
                r["step"]: StepOutput(
                    step=r["step"],
                    output=r["output"],
                    model=r["model"],
                    usage=Usage(r["input_tokens"], r["output_tokens"], r["cache_read_tokens"], r["cache_write_tokens"]),
                    price_usd=r["price_usd"],
                    cached=r["cached"],
                    saved_usd=r["saved_usd"],
                    duration_s=r["duration_s"],
                    request_id=r["request_id"],
                )
                for r in cur.fetchall()
            }

    def get(self, step: str) -> StepOutput | None:
        done = self._done.get(step)
        if done is not None:
            logger.info("step %s resumed from an earlier attempt", step)
            events.emit("llm_step_memo", step=step, outcome="resumed")
        return done

    def store(
        self,
        step: str,
        output: dict,
        *,
        model: str | None,
        duration_s: float,
        request_id: str | None = None,
        attempt: int | None = None,
    ) -> None:
        with db.transaction() as cur:
            cur.execute(
                Q.memo_store,
                {
                    "job_id": self.job_id,
                    "step": step,
                    "output": psycopg2.extras.Json(output),
                    "model": model,
                    "duration_s": duration_s,
                    "attempt": attempt,
                    "request_id": request_id,
                },
            )
        events.emit("llm_step_memo", step=step, outcome="stored")

    @property
    def steps(self) -> list[str]:
        return sorted(self._done)
