"""``roastq demo`` (``make demo``): seed, run ~40 evaluations through the stack (a few of them
through the batch lane), report, stop."""

from __future__ import annotations

import itertools
import os
import sys
import time
from datetime import timedelta

from roastq import db, jobs
from roastq.db import Q
from roastq.settings import get_settings

FINISHED = tuple(str(s) for s in jobs.FINISHED)


def progress_bar(done: int, total: int, counts: dict, width: int = 30) -> str:
    filled = int(width * done / total) if total else width
    detail = "  ".join(f"{k.lower()} {v}" for k, v in sorted(counts.items()))
    return f"[{'#' * filled}{'.' * (width - filled)}] {done}/{total}  {detail}"


def job_statuses(job_ids: list[str]) -> dict[str, int]:
    with db.transaction() as cur:
        cur.execute(
            "SELECT status, count(*) AS n FROM jobs WHERE id = ANY(%(ids)s::uuid[]) GROUP BY status", {"ids": job_ids}
        )
        return {r["status"]: r["n"] for r in cur.fetchall()}


def wait_for(job_ids: list[str], *, timeout_s: float, show: bool = True) -> dict[str, int]:
    """Wait until every job is finished, drawing a progress bar; return counts by status."""
    deadline = time.monotonic() + timeout_s
    tty = sys.stderr.isatty()
    last = ""
    while True:
        counts = job_statuses(job_ids)
        done = sum(counts.get(s, 0) for s in FINISHED)
        line = progress_bar(done, len(job_ids), counts)
        if show and line != last:
            print(("\r" + line) if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)
            last = line
        if done == len(job_ids) or time.monotonic() > deadline:
            if show and tty:
                print(file=sys.stderr)
            return counts
        time.sleep(0.5)


def revise_agent() -> str:
    """A new version of the first bundled agent with self-critique, its instructions revised;
    return the agent's id."""
    with db.transaction() as cur:
        cur.execute("""
            INSERT INTO agent_versions (agent_id, version, name, description, primary_instructions,
                                        self_critique_instructions, provides_grades, time_limit_s)
            SELECT agent_id, version + 1, name, description,
                   primary_instructions || E'\n\nRevised: be stricter about unsupported claims.',
                   self_critique_instructions, provides_grades, time_limit_s
            FROM agent_versions av
            WHERE self_critique_instructions IS NOT NULL
              AND version = (SELECT max(version) FROM agent_versions WHERE agent_id = av.agent_id)
            ORDER BY name LIMIT 1
            RETURNING agent_id""")
        return str(cur.fetchone()["agent_id"])


def report(job_ids: list[str]) -> dict:
    with db.transaction() as cur:
        cur.execute(Q.report, {"job_ids": job_ids})
        summary = dict(cur.fetchone())
        cur.execute(Q.report_tokens, {"job_ids": job_ids})
        summary.update(cur.fetchone())
        cur.execute(Q.report_repaired, {"job_ids": job_ids})
        summary.update(cur.fetchone())
        cur.execute(Q.report_repairs, {"job_ids": job_ids})
        summary["repairs"] = {r["kind"]: r["n"] for r in cur.fetchall()}
    summary["by_status"] = job_statuses(job_ids)
    with db.transaction() as cur:  # the batch lane's part (roastq/llm/batch.py)
        cur.execute(
            "SELECT count(DISTINCT r.job_id) AS jobs, count(DISTINCT r.batch_id) AS batches, "
            "coalesce(sum(r.price_usd) FILTER (WHERE r.billed), 0) AS billed_usd, "
            "coalesce(sum(r.saved_usd) FILTER (WHERE r.billed), 0) AS saved_usd "
            "FROM llm_batch_requests r WHERE r.job_id = ANY(%(ids)s::uuid[])",
            {"ids": job_ids},
        )
        summary["lane"] = dict(cur.fetchone())
    return summary


