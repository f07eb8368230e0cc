"""Broker benchmarks (issue 6): (a) enqueue rate, (b) drain of no-op jobs through our full stack
and through stock dramatiq-pg, side by side, (c) idle send-to-start latency, (e) an interactive
job behind a batch backlog.

    .venv/bin/python bench/bench_broker.py [--drain N] [--processes P] [--threads T]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    connect,
    fresh_database,
    machine,
    percentile,
    scalar,
    seed_minimal,
    start_workers,
    stop_workers,
    wait_until,
    wait_workers_ready,
)


def make_jobs(conn, actor, n: int, doc: str, agent: str) -> list[str]:
    """n job rows and their messages for a bench actor, in one transaction."""
    from roastq import db

    with db.transaction() as cur:
        cur.execute(
            "INSERT INTO evaluations (document_id, agent_id) VALUES (%s, %s) "
            "ON CONFLICT (document_id, agent_id) DO UPDATE SET agent_id = EXCLUDED.agent_id RETURNING id",
            (doc, agent),
        )
        evaluation = cur.fetchone()["id"]
        ids = [str(uuid.uuid4()) for _ in range(n)]
        messages = [actor.message(i) for i in ids]
        cur.execute(
            "INSERT INTO jobs (id, evaluation_id, document_version_id, agent_version_id, queue, message_id) "
            "SELECT j, %(e)s, (SELECT id FROM document_versions WHERE document_id = %(d)s), "
            "(SELECT id FROM agent_versions WHERE agent_id = %(a)s), %(q)s, m "
            "FROM unnest(%(ids)s::uuid[], %(mids)s::uuid[]) AS t(j, m)",
            {
                "e": evaluation,
                "d": doc,
                "a": agent,
                "q": actor.queue_name,
                "ids": ids,
                "mids": [m.message_id for m in messages],
            },
        )
        actor.broker.enqueue_many_on(cur, messages)
    return ids


def bench_enqueue(doc: str, agent: str, n_single: int = 300, n_batch: int = 3000) -> dict:
    """(a) enqueue_evaluation one at a time vs enqueue_evaluations in batches of 500."""
    from roastq.api import enqueue_evaluation, enqueue_evaluations

    started = time.perf_counter()
    for _ in range(n_single):
        enqueue_evaluation(doc, agent, priority="batch")
    single = n_single / (time.perf_counter() - started)
    started = time.perf_counter()
    for _ in range(n_batch // 500):
        enqueue_evaluations([(doc, agent)] * 500)
    batched = n_batch / (time.perf_counter() - started)
    return {"single_per_s": round(single), "batched_per_s": round(batched), "ratio": round(batched / single, 1)}


def clear_queue(conn) -> None:
    with conn.cursor() as cur:
        cur.execute("TRUNCATE dramatiq.queue, job_attempts, jobs CASCADE")


def bench_drain_ours(conn, doc, agent, n, processes, threads) -> float:
    from noop_actors import noop_job

    clear_queue(conn)
    make_jobs(conn, noop_job, n, doc, agent)
    workers = start_workers("noop_actors", processes=processes, threads=threads)
    try:
        # From the first job's start to the last job's completion, by the database's clock.
        wait_until(
            lambda: scalar(conn, "SELECT count(*) FROM jobs WHERE status = 'COMPLETED'") >= n,
            timeout=600,
            interval=0.2,
            what="our drain",
        )
        span = scalar(conn, "SELECT EXTRACT(EPOCH FROM max(completed_at) - min(started_at)) FROM jobs")
    finally:
        stop_workers(workers)
    return n / float(span)


def bench_drain_stock(conn, n, processes, threads, *, module="stock_actors", actor="noop") -> float:
    """Drain n plain no-op messages (no job rows) through `module`'s broker."""
    import dramatiq

    clear_queue(conn)
    message = dramatiq.Message(queue_name="bench", actor_name=actor, args=(0,), kwargs={}, options={})
    from roastq import db

    msgs = [message.copy(message_id=str(uuid.uuid4())) for _ in range(n)]
    with db.transaction() as cur:
        cur.execute(
            db.Q.enqueue_messages,
            {
                "queues": ["bench"] * n,
                "message_ids": [m.message_id for m in msgs],
                "messages": [m.encode().decode() for m in msgs],
            },
        )
    workers = start_workers(module, processes=processes, threads=threads)
    try:
        first = wait_until(
            lambda: scalar(conn, "SELECT count(*) FROM dramatiq.queue WHERE state <> 'queued'") > 0,
            timeout=120,
            interval=0.005,
            what=f"{module} start",
        )
        done, last_change, last = 0, time.monotonic(), first
        while done < n:
            time.sleep(0.05)
            now_done = scalar(conn, "SELECT count(*) FROM dramatiq.queue WHERE state = 'done'")
            if now_done != done:
                done, last_change, last = now_done, time.monotonic(), time.monotonic()
            elif time.monotonic() - last_change > 20:
                # Stock loses acks when its fixed pool of 16 runs out (dramatiq-pg defect 2, docs/architecture.md).
                print(
                    f"    stock stalled: {done} of {n} done, no progress for 20 s "
                    f"(see .roastq/bench/stock_actors.log for 'connection pool exhausted')",
                    flush=True,
                )
                break
    finally:
        stop_workers(workers)
    return done / (last - first)


