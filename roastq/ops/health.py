"""Health checks, for people (``roastq health``), scripts (its exit code) and orchestrators
(``/healthz`` and ``/readyz`` on the metrics port).

Two levels:

* **live** (``/healthz``): the foundation is there: the database answers and the schema (the
  broker's queue table and every roastq migration) is in place.
* **ready** (``/readyz``, and ``roastq health`` by default): live, and at least one worker has
  beaten within ``3 x HEARTBEAT_INTERVAL_S``: jobs enqueued now will run.

Three more checks are reported but never make the system unhealthy: the scheduler's last tick
(housekeeping runs), the system pause (jobs wait on purpose) and vacuum (autovacuum on, and no
session holding a snapshot for long: otherwise the queue tables' dead row versions pile up and
every scan of them slows; docs/operations.md).

Each check gets its own short-lived connection with a connect timeout and a statement timeout:
a health check must answer quickly, never wait on a pool that is busy with jobs.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

import psycopg2
import psycopg2.extras

from roastq import db
from roastq.jobctx import worker_stale_after_s
from roastq.settings import get_settings
from roastq.sql import load_queries, migrations

OPS = load_queries("ops.sql", __package__)

CONNECT_TIMEOUT_S = 3
STATEMENT_TIMEOUT_MS = 3000
#: The every-minute housekeeping should have ticked within this (periodiq fires each minute).
SCHEDULER_STALE_S = 180.0
#: A snapshot held longer than this keeps vacuum from removing the queue's dead row versions.
VACUUM_HELD_S = 300.0


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    critical: bool = True  # False: reported, but never makes the report unhealthy


@dataclass
class HealthReport:
    level: str  # "live" or "ready"
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks if c.critical)

    def as_dict(self) -> dict:
        return {
            "status": "ok" if self.ok else "unhealthy",
            "level": self.level,
            "checks": [asdict(c) for c in self.checks],
        }


def check(level: str = "ready", *, url: str | None = None) -> HealthReport:
    """Run the checks of ``level`` ("live" or "ready") and return the report; never raises."""
    if level not in ("live", "ready"):
        raise ValueError(f"level must be 'live' or 'ready', got {level!r}")
    report = HealthReport(level)
    started = time.monotonic()
    try:
        conn = psycopg2.connect(
            url or db.database_url(),
            connect_timeout=CONNECT_TIMEOUT_S,
            application_name="roastq-health",
            options=f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
        )
    except Exception as exc:
        report.checks.append(Check("database", False, f"unreachable: {_first_line(exc)}"))
        report.checks.append(Check("schema", False, "not checked: no database"))
        if level == "ready":
            report.checks.append(Check("workers", False, "not checked: no database"))
        return report
    try:
        conn.autocommit = True
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute("SELECT 1")
            report.checks.append(Check("database", True, f"reachable ({(time.monotonic() - started) * 1000:.0f} ms)"))
            schema_ok = _check_schema(cur, report)
            if get_settings().rabbitmq:
                _check_rabbitmq(report)
            if level == "ready":
                if schema_ok:
                    _check_workers(cur, report)
                    _check_scheduler(cur, report)
                    _check_pause(cur, report)
                    _check_vacuum(cur, report)
                else:
                    report.checks.append(Check("workers", False, "not checked: schema missing"))
    except Exception as exc:  # a statement timed out, the connection dropped midway
        report.checks.append(Check("database", False, f"query failed: {_first_line(exc)}"))
    finally:
        conn.close()
    return report


def _check_schema(cur, report: HealthReport) -> bool:
    cur.execute(OPS.health_schema)
    found = cur.fetchone()
    missing = [
        name
        for name, key in (
            ("dramatiq.queue", "broker_queue"),
            ("dramatiq.state", "broker_state"),
            ("schema_migrations", "migrations_table"),
        )
        if not found[key]
    ]
    if missing:
        report.checks.append(Check("schema", False, f"missing: {', '.join(missing)} (run `roastq migrate`)"))
        return False
    cur.execute(OPS.applied_migrations)
    applied = {r["version"] for r in cur.fetchall()}
    pending = [f"{n:04d}_{name}" for n, name, _ in migrations() if n not in applied]
    if pending:
        report.checks.append(
            Check("schema", False, f"migrations not applied: {', '.join(pending)} (run `roastq migrate`)")
        )
        return False
    report.checks.append(Check("schema", True, f"broker queue present, {len(applied)} migrations applied"))
    return True


def _check_rabbitmq(report: HealthReport) -> None:
    """With BROKER_URL=amqp://...: RabbitMQ answers (messages cannot move without it)."""
    from roastq.brokers.rabbitmq import rabbitmq_counts

    started = time.monotonic()
    try:
        counts = rabbitmq_counts(["interactive"])["interactive"]
    except Exception as exc:
        report.checks.append(Check("rabbitmq", False, f"unreachable: {_first_line(exc)}"))
        return
    report.checks.append(
        Check(
            "rabbitmq",
            True,
            f"reachable ({(time.monotonic() - started) * 1000:.0f} ms), {counts['queued']} waiting in interactive",
        )
    )


