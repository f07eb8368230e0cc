"""``roastq demo`` (``make demo``): seed, run ~40 evaluations through the stack, report, stop."""

from __future__ import annotations

import itertools
import sys
import time

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
        cur.execute("SELECT status, count(*) AS n FROM jobs WHERE id = ANY(%(ids)s::uuid[]) GROUP BY status",
                    {"ids": job_ids})
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
    return summary


def print_report(summary: dict) -> None:
    p50, p95 = summary["p50_s"], summary["p95_s"]
    print("\nroastq demo report")
    print(f"  jobs by status: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["by_status"].items())))
    print(f"  attempts:       {summary['attempts']} for {summary['jobs']} jobs")
    print(f"  tokens:         {summary['input_tokens']} input, {summary['output_tokens']} output, "
          f"{summary['cache_read_tokens']} cache read, {summary['cache_write_tokens']} cache write")
    print(f"  dollars:        ${summary['price_usd']:.4f}")
    if "repaired" in summary:
        kinds = ", ".join(f"{k} {n}" for k, n in summary["repairs"].items()) or "none"
        print(f"  answers:        {summary['repaired']} of {summary['evaluations']} evaluations had answers "
              f"repaired; repairs by kind: {kinds}")
    if p50 is not None:
        print(f"  job duration:   p50 {p50:.2f} s, p95 {p95:.2f} s (enqueue to done)")


def run_demo(*, jobs: int = 40, processes: int = 2, threads: int = 8) -> int:
    from roastq.api import enqueue_evaluation
    from roastq.evaluation.seed import seed
    from roastq.cli.stack import stack

    settings = get_settings()
    db.migrate()
    seeded = seed()
    print(f"seeded {len(seeded.documents)} documents and {len(seeded.agents)} agents", file=sys.stderr)
    log = settings.home / "logs" / "worker.log"
    with stack(processes=processes, threads=threads, worker_log=log):
        pairs = itertools.islice(itertools.cycle(itertools.product(seeded.documents.values(),
                                                                   seeded.agents.values())), jobs)
        job_ids = [
            enqueue_evaluation(doc, agent, priority="batch" if n % 4 else "interactive")
            for n, (doc, agent) in enumerate(pairs)
        ]
        print(f"enqueued {len(job_ids)} evaluations (worker logs: {log}; metrics while it runs: "
              f"http://{settings.metrics_host}:{settings.metrics_port}/metrics, or keep them up with `roastq up`)",
              file=sys.stderr)
        counts = wait_for(job_ids, timeout_s=600)
    summary = report(job_ids)
    print_report(summary)
    unfinished = len(job_ids) - sum(counts.get(s, 0) for s in FINISHED)
    if unfinished:
        print(f"error: {unfinished} jobs did not finish in time", file=sys.stderr)
        return 1
    return 0
