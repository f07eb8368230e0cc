"""Where the ceiling is (issue 8): offered load in steps until the broker saturates, Postgres and
RabbitMQ in the same run, on this machine.

Two kinds of load, each in rising steps of messages a second for ``--seconds`` a step:

* ``plain``: a no-op actor, no job row: the message path alone (send, deliver, ack). Each tick's
  messages go in one transaction: rows of ``dramatiq.queue`` (Postgres), or one AMQP transaction
  of persistent messages (RabbitMQ, as the outbox relay publishes).
* ``jobs``: roastq's whole path for a job that does no LLM work: job row + message in one
  transaction (RabbitMQ: + the outbox relay), JobState's start, the result transaction, the ack.

A step "keeps up" when the rate achieved is at least 90 % of the rate offered and the p99
send-to-start latency stays under a second; the broker saturates at the first step that does
not. Workers: ``dramatiq`` with ``--processes``/``--threads`` (default 2 x 8: this machine's 2
cores); the load generator, Postgres and RabbitMQ share the machine, as they would on one host.

    .venv/bin/python bench/bench_scaling.py [--steps 100,200,...] [--seconds 6] [--brokers postgres,rabbitmq]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
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
    wait_workers_ready,
)

STEPS = (100, 200, 400, 800, 1600, 3200, 6400)
KEEP_UP = 0.9  # achieved / offered
LATENCY_LIMIT_MS = 1000.0  # p99 send-to-start
TICK_S = 0.02
RABBITMQ = os.environ.get("BENCH_RABBITMQ", "amqp://guest:guest@127.0.0.1:5672/roastq_bench")


# -- one broker (a child process: the broker is chosen when `actors` is imported) --------------


def rabbitmq_vhost() -> None:
    vhost = RABBITMQ.rsplit("/", 1)[1]
    subprocess.run(["rabbitmqctl", "-q", "add_vhost", vhost], capture_output=True, timeout=60)
    subprocess.run(
        ["rabbitmqctl", "-q", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
        check=True,
        capture_output=True,
        timeout=60,
    )


def send_plain(broker, n: int) -> None:
    """n messages in one go: one Postgres transaction, or one AMQP transaction."""
    from scaling_actors import stamp

    from roastq import db
    from roastq.brokers import is_rabbitmq

    now_ms = time.time() * 1000
    messages = [stamp.message(now_ms) for _ in range(n)]
    if is_rabbitmq(broker):
        broker.publish_many([(m.queue_name, m.encode()) for m in messages])
    else:
        with db.transaction() as cur:
            broker.enqueue_many_on(cur, messages)


def offer(send, rate: int, seconds: float) -> tuple[float, float, int]:
    """Send at ``rate`` a second for ``seconds``; return (t0, t1, sent)."""
    t0 = time.time()
    sent = 0
    while (now := time.time()) < t0 + seconds:
        due = int(rate * (now - t0)) - sent
        if due > 0:
            send(min(due, max(1, rate // 5)))  # a late producer catches up in bounded batches
            sent += min(due, max(1, rate // 5))
        else:
            time.sleep(TICK_S)
    return t0, time.time(), sent


def stamps(stamp_dir: str) -> list[tuple[float, float]]:
    found = []
    for path in glob.glob(os.path.join(stamp_dir, "*.log")):
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2:
                    found.append((float(parts[0]), float(parts[1])))
    return found


def step_plain(broker, stamp_dir: str, rate: int, seconds: float, drain_s: float) -> dict:
    before = len(stamps(stamp_dir))
    t0, t1, sent = offer(lambda n: send_plain(broker, n), rate, seconds)
    deadline = time.monotonic() + drain_s
    while len(stamps(stamp_dir)) - before < sent and time.monotonic() < deadline:
        time.sleep(0.1)
    seen = stamps(stamp_dir)
    window = [(s, b) for s, b in seen if t0 * 1000 <= s <= t1 * 1000]
    done_in_window = sum(1 for _, b in seen if t0 * 1000 <= b <= t1 * 1000)
    return _result(rate, sent, t0, t1, done_in_window, [b - s for s, b in window], sent - (len(seen) - before))


def step_jobs(conn, actor, doc, agent, rate: int, seconds: float, drain_s: float) -> dict:
    from bench_broker import make_jobs

    t0, t1, sent = offer(lambda n: make_jobs(conn, actor, n, doc, agent), rate, seconds)
    deadline = time.monotonic() + drain_s
    while scalar(conn, "SELECT count(*) FROM jobs WHERE status <> 'COMPLETED'") and time.monotonic() < deadline:
        time.sleep(0.1)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM jobs WHERE completed_at BETWEEN to_timestamp(%s) AND to_timestamp(%s)", (t0, t1)
        )
        done_in_window = cur.fetchone()[0]
        cur.execute(
            "SELECT EXTRACT(EPOCH FROM started_at - created_at) * 1000 FROM jobs "
            "WHERE created_at BETWEEN to_timestamp(%s) AND to_timestamp(%s) AND started_at IS NOT NULL",
            (t0, t1),
        )
        latencies = [float(r[0]) for r in cur.fetchall()]
    left = scalar(conn, "SELECT count(*) FROM jobs WHERE status <> 'COMPLETED'")
    with conn.cursor() as cur:
        cur.execute("TRUNCATE job_attempts, jobs, outbox CASCADE")
        cur.execute("DELETE FROM dramatiq.queue WHERE state = 'done'")
    return _result(rate, sent, t0, t1, done_in_window, latencies, left)


def _result(rate, sent, t0, t1, done_in_window, latencies, left) -> dict:
    span = t1 - t0
    achieved = done_in_window / span
    p99 = percentile(latencies, 0.99) if latencies else float("inf")
    keeps_up = achieved >= KEEP_UP * rate and p99 <= LATENCY_LIMIT_MS and left == 0
    return {
        "offered_per_s": rate,
        "sent_per_s": round(sent / span),
        "achieved_per_s": round(achieved),
        "p50_ms": round(percentile(latencies, 0.5), 1) if latencies else None,
        "p99_ms": round(p99, 1) if latencies else None,
        "left_after_drain": left,
        "keeps_up": keeps_up,
    }


def run_broker(args) -> dict:
    if args.broker == "rabbitmq":
        rabbitmq_vhost()
        os.environ["BROKER_URL"] = RABBITMQ
    else:
        os.environ.pop("BROKER_URL", None)
    fresh_database("roastq_bench_scaling")
    conn = connect()
    (doc,), agent = seed_minimal(conn)
    stamp_dir = tempfile.mkdtemp(prefix="roastq-bench-stamps-")
    os.environ["BENCH_STAMP_DIR"] = stamp_dir
    import noop_actors
    import scaling_actors  # noqa: F401  (declares `stamp` on this process's broker)

    broker = noop_actors.actors.broker
    if args.broker == "rabbitmq":
        broker.declare_queue("bench", ensure=True)
        broker.flush("bench")
    workers = start_workers("scaling_actors", processes=args.processes, threads=args.threads, BENCH_STAMP_DIR=stamp_dir)
    results = {"broker": args.broker, "processes": args.processes, "threads": args.threads}
    try:
        wait_workers_ready(conn, args.processes)
        for mode in args.modes:
            rows = []
            for rate in args.steps:
                if mode == "plain":
                    row = step_plain(broker, stamp_dir, rate, args.seconds, args.drain)
                else:
                    row = step_jobs(conn, noop_actors.noop_job, doc, agent, rate, args.seconds, args.drain)
                rows.append(row)
                print(f"  {args.broker:8} {mode:5} {json.dumps(row)}", file=sys.stderr, flush=True)
                if not row["keeps_up"] and (len(rows) >= 2 and not rows[-2]["keeps_up"] or row["left_after_drain"]):
                    break  # saturated twice in a row, or left a backlog: the ceiling is found
                time.sleep(1.0)
            results[mode] = rows
    finally:
        stop_workers(workers)
        shutil.rmtree(stamp_dir, ignore_errors=True)
    return results


# -- both, side by side ----------------------------------------------------------------------------


def ceiling(rows: list[dict]) -> dict:
    kept = [r for r in rows if r["keeps_up"]]
    failed = [r for r in rows if not r["keeps_up"]]
    return {
        "sustained_per_s": max((r["achieved_per_s"] for r in kept), default=0),
        "peak_achieved_per_s": max((r["achieved_per_s"] for r in rows), default=0),
        "saturates_at_offered_per_s": failed[0]["offered_per_s"] if failed else None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--brokers", default="postgres,rabbitmq")
    parser.add_argument("--broker", help=argparse.SUPPRESS)  # one broker, in a child process
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--modes", default="plain,jobs")
    parser.add_argument("--steps", default=",".join(map(str, STEPS)))
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--drain", type=float, default=20.0, help="seconds to wait for a step's backlog")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=8)
    args = parser.parse_args()
    args.steps = [int(s) for s in args.steps.split(",")]
    args.modes = args.modes.split(",")

    if args.broker:
        Path(args.out).write_text(json.dumps(run_broker(args)))
        return 0

    print(f"# roastq scaling: offered load until the broker saturates, on {machine()}", flush=True)
    summary = {
        "machine": machine(),
        "seconds_a_step": args.seconds,
        "keep_up": f">= {KEEP_UP:.0%} of offered, p99 send-to-start <= {LATENCY_LIMIT_MS:.0f} ms, no backlog",
        "brokers": {},
    }
    for broker in args.brokers.split(","):
        out = Path(tempfile.mkstemp(prefix=f"roastq-scaling-{broker}-", suffix=".json")[1])
        argv = [
            sys.executable,
            __file__,
            "--broker",
            broker,
            "--out",
            str(out),
            "--modes",
            ",".join(args.modes),
            "--steps",
            ",".join(map(str, args.steps)),
            "--seconds",
            str(args.seconds),
            "--drain",
            str(args.drain),
            "--processes",
            str(args.processes),
            "--threads",
            str(args.threads),
        ]
        subprocess.run(argv, check=True, env={k: v for k, v in os.environ.items() if k != "BROKER_URL"})
        result = json.loads(out.read_text())
        out.unlink()
        summary["brokers"][broker] = {
            mode: {"ceiling": ceiling(result[mode]), "steps": result[mode]} for mode in args.modes
        }
        for mode in args.modes:
            print(f"{broker:8} {mode:5} ceiling: {json.dumps(summary['brokers'][broker][mode]['ceiling'])}", flush=True)
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
