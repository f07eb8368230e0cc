"""Health: `roastq health` (its exit code), and /healthz + /readyz over HTTP, on the metrics
exporter and as a WSGI app. Database reachable, schema present, a worker heartbeat fresh."""

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from wsgiref.simple_server import WSGIRequestHandler, make_server

import psycopg2
import pytest
from helpers import one, running_worker, wait_until
from psycopg2.extensions import make_dsn

from roastq.ops import health


def run_health(*args, **env):
    return subprocess.run(
        [sys.executable, "-m", "roastq.cli.main", "health", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, **env),
    )


def checks(report):
    return {c.name: c.ok for c in report.checks}


def test_ready_with_a_live_worker(db, broker, sim):
    with running_worker(broker, threads=2):
        wait_until(lambda: one(db, "SELECT count(*) FROM worker_heartbeats") == 1, what="a heartbeat")
        report = health.check("ready")
        assert report.ok and checks(report)["workers"] is True
        result = run_health()
        assert result.returncode == 0, result.stdout + result.stderr
        assert "healthy" in result.stdout and "1 live" in result.stdout


def test_without_a_worker_it_is_live_but_not_ready(db):
    report = health.check("ready")
    assert not report.ok
    got = checks(report)
    assert got.pop("vacuum") is one(db, "SELECT current_setting('autovacuum')::boolean")  # reported only
    assert got == {"database": True, "schema": True, "workers": False, "scheduler": False, "pause": True}
    assert health.check("live").ok
    result = run_health("--json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["status"] == "unhealthy" and "no worker has beaten" in str(data["checks"])
    assert run_health("--live").returncode == 0


def test_a_stale_heartbeat_is_not_a_live_worker(db):
    with db.cursor() as cur:
        cur.execute(
            "INSERT INTO worker_heartbeats (worker_id, hostname, pid, threads, last_seen_at) "
            "VALUES ('dead:1', 'dead', 1, 4, now() - interval '1 minute')"
        )
    assert checks(health.check("ready"))["workers"] is False


def test_scheduler_ticks_are_reported_but_never_fail_health(db, broker, sim):
    from roastq.ops import scheduler

    scheduler.run_tick("reap_stale_jobs", "2026-03-01T12:00:00+00:00", lambda: {})
    with db.cursor() as cur:
        cur.execute("UPDATE schedule_ticks SET claimed_at = now()")
    with running_worker(broker, threads=2):
        wait_until(lambda: one(db, "SELECT count(*) FROM worker_heartbeats") == 1, what="a heartbeat")
        report = health.check("ready")
        assert checks(report)["scheduler"] is True
        with db.cursor() as cur:
            cur.execute("UPDATE schedule_ticks SET claimed_at = now() - interval '10 minutes'")
        report = health.check("ready")
        assert checks(report)["scheduler"] is False and report.ok  # a warning, not unhealthy


def test_database_unreachable_fails_fast(db):
    started = time.monotonic()
    result = run_health("--json", DATABASE_URL="postgresql://postgres@127.0.0.1:1/nowhere")
    assert result.returncode == 1
    assert time.monotonic() - started < 15
    data = json.loads(result.stdout)
    assert data["checks"][0]["name"] == "database" and not data["checks"][0]["ok"]
    assert "unreachable" in data["checks"][0]["detail"]
    assert "Traceback" not in result.stderr


@pytest.fixture
def empty_database(database_url):
    """A second, empty database on the test server."""
    name = f"roastq_empty_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(database_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    yield make_dsn(database_url, dbname=name)
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        cur.execute(f'DROP DATABASE "{name}"')
    admin.close()


def test_missing_broker_schema_is_unhealthy(empty_database):
    report = health.check("live", url=empty_database)
    assert checks(report) == {"database": True, "schema": False}
    assert "dramatiq.queue" in report.checks[1].detail and "roastq migrate" in report.checks[1].detail


def test_unapplied_migration_is_unhealthy(db):
    with db.cursor() as cur:
        cur.execute("DELETE FROM schema_migrations WHERE version = 6 RETURNING name")
        name = cur.fetchone()[0]
    try:
        report = health.check("live")
        assert not report.ok and f"0006_{name}" in report.checks[1].detail
    finally:
        with db.cursor() as cur:
            cur.execute("INSERT INTO schema_migrations (version, name) VALUES (6, %s)", (name,))


def get(url):
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):
        pass


