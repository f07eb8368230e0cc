"""The console's pages and actions (Flask, server-rendered with Jinja2).

Pages: overview, jobs (filters, keyset paging, bulk select), one job (attempts, logs, LLM calls,
reruns, and the evaluation with its highlights marked on the document), dead letters, costs.
Actions (POST, CSRF-checked, logged with who did it): retry, cancel, pause, resume, a cost
roll-up. A page asked with ``X-Console-Partial: 1`` answers only its live part (console.js
refreshes it in place every few seconds).
"""

from __future__ import annotations

import logging
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from urllib.parse import urlencode

from flask import Flask, abort, flash, g, redirect, render_template, request, url_for

from roastq import db, humanize
from roastq.api import EnqueueError, cancel_job, rerun_job
from roastq.console import access
from roastq.humanize import AgeError, parse_since
from roastq.jobs import JobStatus
from roastq.ops import pause as system_pause
from roastq.ops import views
from roastq.ops.views import find_jobs
from roastq.redact import redact
from roastq.settings import get_settings

log = logging.getLogger("roastq.console")

STATUSES = tuple(s.value for s in JobStatus)
PAGE_SIZE = 50
BULK_LIMIT = 1000  # jobs one bulk action may touch
LIVE_STATUSES = ("PENDING", "RUNNING")


