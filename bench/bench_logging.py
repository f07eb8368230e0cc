"""Cost of a job's log lines at the default INFO level (issue 14, item 2).

Each of ``--threads`` threads runs ``--jobs`` fake jobs: a JobContext is published, the two INFO
lines every job logs ("job started ...", "job completed") go through JobState's own logger
(``middleware.jobs.logger``, a HotLogger: each line built as its JSON object directly) into the
JSON writer and the per-job buffer, and the buffer is taken as JobLogs does. Beside it, in turn,
the same lines through a stdlib logger intercepted into loguru (how JobState logged before, and
how every other library's lines arrive). stderr is a pipe drained by a thread, as in a dramatiq worker. The same run at
WARNING (the lines are not built at all) gives the floor; the difference is what the lines cost.

    .venv/bin/python bench/bench_logging.py [--threads 10] [--jobs 5000]
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def run(level: str, threads: int, jobs: int, via: str = "jobstate") -> tuple[float, float]:
    """(CPU seconds of the process, wall seconds) for threads x jobs fake jobs."""
    import observability.logging as olog
    from middleware.jobs import logger as jobstate_logger
    from roastq.jobctx import JobContext, current_job

    olog._done = False
    olog.setup_logging(level=level, fmt="json")
    log = jobstate_logger if via == "jobstate" else logging.getLogger("roastq.jobs")

    def worker(n: int):
        for i in range(jobs):
            ctx = JobContext(
                job_id=f"{n}-{i}",
                message_id="m",
                actor="evaluate_document",
                queue="batch",
                attempt=1,
                evaluation_id="e",
                agent_id="a",
            )
            token = current_job.set(ctx)
            log.info("job started: attempt %d, time limit %d s", 1, 240)
            log.info("job completed")
            olog.take_job_lines(ctx.job_id)
            current_job.reset(token)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    getattr(olog, "flush_logs", lambda: None)()
    started, cpu = time.perf_counter(), time.process_time()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    getattr(olog, "flush_logs", lambda: None)()
    return time.process_time() - cpu, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    read_end, write_end = os.pipe()
    real_stderr = os.dup(2)
    os.dup2(write_end, 2)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    threading.Thread(target=lambda: [None for _ in iter(lambda: os.read(read_end, 1 << 16), b"")], daemon=True).start()
    variants = {"WARNING": ("WARNING", "jobstate"), "INFO": ("INFO", "jobstate"), "stdlib": ("INFO", "stdlib")}
    results = {name: [] for name in variants}
    for _ in range(args.reps):
        for name, (level, via) in variants.items():
            results[name].append(run(level, args.threads, args.jobs, via))
    out = os.fdopen(real_stderr, "w")
    n = args.threads * args.jobs

    def med(level, i):
        values = sorted(r[i] for r in results[level])
        return values[len(values) // 2] / n * 1e6

    print(
        f"# {n} fake jobs on {args.threads} threads, medians of {args.reps}; load {os.getloadavg()[0]:.1f}; "
        f"CPU = the process's CPU time (all threads, the pipe's reader included), the figure that the "
        f"machine's load disturbs least",
        file=out,
    )
    print(
        f"WARNING (lines not built): {med('WARNING', 0):7.1f} us CPU a job, {med('WARNING', 1):7.1f} us wall", file=out
    )
    print(f"INFO (2 lines a job):      {med('INFO', 0):7.1f} us CPU a job, {med('INFO', 1):7.1f} us wall", file=out)
    print(
        f"INFO through stdlib:       {med('stdlib', 0):7.1f} us CPU a job, {med('stdlib', 1):7.1f} us wall"
        "   (the lines as a stdlib logger sends them, intercepted into loguru)",
        file=out,
    )
    lines, std = med("INFO", 0) - med("WARNING", 0), med("stdlib", 0) - med("WARNING", 0)
    print(
        f"the two lines cost:        {lines:7.1f} us CPU a job, {med('INFO', 1) - med('WARNING', 1):7.1f} us wall;"
        f" through stdlib {std:.1f} us CPU (ratio {lines / std:.2f})",
        file=out,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
