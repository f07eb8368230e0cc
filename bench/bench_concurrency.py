"""Concurrency benchmarks (issue 6): (d) 600 jobs that each wait 1 s on I/O, at 100 and at 500 in
flight, against the ideal; (f) resident memory of a worker process at 100 threads.

Model: many threads a process (I/O-bound LLM calls release the GIL); Postgres connections are
bounded by DB_POOL_MAX a process and shared by its threads.

    .venv/bin/python bench/bench_concurrency.py [--jobs 600] [--wait 1.0]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    connect,
    fresh_database,
    machine,
    scalar,
    seed_minimal,
    start_workers,
    stop_workers,
    wait_until,
    wait_workers_ready,
)
from bench_broker import clear_queue, make_jobs  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(conn, doc, agent, *, jobs: int, in_flight: int, processes: int, wait_s: float) -> dict:
    from noop_actors import io_job

    clear_queue(conn)
    threads = in_flight // processes
    workers = start_workers("noop_actors", processes=processes, threads=threads, BENCH_IO_WAIT_S=wait_s)
    try:
        wait_workers_ready(conn, processes)
        make_jobs(conn, io_job, jobs, doc, agent)
        wait_until(
            lambda: scalar(conn, "SELECT count(*) FROM jobs WHERE status = 'COMPLETED'") >= jobs,
            timeout=300,
            interval=0.1,
            what="the I/O jobs",
        )
        span = float(scalar(conn, "SELECT EXTRACT(EPOCH FROM max(completed_at) - min(started_at)) FROM jobs"))
        with conn.cursor() as cur:  # worker processes only (not the exporter fork)
            cur.execute("SELECT pid FROM worker_heartbeats")
            rss = [round(rss_mb(pid), 1) for (pid,) in cur.fetchall()]
    finally:
        stop_workers(workers)
    ideal_span = math.ceil(jobs / in_flight) * wait_s  # whole rounds of `in_flight` jobs
    return {
        "in_flight": in_flight,
        "processes": processes,
        "threads_per_process": threads,
        "jobs_per_s": round(jobs / span, 1),
        "ideal_jobs_per_s": round(jobs / ideal_span, 1),
        "of_ideal": round(ideal_span / span, 3),
        "rss_mb_per_process": rss,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--wait", type=float, default=1.0)
    args = parser.parse_args()

    fresh_database()
    conn = connect()
    (doc,), agent = seed_minimal(conn)
    print(f"# roastq concurrency benchmarks on {machine()}", flush=True)
    for in_flight, processes in ((100, 1), (500, 1)):
        result = run(conn, doc, agent, jobs=args.jobs, in_flight=in_flight, processes=processes, wait_s=args.wait)
        print(f"(d) {args.jobs} jobs x {args.wait} s I/O:", json.dumps(result), flush=True)
        if in_flight == 100:
            print(
                f"(f) resident memory, 1 worker process x 100 threads, after the run: "
                f"{result['rss_mb_per_process']} MB",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