def create_app(settings=None) -> Flask:
    settings = settings or get_settings()
    app = Flask(__name__)
    app.secret_key = secrets.token_bytes(32)  # sessions (the CSRF token) last as long as the process
    app.config.update(
        SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Strict", SESSION_COOKIE_NAME="roastq_console_session"
    )
    app.jinja_env.filters.update(
        age=humanize.age,
        since=humanize.since,
        usd=humanize.usd,
        count=humanize.count,
        moment=humanize.moment,
        redact=lambda text: redact(text) if text else text,
    )
    app.jinja_env.globals.update(csrf_token=access.csrf_token, statuses=STATUSES)

    @app.before_request
    def check_access():
        if request.path in access.OPEN_PATHS:
            return None
        user = access.authenticate(settings)
        if user is None:
            return access.refuse(settings)
        g.who = f"{user}@{request.remote_addr}"
        if request.method == "POST":
            if settings.console_read_only:
                abort(403, "the console is read-only (CONSOLE_READ_ONLY)")
            access.check_csrf()
        return None

    @app.after_request
    def no_caching(response):
        response.headers.setdefault("Cache-Control", "no-store")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault(
            "Content-Security-Policy", "default-src 'self'; style-src 'self'; img-src 'self' data:"
        )
        return response

    @app.context_processor
    def common():
        signed_in = getattr(g, "who", None) is not None
        paused = None
        if signed_in:  # the overview has read it already, with its other figures
            paused = g.paused if "paused" in g else system_pause.state()
        return {"read_only": settings.console_read_only or not signed_in, "paused": paused}

    def page(template: str, partial: str | None = None, **context):
        if partial and request.headers.get("X-Console-Partial"):
            return render_template(partial, **context)
        return render_template(template, partial=partial, **context)

    def action(what: str, targets) -> None:
        log.info("console action %s by %s on %s", what, g.who, targets)

    # -- login -------------------------------------------------------------------------------

    @app.route("/login", methods=["GET", "POST"])
    def login():
        if not settings.console_token:
            return redirect(url_for("overview"))
        error = None
        if request.method == "POST":
            given = request.form.get("token", "")
            if secrets.compare_digest(given.encode(), settings.console_token.encode()):
                response = redirect(_local(request.args.get("next")) or "/")
                response.set_cookie(
                    access.COOKIE, access.token_cookie_value(settings.console_token), httponly=True, samesite="Strict"
                )
                return response
            error = "wrong token"
        return render_template("login.html", error=error), (401 if error else 200)

    # -- pages -------------------------------------------------------------------------------

    @app.route("/")
    def overview():
        data = views.overview_data()
        g.paused = data["status"]["paused"]
        return page(
            "overview.html",
            "_overview_live.html",
            status=data["status"],
            chart=_chart(data["throughput"]),
            now=datetime.now(UTC),
        )

    @app.route("/jobs")
    def jobs():
        try:
            filters = _job_filters(request.args)
        except (FilterError, AgeError) as exc:
            return render_template(
                "jobs.html",
                jobs=[],
                error=str(exc),
                args=request.args,
                next_page=None,
                first_page=None,
                agents=_agents(),
            ), 400
        found = find_jobs(filters, PAGE_SIZE + 1)
        args = [(k, v) for k, v in request.args.items(multi=True) if k != "after" and v]
        next_page = first_page = None
        if len(found) > PAGE_SIZE:
            found = found[:PAGE_SIZE]
            last = found[-1]
            next_page = "/jobs?" + urlencode(args + [("after", f"{last['created_at'].isoformat()}|{last['id']}")])
        if request.args.get("after"):
            first_page = "/jobs?" + urlencode(args)
        return render_template(
            "jobs.html",
            jobs=found,
            error=None,
            args=request.args,
            next_page=next_page,
            first_page=first_page,
            agents=_agents(),
        )

    @app.route("/jobs/<job_id>")
    def job(job_id):
        try:
            data = views.job_detail(job_id, with_document=True)
        except EnqueueError:
            abort(404)
        if data is None:
            abort(404)
        evaluation = data["evaluation"]
        segments = views.document_segments(data["document_text"], evaluation["highlights"]) if evaluation else []
        return page(
            "job.html",
            "_job_live.html",
            job=data,
            evaluation=evaluation,
            segments=segments,
            timeline=_timeline(data),
            live=data["status"] in LIVE_STATUSES,
        )

    @app.route("/dead")
    def dead():
        error_class = request.args.get("class") or None
        agent_id = _uuid_or_none(request.args.get("agent"))
        selected = bool(error_class or agent_id)
        data = views.dead_letter_page(error_class=error_class, agent_id=agent_id, limit=100)
        return render_template(
            "dead.html",
            groups=data["groups"],
            letters=data["letters"],
            error_class=error_class,
            agent_id=agent_id,
            selected=selected,
        )

    @app.route("/costs")
    def costs():
        days = max(1, min(request.args.get("days", 7, type=int), 366))
        return render_template("costs.html", costs=views.costs(days), days=days, settings=settings)

    # -- actions -----------------------------------------------------------------------------

    @app.post("/jobs/<job_id>/retry")
    def retry(job_id):
        try:
            new = rerun_job(job_id)
        except EnqueueError as exc:
            flash(str(exc), "error")
            return redirect(url_for("job", job_id=job_id))
        action("retry", [job_id])
        flash(f"rerun {new} enqueued", "ok")
        return redirect(url_for("job", job_id=new))

    @app.post("/jobs/<job_id>/cancel")
    def cancel(job_id):
        try:
            status = cancel_job(job_id, reason=f"cancelled by {g.who} (console)")
            action("cancel", [job_id])
            flash("cancelled" if status == "CANCELLED" else "cancel requested: it stops at its next step", "ok")
        except EnqueueError as exc:
            flash(str(exc), "error")
        return redirect(url_for("job", job_id=job_id))

    @app.post("/bulk")
    def bulk():
        """Retry or cancel the selected jobs (or a dead-letter group), after a confirmation."""
        what = request.form.get("action")
        if what not in ("retry", "cancel"):
            abort(400, "action must be retry or cancel")
        ids = [i for i in request.form.getlist("job_id") if _uuid_or_none(i)]
        if request.form.get("group") == "1":
            ids = [
                str(j["id"])
                for j in views.dead_letters(
                    error_class=request.form.get("error_class") or None,
                    agent_id=_uuid_or_none(request.form.get("agent_id")),
                    limit=BULK_LIMIT,
                )
            ]
        ids = list(dict.fromkeys(ids))[:BULK_LIMIT]
        back = _local(request.form.get("back")) or url_for("jobs")
        if not ids:
            flash("nothing selected", "error")
            return redirect(back)
        if request.form.get("confirmed") != "1":
            return render_template("confirm.html", what=what, ids=ids, back=back)
        done, errors = [], []
        for job_id in ids:
            try:
                if what == "retry":
                    rerun_job(job_id)
                else:
                    cancel_job(job_id, reason=f"cancelled by {g.who} (console)")
                done.append(job_id)
            except EnqueueError as exc:
                errors.append(f"{job_id}: {exc}")
        action(f"bulk {what}", done)
        flash(
            f"{what}: {len(done)} job(s)" + (f"; {len(errors)} refused ({errors[0]}...)" if errors else ""),
            "ok" if not errors else "error",
        )
        return redirect(back)

    @app.post("/pause")
    def pause():
        reason = (request.form.get("reason") or "").strip() or "paused from the console"
        system_pause.pause(reason, by=g.who)
        action("pause", reason)
        flash("paused: no job attempt starts until you resume", "ok")
        return redirect(_local(request.form.get("back")) or url_for("overview"))

    @app.post("/resume")
    def resume():
        ended = system_pause.resume()
        action("resume", ended)
        flash("resumed" if ended else "was not paused", "ok")
        return redirect(url_for("overview"))

    @app.post("/costs/roll-up")
    def roll_up():
        from roastq.ops.maintenance import roll_up_costs

        result = roll_up_costs()
        action("cost roll-up", result)
        flash("costs rolled up from the ledger", "ok")
        return redirect(url_for("costs"))

    @app.errorhandler(404)
    def not_found(exc):
        return render_template("error.html", code=404, message="no such page or job"), 404

    @app.errorhandler(400)
    @app.errorhandler(403)
    def refused(exc):
        return render_template("error.html", code=exc.code, message=exc.description), exc.code

    return app