def print_report(summary: dict) -> None:
    p50, p95 = summary["p50_s"], summary["p95_s"]
    print("\nroastq demo report")
    print("  jobs by status: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["by_status"].items())))
    print(f"  attempts:       {summary['attempts']} for {summary['jobs']} jobs")
    print(
        f"  tokens:         {summary['input_tokens']} input, {summary['output_tokens']} output, "
        f"{summary['cache_read_tokens']} cache read, {summary['cache_write_tokens']} cache write"
    )
    print(f"  dollars:        ${summary['price_usd']:.4f}")
    if "repaired" in summary:
        kinds = ", ".join(f"{k} {n}" for k, n in summary["repairs"].items()) or "none"
        print(
            f"  answers:        {summary['repaired']} of {summary['evaluations']} evaluations had answers "
            f"repaired; repairs by kind: {kinds}"
        )
    if p50 is not None:
        print(f"  job duration:   p50 {p50:.2f} s, p95 {p95:.2f} s (enqueue to done)")
    lane = summary.get("lane")
    full = (lane["billed_usd"] + lane["saved_usd"]) if lane else 0
    if lane and lane["jobs"] and full:
        print(
            f"  batch lane:     {lane['jobs']} evaluation(s) through {lane['batches']} Message Batch(es): billed "
            f"${lane['billed_usd']:.4f} instead of ${full:.4f} real-time (saved ${lane['saved_usd']:.4f}, "
            f"{lane['saved_usd'] / full:.0%})"
        )


def run_demo(*, jobs: int = 40, lane_jobs: int = 6, processes: int = 2, threads: int = 8) -> int:
    from roastq.api import enqueue_evaluation
    from roastq.cli.stack import stack
    from roastq.evaluation.seed import seed

    settings = get_settings()
    db.migrate()
    seeded = seed()
    print(f"seeded {len(seeded.documents)} documents and {len(seeded.agents)} agents", file=sys.stderr)
    log = settings.home / "logs" / "worker.log"
    # The batch lane at demo speed: the simulator's batches end after 2 s; the workers gather
    # requests for 2 s and poll every second (a real deployment waits a minute and polls slower).
    for name, value in (("LLM_BATCH_MAX_WAIT_S", "2"), ("LLM_BATCH_POLL_S", "1"), ("LLM_BATCH_POLL_MAX_S", "2")):
        os.environ.setdefault(name, value)
    with stack(processes=processes, threads=threads, worker_log=log):
        lane_n = min(lane_jobs, jobs // 5, len(seeded.documents))  # of the `jobs`, this many use the lane
        pairs = list(
            itertools.islice(
                itertools.cycle(itertools.product(seeded.documents.values(), seeded.agents.values())), jobs - lane_n
            )
        )
        # Batch jobs due within 30 minutes run real-time (no room for the lane).
        job_ids = [
            enqueue_evaluation(
                doc,
                agent,
                priority="batch" if n % 4 else "interactive",
                deadline=timedelta(minutes=30) if n % 4 else None,
            )
            for n, (doc, agent) in enumerate(pairs)
        ]
        # Then an agent's instructions change, and its re-grade of every document, due in 12
        # hours, goes through the batch lane at half the price.
        agent = revise_agent() if lane_n else None
        job_ids += [
            enqueue_evaluation(doc, agent, priority="batch", deadline=timedelta(hours=12))
            for doc in list(seeded.documents.values())[:lane_n]
        ]
        print(
            f"enqueued {len(job_ids)} evaluations (worker logs: {log}; metrics while it runs: "
            f"http://{settings.metrics_host}:{settings.metrics_port}/metrics, or keep them up with `roastq up`)",
            file=sys.stderr,
        )
        counts = wait_for(job_ids, timeout_s=600)
    summary = report(job_ids)
    print_report(summary)
    unfinished = len(job_ids) - sum(counts.get(s, 0) for s in FINISHED)
    if unfinished:
        print(f"error: {unfinished} jobs did not finish in time", file=sys.stderr)
        return 1
    return 0
