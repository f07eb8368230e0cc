"""Operator commands of ``roastq``: status, jobs, cancel, pause, resume, purge, health,
maintenance, costs and the legacy import. Tables for people, ``--json`` for scripts.

``add_commands`` registers them on the CLI's subparsers (roastq/cli/main.py). A usage error (a bad
filter, a missing confirmation) prints ``error: ...`` and exits 2, like the rest of the CLI.
"""

from __future__ import annotations

import re
import sys

from roastq import db
from roastq.api import EnqueueError, cancel_job
from roastq.cli.output import UsageError, command, fmt, print_json, progress_printer, table
from roastq.humanize import parse_age, parse_since
from roastq.jobs import JobStatus
from roastq.ops import maintenance
from roastq.ops import pause as system_pause
from roastq.ops.views import find_jobs, status_data
from roastq.queues import ALL_QUEUES, JOB_QUEUES
from roastq.settings import get_settings
from roastq.sql import load_queries

OPS = load_queries("ops.sql", "roastq.ops")

STATUSES = tuple(str(s) for s in JobStatus)
QUEUES = ALL_QUEUES


# -- status ------------------------------------------------------------------------------------


@command
def cmd_status(args) -> int:
    data = status_data()
    if args.json:
        print_json(data)
        return 0
    paused = data["paused"]
    print(
        "System:    "
        + (
            f"PAUSED since {fmt(paused['since'])} by {paused.get('by')}: {paused.get('reason')}"
            if paused
            else "running"
        )
    )
    print("Jobs:      " + ("  ".join(f"{k} {v}" for k, v in data["jobs"].items()) or "none"))
    print(f"\nQueues (broker messages, {data['broker']}):")
    if "outbox" in data:
        print(
            f"Outbox:    {data['outbox']['unsent']} not yet relayed to RabbitMQ "
            f"(oldest {data['outbox']['oldest_unsent_s']:.1f} s)"
        )
    print(
        table(
            data["queue_summary"],
            ["queue", "queued", "delayed", "in_flight", "orphaned", "dead", "done", "oldest_queued_age_s"],
        )
    )
    lane = data["batch_lane"]
    print(
        f"\nBatch lane ({'on' if lane['enabled'] else 'off'}): {lane['waiting']} requests waiting, "
        f"{lane['in_batches']} in {lane['open_batches']} open batches (oldest request "
        f"{fmt(lane['oldest_request_s'])} s, oldest batch {fmt(lane['oldest_batch_s'])} s); "
        f"{lane['answered']} answered, {lane['errored']} errored, {lane['fell_back']} fell back; "
        f"billed ${lane['billed_usd']:.4f}, saved ${lane['saved_usd']:.4f}"
    )
    print(f"\nWorkers: {len(data['workers'])} live")
    if data["workers"]:
        print(table(data["workers"], ["worker_id", "threads", "queues", "started_at", "last_seen_s"]))
    print("\nScheduler (last tick of each task):")
    print(
        table(data["scheduler"], ["task", "tick", "outcome", "age_s", "duplicates", "error"])
        if data["scheduler"]
        else "(no tick yet: is `periodiq actors` running?)"
    )
    return 0


# -- jobs and cancel -----------------------------------------------------------------------------


def _filters(args) -> dict:
    statuses = None
    if getattr(args, "status", None):
        statuses = [s.strip().upper() for s in args.status.split(",") if s.strip()]
        bad = [s for s in statuses if s not in STATUSES]
        if bad:
            raise UsageError(f"unknown status {', '.join(bad)}: use {', '.join(STATUSES)}")
    error_class = args.error_class.strip().upper() if getattr(args, "error_class", None) else None
    if error_class is not None and not re.fullmatch(r"[A-Z_]+", error_class):
        raise UsageError(f"{args.error_class!r} is not an error class (e.g. RATE_LIMITED, NETWORK)")
    agent_id = _resolve(OPS.resolve_agent, args.agent, "agent") if getattr(args, "agent", None) else None
    document_id = _resolve(OPS.resolve_document, args.document, "document") if getattr(args, "document", None) else None
    return {
        "statuses": statuses,
        "error_class": error_class,
        "queue": getattr(args, "queue", None),
        "agent_id": agent_id,
        "document_id": document_id,
        "since": parse_since(args.since) if getattr(args, "since", None) else None,
        "until": parse_since(args.until) if getattr(args, "until", None) else None,
        "search": (getattr(args, "search", None) or "").strip() or None,
    }