# -- helpers ---------------------------------------------------------------------------------------


class FilterError(ValueError):
    """A jobs page filter that cannot be applied as written."""


def _local(target: str | None) -> str | None:
    """A redirect target only when it is a path on this site (never another host)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return None


def _uuid_or_none(value) -> str | None:
    try:
        return str(uuid.UUID(str(value))) if value else None
    except ValueError:
        return None


def _agents() -> list[dict]:
    with db.transaction() as cur:
        cur.execute(views.VIEWS.agents)
        return [dict(r) for r in cur.fetchall()]


def _job_filters(args) -> dict:
    """The jobs page's query string -> the filters of ``find_jobs`` (as ``roastq jobs`` has them)."""
    statuses = [s for s in args.getlist("status") if s] or None
    if statuses and set(statuses) - set(STATUSES):
        raise FilterError(f"unknown status: use {', '.join(STATUSES)}")
    error_class = (args.get("class") or "").strip().upper() or None
    agent = (args.get("agent") or "").strip() or None
    after_created_at = after_id = None
    if args.get("after"):
        created, _, last_id = args["after"].partition("|")
        try:
            after_created_at = datetime.fromisoformat(created)
        except ValueError:
            raise FilterError("bad page cursor") from None
        after_id = _uuid_or_none(last_id)
        if after_id is None:
            raise FilterError("bad page cursor")
    return {
        "statuses": statuses,
        "error_class": error_class,
        "queue": args.get("queue") or None,
        "agent_id": _uuid_or_none(agent) if agent else None,
        "document_id": None,
        "since": parse_since(args["since"]) if args.get("since") else None,
        "until": None,
        "search": (args.get("q") or "").strip() or None,
        "after_created_at": after_created_at,
        "after_id": after_id,
    }


def _chart(rows: list[dict]) -> dict:
    """The last hour, a bar a minute: completed above, failed stacked on top."""
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    by_minute = {r["minute"]: r for r in rows}
    bars = []
    for i in range(60):
        minute = now - timedelta(minutes=59 - i)
        r = by_minute.get(minute, {})
        bars.append({"minute": minute, "completed": r.get("completed", 0), "failed": r.get("failed", 0)})
    top = max([b["completed"] + b["failed"] for b in bars] + [1])
    for b in bars:
        b["h_completed"] = round(48 * b["completed"] / top, 1)
        b["h_failed"] = round(48 * b["failed"] / top, 1)
    return {
        "bars": bars,
        "top": top,
        "completed": sum(b["completed"] for b in bars),
        "failed": sum(b["failed"] for b in bars),
    }


def _timeline(job: dict) -> list[dict]:
    """Each attempt as a bar on one time axis, from the job's creation to now (or its end)."""
    start = job["created_at"]
    end = job["completed_at"] or datetime.now(UTC)
    for a in job["attempt_log"]:
        end = max(end, a["ended_at"] or datetime.now(UTC))
    span = max((end - start).total_seconds(), 0.001)
    bars = []
    for a in job["attempt_log"]:
        a_end = a["ended_at"] or datetime.now(UTC)
        left = 100 * (a["started_at"] - start).total_seconds() / span
        width = max(100 * (a_end - a["started_at"]).total_seconds() / span, 0.8)
        bars.append(
            dict(
                a,
                left=round(max(left, 0), 2),
                width=round(min(width, 100 - left), 2),
                duration_s=(a_end - a["started_at"]).total_seconds(),
            )
        )
    return bars
