"""Shared rate limits under load (issue 5): two worker processes with 50 threads each against the
simulator limited to 60 requests a minute, in its own process. Figures: 429s in the first minute
and after it, and throughput (requests admitted per minute after the first minute) against the limit.

    .venv/bin/python bench/llm_ratelimit.py [--duration 180] [--configured]

By default the limit is not configured: the workers learn it from the first responses' headers
(the first minute may see 429s while they do). ``--configured`` sets LLM_RPM_LIMIT=60 up front.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
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

LIMIT = 60


def run(duration_s: float, configured: bool, jobs: int) -> dict:
    fresh_database("roastq_bench_llm")
    conn = connect()
    sim = SimProcess("--rpm-limit", str(LIMIT), "--seed", "7")
    env = {"ANTHROPIC_BASE_URL": sim.url, "DB_POOL_MAX": "40"}
    if configured:
        env["LLM_RPM_LIMIT"] = str(LIMIT)
    workers = start_workers("actors", processes=2, threads=50, **env)
    try:
        wait_workers_ready(conn, 2)
        from roastq.api import enqueue_evaluations

        agents = sample_agents()
        docs = unique_documents(conn, jobs)
        enqueue_evaluations([(d, agents[i % len(agents)]) for i, d in enumerate(docs)], priority="batch")
        # The clock starts at the first request the simulator sees: whole minutes from there.
        wait_until(lambda: sim.get("/_sim/stats")["requests"] > 0, timeout=60, interval=0.05, what="a request")
        time.sleep(duration_s + 1)
        requests = sim.get("/_sim/requests")
        completed = scalar(conn, "SELECT count(*) FROM jobs WHERE status = 'COMPLETED'")
        snoozes = scalar(conn, "SELECT count(*) FROM job_attempts WHERE outcome = 'snoozed'")
        failed = scalar(conn, "SELECT count(*) FROM jobs WHERE status = 'FAILED'")
    finally:
        stop_workers(workers)
        sim.stop()
    start = min(r["time"] for r in requests)
    end = start + duration_s
    first = [r for r in requests if r["time"] < start + 60]
    after = [r for r in requests if start + 60 <= r["time"] < end]
    admitted_after = [r for r in after if r["status"] != 429]
    minutes_after = (end - start - 60) / 60
    per_min = len(admitted_after) / minutes_after if minutes_after > 0 else float("nan")
    by_minute = []
    for m in range(int(round((end - start) / 60))):
        window = [r for r in requests if start + 60 * m <= r["time"] < min(end, start + 60 * (m + 1))]
        by_minute.append(
            {
                "minute": m + 1,
                "admitted": sum(r["status"] != 429 for r in window),
                "429": sum(r["status"] == 429 for r in window),
            }
        )
    return {
        "mode": "configured LLM_RPM_LIMIT=60" if configured else "limit learned from headers",
        "duration_s": duration_s,
        "429_first_minute": sum(r["status"] == 429 for r in first),
        "429_after_first_minute": sum(r["status"] == 429 for r in after),
        "admitted_per_min_after_first_minute": round(per_min, 1),
        "throughput_pct_of_limit": round(100 * per_min / LIMIT, 1),
        "by_minute": by_minute,
        "jobs_completed": completed,
        "jobs_failed": failed,
        "snoozes": snoozes,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=180.0, help="seconds of load (default 180)")
    p.add_argument("--jobs", type=int, default=400, help="jobs enqueued (more than the limit allows)")
    p.add_argument("--configured", action="store_true", help="configure LLM_RPM_LIMIT=60 instead of learning it")
    a = p.parse_args()
    print(f"# {machine()}")
    result = run(a.duration, a.configured, a.jobs)
    print(json.dumps(result, indent=2))
    ok = result["429_after_first_minute"] == 0 and result["throughput_pct_of_limit"] >= 90
    print(
        f"429 after the first minute: {result['429_after_first_minute']} (target 0); throughput "
        f"{result['admitted_per_min_after_first_minute']}/min = {result['throughput_pct_of_limit']}% "
        f"of {LIMIT} (target >= 90%): {'PASS' if ok else 'FAIL'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