def _resolve(query: str, ref: str, what: str) -> str:
    with db.transaction() as cur:
        cur.execute(query, {"ref": ref})
        found = [str(r["id"]) for r in cur.fetchall()]
    if not found:
        raise UsageError(f"unknown {what} {ref!r} (give its id, slug or name)")
    if len(found) > 1:
        raise UsageError(f"{what} {ref!r} is ambiguous: {', '.join(found)}")
    return found[0]


@command
def cmd_jobs(args) -> int:
    if args.limit < 1:
        raise UsageError("--limit must be at least 1")
    found = find_jobs(_filters(args), args.limit)
    if args.json:
        print_json(found)
    else:
        print(
            table(
                found,
                [
                    "id",
                    "status",
                    "queue",
                    "attempts",
                    "error_class",
                    "agent_name",
                    "document_title",
                    "created_at",
                    "duration_s",
                    "price_usd",
                ],
            )
        )
    return 0


@command
def cmd_cancel(args) -> int:
    filtered = any(getattr(args, k) for k in ("status", "error_class", "queue", "agent", "document", "since", "until"))
    if args.job_ids and filtered:
        raise UsageError("give job ids or filters, not both")
    if not args.job_ids and not filtered:
        raise UsageError("give one or more job ids, or filters (--status, --queue, --agent, --since, ...)")
    if len(args.job_ids) == 1:
        status = cancel_job(args.job_ids[0], reason=args.reason)  # errors exit 2 (roastq.cli.main.main)
        print(f"{args.job_ids[0]}: {_cancel_word(status)}")
        return 0
    if args.job_ids:
        ids = args.job_ids
    else:
        filters = _filters(args)
        filters["statuses"] = filters["statuses"] or ["PENDING", "RUNNING"]
        if set(filters["statuses"]) - {"PENDING", "RUNNING"}:
            raise UsageError("only PENDING and RUNNING jobs can be cancelled")
        ids = [str(j["id"]) for j in find_jobs(filters, 10_000_000)]
        if args.dry_run or not args.yes:
            print(f"{len(ids)} job(s) match" + ("" if args.dry_run else ": add --yes to cancel them"))
            for job_id in ids[:20]:
                print(f"  {job_id}")
            return 0 if args.dry_run else 2
    report, failed = progress_printer("cancelled"), 0
    for n, job_id in enumerate(ids, 1):
        try:
            print(f"{job_id}: {_cancel_word(cancel_job(job_id, reason=args.reason))}")
        except EnqueueError as exc:
            failed += 1
            print(f"{job_id}: error: {exc}", file=sys.stderr)
        if len(ids) > 20:
            report(n, len(ids))
    return 1 if failed else 0


def _cancel_word(status: str) -> str:
    return "cancelled" if status == "CANCELLED" else "cancel requested (stops at its next step)"


# -- pause, purge --------------------------------------------------------------------------------


@command
def cmd_pause(args) -> int:
    state = system_pause.pause(args.reason)
    print(
        f"paused: no job attempt starts until `roastq resume` (reason: {state['reason']}). Running attempts "
        "finish; waiting jobs keep their place."
    )
    return 0


