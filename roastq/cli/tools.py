"""Operator commands of ``roastq`` beyond the queue: health, maintenance (the scheduler's
housekeeping by hand, its ticks), costs (the daily roll-up) and the legacy import."""

from __future__ import annotations

import sys

from roastq import db
from roastq.cli.output import UsageError, command, print_json, progress_printer, table
from roastq.ops import maintenance
from roastq.queues import JOB_QUEUES
from roastq.sql import load_queries

OPS = load_queries("ops.sql", "roastq.ops")


# -- health, maintenance, costs ----------------------------------------------------------------


@command
def cmd_health(args) -> int:
    from roastq.ops.health import check

    report = check("live" if args.live else "ready")
    if args.json:
        print_json(report.as_dict())
    else:
        for c in report.checks:
            mark = "ok  " if c.ok else ("FAIL" if c.critical else "warn")
            print(f"{mark}  {c.name:10} {c.detail}")
        print("healthy" if report.ok else "UNHEALTHY")
    return 0 if report.ok else 1


@command
def cmd_maintenance_run(args) -> int:
    task = maintenance.TASKS[args.task]
    result = task.fn()
    if args.json:
        print_json({"task": args.task, "result": result})
    else:
        print(f"{args.task}: " + ", ".join(f"{k} {v}" for k, v in result.items()))
    return 0


@command
def cmd_maintenance_ticks(args) -> int:
    with db.transaction() as cur:
        cur.execute(OPS.recent_ticks, {"task": args.task, "limit": args.limit})
        ticks = [dict(r) for r in cur.fetchall()]
    if args.json:
        print_json(ticks)
    else:
        print(table(ticks, ["task", "tick", "claimed_by", "outcome", "runs", "duplicates", "result", "error"]))
    return 0


@command
def cmd_costs(args) -> int:
    if args.days < 1:
        raise UsageError("--days must be at least 1")
    with db.transaction() as cur:
        cur.execute(OPS.cost_report, {"days": args.days})
        found = [dict(r) for r in cur.fetchall()]
    if args.json:
        print_json(found)
    else:
        print(
            table(found, ["day", "agent_name", "model", "jobs", "tasks", "input_tokens", "output_tokens", "price_usd"])
        )
        print("(rolled up hourly by the scheduler; `roastq maintenance run roll_up_costs` to refresh now)")
    return 0


# -- legacy ----------------------------------------------------------------------------------------


@command
def cmd_legacy_import(args) -> int:
    from roastq.ops.legacy import LegacyError, import_pending

    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    try:
        result = import_pending(
            url=args.url,
            schema=args.schema,
            queue=args.queue,
            batch_size=args.batch_size,
            dry_run=args.dry_run,
            progress=progress_printer("legacy jobs"),
        )
    except LegacyError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print_json(result)
    elif args.dry_run:
        print(
            f"{result['pending']} legacy PENDING job(s): {result['would_create']} to create, "
            f"{result['already_imported']} already imported"
        )
    else:
        print(
            f"created {result['created']} job(s); {result['already_imported']} already imported; "
            f"{len(result['skipped'])} skipped"
        )
    for skipped in [] if args.dry_run else result["skipped"]:
        print(f"skipped {skipped['legacy_id']}: {skipped['reason']} (left PENDING)", file=sys.stderr)
    return 1 if not args.dry_run and result["skipped"] else 0


@command
def cmd_legacy_status(args) -> int:
    from roastq.ops.legacy import LegacyError, status

    try:
        data = status(url=args.url, schema=args.schema)
    except LegacyError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print_json(data)
    else:
        print("Legacy jobs: " + ("  ".join(f"{k} {v}" for k, v in data["legacy"].items()) or "none"))
        print(
            f"Imported here: {data['imported']}; left to import: {data['left_to_import']}; "
            f"running in the old runner: {data['old_runner_busy']}"
        )
    return 0


def add_tool_commands(sub) -> None:
    p = sub.add_parser("health", help="database, schema, worker heartbeats; exit 0 healthy, 1 not")
    p.add_argument("--live", action="store_true", help="liveness only: database and schema")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_health)

    p = sub.add_parser("maintenance", help="the scheduler's housekeeping: run a task now, list ticks")
    msub = p.add_subparsers(dest="maintenance_command", required=True)
    m = msub.add_parser("run", help="run one housekeeping task now (unguarded: every task is idempotent)")
    m.add_argument("task", choices=sorted(maintenance.TASKS))
    m.add_argument("--json", action="store_true")
    m.set_defaults(fn=cmd_maintenance_run)
    m = msub.add_parser("ticks", help="recent scheduler ticks: who ran them, duplicates suppressed")
    m.add_argument("--task", choices=sorted(maintenance.TASKS))
    m.add_argument("--limit", type=int, default=30)
    m.add_argument("--json", action="store_true")
    m.set_defaults(fn=cmd_maintenance_ticks)

    p = sub.add_parser("costs", help="LLM spend by day, agent and model (the daily roll-up)")
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_costs)

    p = sub.add_parser("legacy", help='move PENDING jobs off RoastMyPost\'s legacy "Job" table')
    lsub = p.add_subparsers(dest="legacy_command", required=True)
    for name, fn, help_text in (
        ("import", cmd_legacy_import, "create the legacy PENDING jobs here, once"),
        ("status", cmd_legacy_status, "legacy jobs by status; how many were imported"),
    ):
        m = lsub.add_parser(name, help=help_text)
        m.add_argument("--url", help="the legacy database (default: LEGACY_DATABASE_URL, else DATABASE_URL)")
        m.add_argument("--schema", default="public", help="the legacy tables' schema (default: public)")
        m.add_argument("--json", action="store_true")
        if name == "import":
            m.add_argument("--queue", choices=list(JOB_QUEUES), default="interactive")
            m.add_argument("--batch-size", type=int, default=200)
            m.add_argument("--dry-run", action="store_true", help="only count")
        m.set_defaults(fn=fn)