def _check_workers(cur, report: HealthReport) -> None:
    stale = worker_stale_after_s()
    cur.execute(OPS.health_workers, {"stale_after_s": stale})
    row = cur.fetchone()
    if row["live"]:
        report.checks.append(
            Check("workers", True, f"{row['live']} live (freshest beat {row['freshest_s']:.1f} s ago)")
        )
    else:
        report.checks.append(Check("workers", False, f"no worker has beaten in the last {stale:.0f} s"))


def _check_scheduler(cur, report: HealthReport) -> None:
    cur.execute(OPS.last_ticks)
    ticks = cur.fetchall()
    if not ticks:
        report.checks.append(Check("scheduler", False, "no tick yet: is `periodiq actors` running?", critical=False))
        return
    age = min(t["age_s"] for t in ticks)
    failed = [t["task"] for t in ticks if t["outcome"] == "failed"]
    ok = age <= SCHEDULER_STALE_S and not failed
    detail = f"last tick {age:.0f} s ago" + (f"; last run failed: {', '.join(failed)}" if failed else "")
    report.checks.append(Check("scheduler", ok, detail, critical=False))


def _check_pause(cur, report: HealthReport) -> None:
    cur.execute(OPS.get_state, {"key": "pause"})
    row = cur.fetchone()
    if row is None:
        report.checks.append(Check("pause", True, "not paused", critical=False))
    else:
        reason = row["value"].get("reason") or "no reason given"
        report.checks.append(
            Check("pause", False, f"paused since {row['updated_at']:%Y-%m-%d %H:%M:%S %Z}: {reason}", critical=False)
        )


def _check_vacuum(cur, report: HealthReport) -> None:
    cur.execute(OPS.vacuum_state)
    row = cur.fetchone()
    problems = []
    if not row["autovacuum"]:
        problems.append("autovacuum is off on this server")
    if row["disabled_on"]:
        problems.append(f"autovacuum is disabled on {', '.join(row['disabled_on'])}")
    held = row["oldest_snapshot_s"]
    if held is not None and held > VACUUM_HELD_S:
        problems.append(
            f"session {row['oldest_snapshot_pid']} ({row['oldest_snapshot_state']}) has held a snapshot"
            f" for {held:.0f} s: no dead row version newer than that can be removed"
        )
    detail = "; ".join(problems) + " (docs/operations.md)" if problems else "autovacuum on, no snapshot held long"
    report.checks.append(Check("vacuum", not problems, detail, critical=False))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0][:300]


# -- HTTP -------------------------------------------------------------------------------------

PATHS = {"/healthz": "live", "/readyz": "ready"}


def respond(path: str) -> tuple[int, bytes] | None:
    """(HTTP status, JSON body) for a health path, or None if ``path`` is not one."""
    level = PATHS.get(path.split("?", 1)[0].rstrip("/") or "/")
    if level is None:
        return None
    report = check(level)
    return (200 if report.ok else 503), json.dumps(report.as_dict()).encode()


def wsgi_app(environ, start_response):
    """A WSGI app serving ``/healthz`` and ``/readyz`` (404 for anything else)."""
    answer = respond(environ.get("PATH_INFO", ""))
    if answer is None:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    status, body = answer
    start_response(
        f"{status} {'OK' if status == 200 else 'Service Unavailable'}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")],
    )
    return [body] if environ.get("REQUEST_METHOD") != "HEAD" else []


def with_health(app):
    """Wrap a WSGI app (e.g. prometheus_client's ``make_wsgi_app()``): health paths are answered
    here, everything else goes to ``app``."""

    def dispatch(environ, start_response):
        if environ.get("PATH_INFO", "").rstrip("/") in PATHS:
            return wsgi_app(environ, start_response)
        return app(environ, start_response)

    return dispatch
