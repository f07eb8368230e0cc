"""Tokens billed under transient faults (issue 5): 200 jobs without faults, then the same 200 jobs
with 25% of requests faulted, each run on a fresh database and a fresh simulator process. Figure:
total tokens billed as the simulator counts them (input + output + cache reads + cache writes,
from /_sim/stats), faulted run against the clean one.

    .venv/bin/python bench/llm_faults.py [--jobs 200] [--fault-rate 0.25] [--sloppiness 0.3]

``--sloppiness R`` (issue 12) makes the faulted runs' answers also break their schema as real
models do (simulator ``--sloppiness``): repairs are free, corrective requests are not.
``BENCH_DATABASE`` names the database the runs recreate (default roastq_bench_llm).

Two mixes are run: the transient faults that bill nothing (429, 529, 500, dropped and hung
connections), and all transient faults, adding the two the server bills although the answer is
unusable (a truncated body, a tool input that fails validation). A billed unusable answer is paid
whatever the client does; what step memoisation and the response cache remove is paying again
for steps that had succeeded.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import connect, fresh_database, machine, scalar, start_workers, stop_workers, wait_workers_ready  # noqa: E402
from llm_common import SimProcess, billed_tokens, evaluate_all  # noqa: E402

UNBILLED = ("rate_limit", "overloaded", "server_error", "drop", "hang")
BILLED = ("malformed", "bad_tool_input")


def run(jobs: int, fault_rate: float, faults: tuple[str, ...], sloppiness: float = 0.0) -> dict:
    fresh_database(os.environ.get("BENCH_DATABASE", "roastq_bench_llm"))
    conn = connect()
    sim = SimProcess(
        "--seed",
        "11",
        "--fault-rate",
        str(fault_rate),
        "--faults",
        ",".join(faults) or "rate_limit",
        "--hang-s",
        "2",
        "--retry-after",
        "0.5",
        "--latency-ms",
        "20",
        "--jitter-ms",
        "10",
        "--sloppiness",
        str(sloppiness),
    )
    workers = start_workers(
        "actors", processes=1, threads=16, ANTHROPIC_BASE_URL=sim.url, BACKOFF_SCALE="0.02", LLM_CALL_TIMEOUT_S="3"
    )
    try:
        wait_workers_ready(conn, 1)
        ids, elapsed = evaluate_all(conn, jobs)
        stats = sim.get("/_sim/stats")
        requests = sim.get("/_sim/requests")
        completed = scalar(conn, "SELECT count(*) FROM jobs WHERE status = 'COMPLETED'")
        dollars = float(scalar(conn, "SELECT coalesce(sum(price_usd), 0) FROM llm_spend_daily"))
    finally:
        stop_workers(workers)
        sim.stop()
    wasted = sum(_tokens(r) for r in requests if r["kind"] in BILLED)
    corrective = sum(_tokens(r) for r in requests if r.get("error_results") or r.get("stop_reason") == "max_tokens")
    return {
        "requests": stats["requests"],
        "by_kind": stats["by_kind"],
        "tokens_billed": billed_tokens(stats),
        "tokens_billed_for_unusable_answers": wasted,
        "dollars_billed": round(dollars, 4),
        "old_system_would_repay_analysis_tokens": _repaid_without_memo(requests),
        "completed": completed,
        "failed": len(ids) - completed,
        "seconds": round(elapsed, 1),
        "sloppy_answers": sum(1 for r in requests if r.get("sloppy")),
        "tokens_of_corrective_and_cut_requests": corrective,
    }


def _tokens(r: dict) -> int:
    return r["input_tokens"] + r["output_tokens"] + r["cache_read_input_tokens"] + r["cache_creation_input_tokens"]


def _repaid_without_memo(requests: list[dict]) -> int:
    """An estimate of what the old system (no memoisation, no response cache) would have paid again:
    each failed self-critique request reruns the job from its analysis, paid once more (a lower
    bound: that rerun analysis could fail too)."""
    analysis = {r["job_id"]: _tokens(r) for r in requests if r["step"] == "analysis" and r["kind"] == "ok"}
    return sum(analysis.get(r["job_id"], 0) for r in requests if r["step"] == "self_critique" and r["kind"] != "ok")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--fault-rate", type=float, default=0.25)
    p.add_argument("--sloppiness", type=float, default=0.0, help="the faulted runs' simulator sloppiness")
    a = p.parse_args()
    print(f"# {machine()}")
    clean = run(a.jobs, 0.0, ())
    print("no faults:", json.dumps(clean))
    verdict = True
    for name, kinds in (("transient faults that bill nothing", UNBILLED), ("all transient faults", UNBILLED + BILLED)):
        faulted = run(a.jobs, a.fault_rate, kinds, a.sloppiness)
        over = 100 * (faulted["tokens_billed"] - clean["tokens_billed"]) / clean["tokens_billed"]
        repaid = faulted["tokens_billed"] - faulted["tokens_billed_for_unusable_answers"] - clean["tokens_billed"]
        sloppy = f", sloppiness {a.sloppiness}" if a.sloppiness else ""
        print(f"{int(a.fault_rate * 100)}% {name} ({','.join(kinds)}){sloppy}:", json.dumps(faulted))
        print(
            f"  tokens billed: {faulted['tokens_billed']} vs {clean['tokens_billed']} without faults: "
            f"{over:+.2f}% (target <= +5%: {'PASS' if over <= 5 else 'FAIL'}); of which billed for "
            f"unusable answers: {faulted['tokens_billed_for_unusable_answers']}; paid again for work "
            f"already done: {repaid} ({100 * repaid / clean['tokens_billed']:+.2f}%); the old system would "
            f"have paid at least {faulted['old_system_would_repay_analysis_tokens']} more "
            f"({100 * faulted['old_system_would_repay_analysis_tokens'] / clean['tokens_billed']:+.2f}%)"
        )
        verdict = verdict and (over <= 5 or kinds != UNBILLED)
    return 0 if verdict else 1


if __name__ == "__main__":
    raise SystemExit(main())