def test_healthz_and_readyz_as_a_wsgi_app(db):
    inner_calls = []

    def metrics_app(environ, start_response):
        inner_calls.append(environ["PATH_INFO"])
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"metrics"]

    server = make_server("127.0.0.1", 0, health.with_health(metrics_app), handler_class=QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        status, body = get(f"{base}/healthz")
        assert status == 200 and json.loads(body)["level"] == "live"
        status, body = get(f"{base}/readyz")
        assert status == 503 and json.loads(body)["status"] == "unhealthy"  # no worker
        assert get(f"{base}/metrics") == (200, b"metrics") and inner_calls == ["/metrics"]
    finally:
        server.shutdown()
        server.server_close()
    wsgi = make_server("127.0.0.1", 0, health.wsgi_app, handler_class=QuietHandler)
    threading.Thread(target=wsgi.serve_forever, daemon=True).start()
    try:
        assert get(f"http://127.0.0.1:{wsgi.server_port}/other")[0] == 404
    finally:
        wsgi.shutdown()
        wsgi.server_close()


def test_healthz_and_readyz_on_the_metrics_exporter(db, broker, sim):
    from observability.exporter import make_server as make_exporter

    server = make_exporter("127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert get(f"{base}/healthz")[0] == 200
        assert get(f"{base}/readyz")[0] == 503
        with running_worker(broker, threads=2):
            wait_until(lambda: one(db, "SELECT count(*) FROM worker_heartbeats") == 1, what="a heartbeat")
            status, body = get(f"{base}/readyz")
            assert status == 200 and json.loads(body)["status"] == "ok"
        assert get(f"{base}/metrics")[0] == 200
    finally:
        server.shutdown()
        server.server_close()


def test_vacuum_held_back_is_reported_but_never_fails_health(db, database_url, monkeypatch):
    """autovacuum off on the server, or a session holding its snapshot (idle in transaction):
    the queue tables' dead rows pile up. Reported as the vacuum check, never critical."""
    monkeypatch.setattr(health, "VACUUM_HELD_S", 0.5)
    autovacuum = one(db, "SELECT current_setting('autovacuum')::boolean")
    report = health.check("live")
    assert "vacuum" not in checks(report)  # a ready-level check
    report = health.check("ready")
    vacuum = next(c for c in report.checks if c.name == "vacuum")
    assert vacuum.ok is autovacuum and not vacuum.critical
    assert ("autovacuum is off on this server" in vacuum.detail) is (not autovacuum)
    holder = psycopg2.connect(database_url)
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT txid_current(), pg_backend_pid()")  # psycopg2 began a transaction
            pid = cur.fetchone()[1]
        time.sleep(1.0)
        vacuum = next(c for c in health.check("ready").checks if c.name == "vacuum")
        assert not vacuum.ok and f"session {pid} (idle in transaction) has held a snapshot" in vacuum.detail
        with db.cursor() as cur:
            cur.execute("ALTER TABLE jobs SET (autovacuum_enabled = false)")
        try:
            vacuum = next(c for c in health.check("ready").checks if c.name == "vacuum")
            assert "autovacuum is disabled on jobs" in vacuum.detail
        finally:
            with db.cursor() as cur:
                cur.execute("ALTER TABLE jobs RESET (autovacuum_enabled)")
    finally:
        holder.close()
    assert f"session {pid}" not in next(c for c in health.check("ready").checks if c.name == "vacuum").detail
