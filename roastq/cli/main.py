"""``roastq``: the command line. Read commands print tables for people and JSON with ``--json``."""

from __future__ import annotations

import argparse
import functools
import sys

from roastq import db
from roastq.cli.output import fmt, human, print_json, table
from roastq.db import Q
from roastq.queues import JOB_QUEUES

# -- commands ---------------------------------------------------------------------------------


def cmd_migrate(args) -> int:
    applied = db.migrate()
    print("applied: " + ", ".join(applied) if applied else "schema up to date: nothing to apply")
    return 0


def cmd_seed(args) -> int:
    from roastq.evaluation.seed import seed

    db.migrate()
    seeded = seed()
    if args.json:
        print_json({"documents": seeded.documents, "agents": seeded.agents})
    else:
        print(
            table(
                [{"kind": "document", "slug": s, "id": i} for s, i in seeded.documents.items()]
                + [{"kind": "agent", "slug": s, "id": i} for s, i in seeded.agents.items()],
                ["kind", "slug", "id"],
            )
        )
    return 0


def cmd_enqueue(args) -> int:
    from roastq.api import enqueue_evaluation

    print(
        enqueue_evaluation(
            args.document_id, args.agent_id, priority=args.priority, deadline=args.deadline, not_before=args.delay
        )
    )
    return 0