@command
def cmd_resume(args) -> int:
    ended = system_pause.resume()
    if ended is None:
        print("not paused: nothing to resume")
    else:
        print(
            f"resumed (was paused by {ended.get('by')}: {ended.get('reason')}); waiting jobs start within "
            f"{get_settings().pause_snooze_s * 1.25:.0f} s"
        )
    return 0


@command
def cmd_purge(args) -> int:
    states = (("done",) if args.done else ()) + (("rejected",) if args.dead else ())
    if not states:
        raise UsageError("say what to purge: --done (finished messages) and/or --dead (dead letters)")
    older_than_s = parse_age(args.older_than) if args.older_than else 0.0
    params = {"states": list(states), "older_than_s": older_than_s, "queue": args.queue}
    with db.transaction() as cur:
        cur.execute(OPS.count_finished_messages, params)
        n = cur.fetchone()["n"]
    what = " and ".join({"done": "finished messages", "rejected": "dead letters"}[s] for s in states)
    if args.dry_run or not args.yes:
        print(f"{n} {what} would be deleted (jobs rows are kept)")
        if not args.dry_run:
            raise UsageError("nothing deleted: add --yes to delete them (or --dry-run to only count)")
        return 0
    deleted = maintenance.purge_messages(
        states, older_than_s=older_than_s, queue=args.queue, progress=progress_printer("deleted") if n > 5000 else None
    )
    print(f"deleted {deleted} {what} (jobs rows are kept)")
    return 0


# -- the parser ----------------------------------------------------------------------------------


def _job_filters(p, *, statuses: bool = True) -> None:
    if statuses:
        p.add_argument("--status", help="one status or several, comma-separated (e.g. PENDING,RUNNING)")
    p.add_argument("--class", dest="error_class", help="error class, e.g. RATE_LIMITED")
    p.add_argument("--queue", choices=list(JOB_QUEUES))
    p.add_argument("--agent", help="agent id, slug or name")
    p.add_argument("--document", help="document id or slug")
    p.add_argument("--since", help="created since: an age (30m, 2h, 7d) or an ISO date/time")
    p.add_argument("--until", help="created before: an age or an ISO date/time")
    p.add_argument("--search", help="text in the document's title")


def add_commands(sub) -> None:
    """Register the operator commands on ``roastq``'s subparsers."""
    p = sub.add_parser("status", help="per queue: queued, delayed, in flight, dead, oldest age; workers; pause")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_status)

    p = sub.add_parser("jobs", help="list jobs, newest first, with filters")
    _job_filters(p)
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_jobs)

    p = sub.add_parser("cancel", help="cancel jobs: by id, or every job matching filters (with --yes)")
    p.add_argument("job_ids", nargs="*", metavar="JOB_ID")
    _job_filters(p)
    p.add_argument("--reason", default="cancelled by operator")
    p.add_argument("--yes", action="store_true", help="confirm cancelling every matching job")
    p.add_argument("--dry-run", action="store_true", help="only list the matching jobs")
    p.set_defaults(fn=cmd_cancel)

    p = sub.add_parser("pause", help="system pause: no job attempt starts; jobs wait, nothing fails")
    p.add_argument("--reason", default="paused by operator")
    p.set_defaults(fn=cmd_pause)
    sub.add_parser("resume", help="end the system pause").set_defaults(fn=cmd_resume)

    p = sub.add_parser("purge", help="delete finished broker messages and/or dead letters (jobs rows are kept)")
    p.add_argument("--done", action="store_true", help="finished (done) messages")
    p.add_argument("--dead", action="store_true", help="dead letters (rejected messages)")
    p.add_argument("--older-than", help="only messages older than this age (e.g. 7d)")
    p.add_argument("--queue", choices=QUEUES)
    p.add_argument("--yes", action="store_true", help="confirm the deletion")
    p.add_argument("--dry-run", action="store_true", help="only count")
    p.set_defaults(fn=cmd_purge)

    from roastq.cli.tools import add_tool_commands

    add_tool_commands(sub)