def bench_latency(conn, doc, agent, samples: int = 200) -> dict:
    """(c) idle workers: enqueue one interactive job, wait for it to start, repeat."""
    from noop_actors import noop_job_interactive

    clear_queue(conn)
    workers = start_workers("noop_actors", processes=1, threads=8)
    try:
        wait_workers_ready(conn, 1)
        latencies = []
        for _ in range(samples):
            (job_id,) = make_jobs(conn, noop_job_interactive, 1, doc, agent)
            wait_until(
                lambda: scalar(conn, "SELECT status FROM jobs WHERE id = %s", job_id) == "COMPLETED",
                timeout=10,
                interval=0.001,
                what="a job",
            )
            latencies.append(
                float(
                    scalar(conn, "SELECT EXTRACT(EPOCH FROM started_at - created_at) FROM jobs WHERE id = %s", job_id)
                )
                * 1000
            )
            time.sleep(0.02)  # idle again
    finally:
        stop_workers(workers)
    return {
        "p50_ms": round(percentile(latencies, 0.5), 2),
        "p99_ms": round(percentile(latencies, 0.99), 2),
        "samples": samples,
    }


def bench_priority(conn, doc, agent, backlog: int = 1000) -> dict:
    """(e) an interactive job enqueued behind `backlog` batch jobs (each 50 ms of I/O)."""
    from noop_actors import io_job, noop_job_interactive

    clear_queue(conn)
    workers = start_workers("noop_actors", processes=1, threads=8, BENCH_IO_WAIT_S="0.05")
    try:
        wait_workers_ready(conn, 1)
        make_jobs(conn, io_job, backlog, doc, agent)
        time.sleep(1.0)  # the backlog is being worked on
        (job_id,) = make_jobs(conn, noop_job_interactive, 1, doc, agent)
        wait_until(
            lambda: scalar(conn, "SELECT status FROM jobs WHERE id = %s", job_id) == "COMPLETED",
            timeout=120,
            interval=0.005,
            what="the interactive job",
        )
        wait_s = scalar(conn, "SELECT EXTRACT(EPOCH FROM started_at - created_at) FROM jobs WHERE id = %s", job_id)
        left = scalar(conn, "SELECT count(*) FROM jobs WHERE status = 'PENDING'")
    finally:
        stop_workers(workers)
    return {"interactive_wait_s": round(float(wait_s), 3), "batch_jobs_still_waiting": left}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--drain", type=int, default=5000)
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()

    fresh_database()
    conn = connect()
    (doc,), agent = seed_minimal(conn)
    results = {"machine": machine()}
    print(f"# roastq broker benchmarks on {results['machine']}", flush=True)

    results["a_enqueue"] = bench_enqueue(doc, agent)
    print("(a) enqueue:", json.dumps(results["a_enqueue"]), flush=True)

    ours = stock = plain = 1.0
    if args.drain:
        ours = bench_drain_ours(conn, doc, agent, args.drain, args.processes, args.threads)
        stock = bench_drain_stock(conn, args.drain, args.processes, args.threads)
        plain = bench_drain_stock(
            conn, args.drain, args.processes, args.threads, module="noop_actors", actor="noop_plain"
        )
    results["b_drain"] = {
        "jobs": args.drain,
        "processes": args.processes,
        "threads": args.threads,
        "ours_per_s": round(ours),
        "stock_per_s": round(stock),
        "ratio": round(ours / stock, 2),
        "our_broker_without_job_bookkeeping_per_s": round(plain),
    }
    print("(b) drain:", json.dumps(results["b_drain"]), flush=True)

    results["c_latency"] = bench_latency(conn, doc, agent)
    print("(c) send-to-start latency:", json.dumps(results["c_latency"]), flush=True)

    results["e_priority"] = bench_priority(conn, doc, agent)
    print("(e) interactive behind 1,000 batch jobs:", json.dumps(results["e_priority"]), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