def _duration_arg(raw: str) -> float:
    from roastq.settings import parse_duration

    try:
        return parse_duration(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {raw!r} (seconds, or 90s, 10m, 6h, 2d)") from None


def cmd_relay(args) -> int:
    """Publish the outbox to RabbitMQ (workers relay it too: this is for more relays, or none)."""
    import signal

    from roastq.brokers.rabbitmq import RoastqRabbitmqBroker
    from roastq.settings import get_settings

    settings = get_settings()
    if not settings.rabbitmq:
        print("error: roastq relay publishes the outbox to RabbitMQ: set BROKER_URL=amqp://...", file=sys.stderr)
        return 2
    relay = RoastqRabbitmqBroker(url=settings.broker_url, middleware=[]).relay()
    if args.once:
        print(f"relayed {relay.drain()} message(s)")
        return 0
    signal.signal(signal.SIGTERM, lambda *_: relay.stop(timeout=0))
    print("relaying the outbox to RabbitMQ (Ctrl-C to stop)", file=sys.stderr)
    try:
        relay.run()
    except KeyboardInterrupt:
        pass
    print(f"relayed {relay.sent} message(s)", file=sys.stderr)
    return 0


# status, jobs, cancel and the other operator commands live in roastq/cli/admin.py.


def job_data(job_id: str) -> dict | None:
    from roastq.llm import batch
    from roastq.ops.views import job_detail

    data = job_detail(job_id)
    if data is not None:
        data["batch_lane"] = batch.job_requests(data["id"])
    return data


def cmd_job(args) -> int:
    data = job_data(args.job_id)
    if data is None:
        print(f"error: unknown job {args.job_id}", file=sys.stderr)
        return 1
    if args.json:
        print_json(data)
        return 0
    for key in (
        "id",
        "status",
        "queue",
        "attempts",
        "error_class",
        "error",
        "created_at",
        "not_before",
        "deadline",
        "started_at",
        "completed_at",
        "duration_s",
        "price_usd",
        "evaluation_version_id",
        "original_job_id",
        "cancel_reason",
    ):
        print(f"{key + ':':24}{human(key, data.get(key)) if key != 'error' else (data.get(key) or '-')}")
    print("\nAttempts:")
    print(
        table(
            data["attempt_log"],
            ["attempt", "started_at", "ended_at", "outcome", "error_class", "delay_s", "delay_reason"],
        )
    )
    print("\nTasks:")
    print(
        table(
            data["tasks"],
            [
                "name",
                "model",
                "input_tokens",
                "output_tokens",
                "cache_read_tokens",
                "cache_write_tokens",
                "price_usd",
                "duration_s",
            ],
        )
    )
    print("\nLLM calls:")
    print(
        table(
            data["llm_calls"],
            [
                "step",
                "model",
                "billed_calls",
                "input_tokens",
                "output_tokens",
                "cache_read_tokens",
                "cache_write_tokens",
                "price_usd",
                "request_id",
            ],
        )
    )
    if data["reruns"]:
        print("\nReruns: " + ", ".join(f"{r['id']} ({r['status']})" for r in data["reruns"]))
    _print_evaluation(data["evaluation"])
    print("\nLogs:")
    for line in data.get("logs") or []:
        print(
            f"{line.get('time', '')[11:23]}  #{line.get('attempt', '-')}  {line.get('level', ''):7}  "
            f"{line.get('message', '')}" + (f"  [{line['exception']}]" if line.get("exception") else "")
        )
    if not data.get("logs"):
        print("(none)")
    return 0


def _print_evaluation(evaluation: dict | None) -> None:
    import textwrap

    print("\nEvaluation:")
    if evaluation is None:
        print("(none: the job saved no evaluation)")
        return
    wrap = functools.partial(textwrap.fill, width=100, initial_indent="  ", subsequent_indent="  ")
    print(
        f"version {evaluation['version']}"
        + (f", grade {evaluation['grade']}/100" if evaluation["grade"] is not None else "")
    )
    for key in ("summary", "analysis", "self_critique"):
        if evaluation.get(key):
            print(f"{key.replace('_', '-').capitalize()}:")
            print("\n".join(wrap(p) for p in evaluation[key].split("\n") if p.strip()))
    highlights = evaluation["highlights"]
    valid = sum(1 for h in highlights if h["is_valid"])
    print(f"Highlights: {len(highlights)} ({valid} located in the document, {len(highlights) - valid} invalid)")
    for n, h in enumerate(highlights, 1):
        where = f"chars {h['start_offset']}-{h['end_offset']}" if h["is_valid"] else f"INVALID: {h['error']}"
        print(f"  {n}. [{h.get('level') or '-'}] {h.get('header') or '(no header)'}  ({where})")
        print(f'     "{fmt(h["quoted_text"])}"')


def cmd_retry(args) -> int:
    from roastq.api import rerun_job

    if args.job_id and args.failed:
        raise SystemExit("error: give a job id or --failed, not both")
    if args.job_id:
        ids = [args.job_id]
    elif args.failed:
        with db.transaction() as cur:
            cur.execute(Q.list_jobs, {"status": "FAILED", "error_class": args.error_class, "limit": 1_000_000})
            ids = [str(r["id"]) for r in cur.fetchall()]
    else:
        raise SystemExit("error: give a job id, or --failed [--class C]")
    for n, job_id in enumerate(ids, 1):
        new = rerun_job(job_id)
        print(f"{job_id} -> {new}")
        if len(ids) > 20 and n % 20 == 0:
            print(f"... {n}/{len(ids)}", file=sys.stderr)
    if not ids:
        print("no failed jobs to retry", file=sys.stderr)
    return 0


def cmd_console(args) -> int:
    from roastq.console.server import ConsoleRefused, serve

    try:
        serve(args.host, args.port)
    except ConsoleRefused as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_up(args) -> int:
    from roastq.cli.stack import run_up

    return run_up(processes=args.processes, threads=args.threads)


def cmd_demo(args) -> int:
    from roastq.cli.demo import run_demo

    return run_demo(jobs=args.jobs, processes=args.processes, threads=args.threads)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="roastq", description="RoastMyPost's evaluation job system.")
    sub = parser.add_subparsers(dest="command", required=True)

    sub.add_parser("migrate", help="apply the schema migrations (idempotent)").set_defaults(fn=cmd_migrate)
    p = sub.add_parser("seed", help="load the bundled sample documents and agents")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_seed)
    p = sub.add_parser("enqueue", help="enqueue an evaluation; prints the job id")
    p.add_argument("--document-id", required=True)
    p.add_argument("--agent-id", required=True)
    p.add_argument("--priority", choices=list(JOB_QUEUES), default="interactive")
    p.add_argument(
        "--deadline",
        type=_duration_arg,
        metavar="DURATION",
        help="done within this (e.g. 6h); a batch job with time to spare uses the batch lane",
    )
    p.add_argument("--delay", type=_duration_arg, metavar="DURATION", help="do not start before this (e.g. 10m)")
    p.set_defaults(fn=cmd_enqueue)
    p = sub.add_parser("job", help="one job, with its attempts and tasks")
    p.add_argument("job_id")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_job)
    p = sub.add_parser("retry", help="rerun a finished job as a new job (or all FAILED ones)")
    p.add_argument("job_id", nargs="?")
    p.add_argument("--failed", action="store_true")
    p.add_argument("--class", dest="error_class")
    p.set_defaults(fn=cmd_retry)
    p = sub.add_parser("relay", help="with RabbitMQ: publish the outbox (workers also do)")
    p.add_argument("--once", action="store_true", help="publish what is waiting, then exit")
    p.set_defaults(fn=cmd_relay)
    from roastq.cli.admin import add_commands  # status, jobs, cancel, pause, resume, purge, health, ...

    add_commands(sub)
    p = sub.add_parser("console", help="the web console for operators (default http://127.0.0.1:9292)")
    p.add_argument(
        "--host",
        help="address to listen on (default CONSOLE_HOST, 127.0.0.1); off the loopback "
        "address CONSOLE_TOKEN or CONSOLE_BASIC_AUTH is required",
    )
    p.add_argument("--port", type=int, help="port (default CONSOLE_PORT, 9292)")
    p.set_defaults(fn=cmd_console)
    sub.add_parser("simulator", help="run the Claude simulator (roastq simulator --help)", add_help=False)
    for name, help_text in (
        ("up", "run the whole stack in the foreground until Ctrl-C"),
        ("demo", "seed, run ~40 evaluations through the stack, report"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--processes", type=int, default=2)
        p.add_argument("--threads", type=int, default=8)
        if name == "demo":
            p.add_argument("--jobs", type=int, default=40)
        p.set_defaults(fn=cmd_up if name == "up" else cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["simulator"]:  # its options are the simulator's own (argparse REMAINDER drops them)
        from roastq.simulator.server import main as simulator_main

        return simulator_main(argv[1:])
    args = build_parser().parse_args(argv)
    from roastq.api import EnqueueError
    from roastq.settings import SettingsError

    try:
        return args.fn(args)
    except (EnqueueError, SettingsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
