"""The batch lane at half the price (issue 15): the same batch evaluations run through the lane and
real-time, side by side, each on a fresh database and a fresh simulator process.

    .venv/bin/python bench/llm_batch.py [--jobs 500] [--batch-end-s 30] [--error-rate 0.1] [--chaos]

* lane: ``--jobs`` batch-priority jobs with a 6 h deadline; the simulator's batches end after
  ``--batch-end-s`` and ``--error-rate`` of batch requests are errored (overloaded, api_error,
  rate_limit) or expired. With ``--chaos`` the worker pool is SIGKILLed (and restarted) once the
  first batch is submitted and once collection has begun.
* real-time: the same jobs with ``LLM_BATCH_LANE=off``.
* short deadlines: ``--jobs // 5`` batch jobs whose 20-minute deadline leaves no room for the lane.

Figures: jobs completed, none twice (one evaluation version each; no request in two batches
unless its first batch gave it no answer), dollars billed (our ledger, and the simulator's own
billing of batch results), the lane's dollars as a share of real-time's, batches submitted and
the smallest gap between two of a queue, and every short-deadline job done before its deadline.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    connect,
    fresh_database,
    machine,
    scalar,
    start_workers,
    stop_workers,
    wait_until,
    wait_workers_ready,
)
from llm_common import SimProcess, sample_agents, unique_documents  # noqa: E402

MAX_WAIT_S = 15.0
LANE_ENV = dict(
    LLM_BATCH_MAX_WAIT_S=str(MAX_WAIT_S),
    LLM_BATCH_POLL_S="5",
    LLM_BATCH_POLL_MAX_S="30",
    BACKOFF_SCALE="0.02",
    LLM_CALL_TIMEOUT_S="30",
)


def _kill(workers) -> None:
    import os

    os.killpg(workers.pid, signal.SIGKILL)
    workers.wait()


def run(
    jobs: int, *, lane: bool, deadline: timedelta, batch_end_s: float, error_rate: float, chaos: bool = False
) -> dict:
    fresh_database("roastq_bench_batch")
    conn = connect()
    sim = SimProcess("--seed", "15", "--latency-ms", "40", "--jitter-ms", "20")
    sim.post(
        "/_sim/batches/config",
        {
            "end_after_s": batch_end_s,
            "error_rate": error_rate,
            "seed": 15,
            "outcomes": ["expired", "errored:overloaded", "errored:server_error", "errored:rate_limit"],
        },
    )
    env = dict(LANE_ENV, ANTHROPIC_BASE_URL=sim.url, LLM_BATCH_LANE="auto" if lane else "off")
    workers = start_workers("actors", processes=1, threads=16, **env)
    kills = []
    try:
        wait_workers_ready(conn, 1)
        from roastq.api import enqueue_evaluations

        agents = sample_agents()
        docs = unique_documents(conn, jobs)
        started = time.monotonic()
        ids = enqueue_evaluations(
            [(d, agents[i % len(agents)]) for i, d in enumerate(docs)], priority="batch", deadline=deadline
        )

        def finished():
            return scalar(
                conn,
                "SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[]) AND status IN "
                "('COMPLETED', 'FAILED', 'CANCELLED')",
                ids,
            ) == len(ids)

        if chaos and lane:
            for what, sql in (
                ("submission", "SELECT count(*) FROM llm_batches"),
                ("collection", "SELECT count(*) FROM llm_batch_requests WHERE state = 'succeeded'"),
            ):
                wait_until(lambda: scalar(conn, sql) > 0, timeout=600, interval=0.05, what=f"the first {what}")
                _kill(workers)
                kills.append(dict(during=what, at_s=round(time.monotonic() - started, 1)))
                workers = start_workers("actors", processes=1, threads=16, **env)
                wait_workers_ready(conn, 1)
        wait_until(finished, timeout=1800, interval=0.5, what="the jobs to finish")
        elapsed = time.monotonic() - started
        stats = sim.get("/_sim/stats")
        batch_stats = sim.get("/_sim/batches/stats")
        out = {
            "jobs": len(ids),
            "seconds": round(elapsed, 1),
            "kills": kills,
            "completed": scalar(
                conn, "SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[]) AND status = 'COMPLETED'", ids
            ),
            "evaluation_versions": scalar(
                conn, "SELECT count(*) FROM evaluation_versions WHERE job_id = ANY(%s::uuid[])", ids
            ),
            "met_deadline": scalar(
                conn, "SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[]) AND completed_at <= deadline", ids
            ),
            "dollars_ledger": float(scalar(conn, "SELECT coalesce(sum(price_usd), 0) FROM llm_spend_daily")),
            "dollars_tasks": float(
                scalar(conn, "SELECT coalesce(sum(price_usd), 0) FROM jobs WHERE id = ANY(%s::uuid[])", ids)
            ),
            "realtime_requests": stats["requests"],
            "batches": batch_stats.get("batches", 0),
            "batch_requests": batch_stats.get("requests", 0),
            "batch_results": {k[8:]: v for k, v in batch_stats.items() if k.startswith("results_")},
            "simulator_billed_batch_usd": float(batch_stats["billed_usd"]),
        }
        if lane:
            out.update(_lane_checks(conn))
    finally:
        stop_workers(workers)
        sim.stop()
    return out


def _lane_checks(conn) -> dict:
    with conn.cursor() as cur:
        # A request's batches: every earlier one must have given it no answer (expired, canceled, missing).
        cur.execute(
            "SELECT count(*) FROM llm_batch_requests WHERE EXISTS (SELECT 1 FROM "
            "jsonb_array_elements(history) h WHERE h->>'result' NOT IN ('expired', 'canceled', 'missing'))"
        )
        twice = cur.fetchone()[0]
        cur.execute("SELECT coalesce(sum(submissions), 0), count(*) FROM llm_batch_requests")
        submissions, requests = cur.fetchone()
        cur.execute(
            "SELECT queue, min(gap) FROM (SELECT queue, EXTRACT(EPOCH FROM created_at - lag(created_at) "
            "OVER (PARTITION BY queue ORDER BY created_at)) AS gap FROM llm_batches) g GROUP BY queue"
        )
        gaps = {q: (round(float(g), 1) if g is not None else None) for q, g in cur.fetchall()}
        cur.execute("SELECT state, count(*) FROM llm_batch_requests GROUP BY state ORDER BY state")
        states = dict(cur.fetchall())
        cur.execute("SELECT count(*) FROM llm_batches WHERE adopted")
        adopted = cur.fetchone()[0]
        cur.execute("SELECT coalesce(sum(saved_usd), 0) FROM llm_batch_requests WHERE billed")
        saved = float(cur.fetchone()[0])
    return {
        "lane_requests": requests,
        "lane_submissions": int(submissions),
        "requests_in_two_batches_wrongly": twice,
        "min_gap_between_batches_s": gaps,
        "lane_states": states,
        "batches_adopted": adopted,
        "saved_usd": round(saved, 4),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=500)
    p.add_argument("--batch-end-s", type=float, default=30.0)
    p.add_argument("--error-rate", type=float, default=0.1)
    p.add_argument("--chaos", action="store_true", help="SIGKILL the worker pool during submission and collection")
    a = p.parse_args()
    print(f"# {machine()}")
    print(
        f"# {a.jobs} batch jobs; batches end after {a.batch_end_s} s; {a.error_rate:.0%} of batch requests "
        f"errored or expired; LLM_BATCH_MAX_WAIT_S={MAX_WAIT_S}",
        flush=True,
    )
    lane = run(
        a.jobs,
        lane=True,
        deadline=timedelta(hours=6),
        batch_end_s=a.batch_end_s,
        error_rate=a.error_rate,
        chaos=a.chaos,
    )
    print("lane:      " + json.dumps(lane), flush=True)
    realtime = run(a.jobs, lane=False, deadline=timedelta(hours=6), batch_end_s=a.batch_end_s, error_rate=0.0)
    print("real-time: " + json.dumps(realtime), flush=True)
    short = run(
        max(1, a.jobs // 5),
        lane=True,
        deadline=timedelta(minutes=20),
        batch_end_s=a.batch_end_s,
        error_rate=a.error_rate,
    )
    print("short deadlines (lane on, 20 min): " + json.dumps(short), flush=True)
    ratio = lane["dollars_ledger"] / realtime["dollars_ledger"]
    checks = {
        "every lane job COMPLETED once": lane["completed"] == lane["evaluation_versions"] == lane["jobs"],
        "no request in two batches wrongly": lane["requests_in_two_batches_wrongly"] == 0,
        "lane dollars <= 52% of real-time": ratio <= 0.52,
        "ledger agrees with the simulator's batch billing": abs(
            lane["dollars_ledger"] - lane["simulator_billed_batch_usd"]
        )
        < 0.01,
        f"batches at least {MAX_WAIT_S:.0f} s apart per queue": all(
            g is None or g >= MAX_WAIT_S - 0.5 for g in lane["min_gap_between_batches_s"].values()
        ),
        "short-deadline jobs ran real-time and met their deadline": short["batches"] == 0
        and short["met_deadline"] == short["completed"] == short["jobs"],
    }
    print(
        f"lane dollars / real-time dollars: {ratio:.3f} (${lane['dollars_ledger']:.4f} / "
        f"${realtime['dollars_ledger']:.4f}); saved ${lane['saved_usd']:.4f}"
    )
    print(
        f"lane: {lane['batches']} batches, {lane['batch_requests']} batch requests for {lane['lane_requests']} "
        f"steps; {lane['seconds']} s to finish (real-time: {realtime['seconds']} s)"
    )
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'} {name}")
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
