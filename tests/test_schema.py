"""Migrations, settings and the embedded database."""

import os
import subprocess
import sys
import typing

import anthropic
import psycopg2.errors
import pytest

from roastq import db as roastq_db
from roastq.settings import DEFAULT_ANALYSIS_MODEL, Settings, SettingsError


def test_migrate_is_idempotent(db):
    assert roastq_db.migrate() == []  # the session fixture applied everything already
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM schema_migrations")
        before = cur.fetchone()[0]
        cur.execute(
            "SELECT table_schema, table_name, column_name FROM information_schema.columns "
            "WHERE table_schema IN ('public', 'dramatiq') ORDER BY 1, 2, 3"
        )
        columns = cur.fetchall()
    assert roastq_db.migrate() == []
    with db.cursor() as cur:
        cur.execute("SELECT count(*) FROM schema_migrations")
        assert cur.fetchone()[0] == before
        cur.execute(
            "SELECT table_schema, table_name, column_name FROM information_schema.columns "
            "WHERE table_schema IN ('public', 'dramatiq') ORDER BY 1, 2, 3"
        )
        assert cur.fetchall() == columns


def test_schema_has_the_domain_tables(db):
    with db.cursor() as cur:
        cur.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")
        tables = {r[0] for r in cur.fetchall()}
        cur.execute("SELECT column_name FROM information_schema.columns WHERE table_name = 'jobs'")
        job_columns = {r[0] for r in cur.fetchall()}
    assert {
        "documents",
        "document_versions",
        "agents",
        "agent_versions",
        "evaluations",
        "evaluation_versions",
        "highlights",
        "comments",
        "tasks",
        "jobs",
        "job_attempts",
    } <= tables
    assert {
        "id",
        "evaluation_id",
        "document_version_id",
        "agent_version_id",
        "status",
        "queue",
        "attempts",
        "error_class",
        "error",
        "created_at",
        "started_at",
        "completed_at",
        "updated_at",
        "duration_s",
        "price_usd",
        "original_job_id",
        "evaluation_version_id",
        "message_id",
    } <= job_columns


def test_job_status_is_constrained(db, seeded):
    from roastq.api import enqueue_evaluation

    doc, agent = next(iter(seeded.documents.values())), next(iter(seeded.agents.values()))
    job_id = enqueue_evaluation(doc, agent)
    with pytest.raises(psycopg2.errors.CheckViolation):
        with db.cursor() as cur:
            cur.execute("UPDATE jobs SET status = 'DONE' WHERE id = %s", (job_id,))


@pytest.mark.unit
def test_default_model_is_current():
    known = typing.get_args(typing.get_args(anthropic.types.ModelParam)[0])
    from anthropic._data.deprecated_models import DEPRECATED_MODELS

    assert DEFAULT_ANALYSIS_MODEL in known
    assert DEFAULT_ANALYSIS_MODEL not in DEPRECATED_MODELS


@pytest.mark.unit
def test_settings_from_env(monkeypatch):
    monkeypatch.setenv("METRICS_PORT", "9999")
    monkeypatch.setenv("LOG_FORMAT", "pretty")
    monkeypatch.setenv("ANALYSIS_MODEL", "claude-haiku-4-5")
    s = Settings.from_env()
    assert (s.metrics_port, s.log_format, s.analysis_model) == (9999, "pretty", "claude-haiku-4-5")


@pytest.mark.unit
@pytest.mark.parametrize("name,value", [("METRICS_PORT", "ninety"), ("LOG_FORMAT", "xml")])
def test_bad_settings_are_clear_errors(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError, match=name):
        Settings.from_env()


def test_embedded_postgres_when_database_url_unset(tmp_path):
    """Without DATABASE_URL, `roastq migrate` starts pgserver under ROASTQ_HOME and reuses it."""
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env["ROASTQ_HOME"] = str(tmp_path / ".roastq")
    cmd = [sys.executable, "-m", "roastq.cli.main", "migrate"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("applied: 0001_broker, 0002_domain")
    assert (tmp_path / ".roastq" / "pgdata" / "PG_VERSION").exists()
    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    assert "nothing to apply" in second.stdout  # same data directory, reused


def test_the_console_indexes_serve_its_hot_reads(db):
    """Migration 0016: the overview's message counts index-only through queue_live_idx, one class
    of dead letters (and the jobs page's FAILED + class filter) along jobs_failed_class_idx. The
    plans are asked with sequential scans off: what matters is that the index can serve them."""
    from roastq.ops.views import OPS, VIEWS

    finds = dict(queue=None, agent_id=None, document_id=None, since=None, until=None, search=None)
    finds.update(after_created_at=None, after_id=None, limit=51, statuses=["FAILED"], error_class="AUTH")
    cases = [
        (OPS.queue_summary, {"with_done": False}, "Index Only Scan using queue_live_idx"),
        (VIEWS.dead_letters, {"error_class": "AUTH", "agent_id": None, "limit": 100}, "jobs_failed_class_idx"),
        (OPS.find_jobs, finds, "jobs_failed_class_idx"),
    ]
    with db.cursor() as cur:
        cur.execute("BEGIN")
        cur.execute("SET LOCAL enable_seqscan = off")
        cur.execute("SET LOCAL enable_bitmapscan = off")
        try:
            for sql, params, expected in cases:
                cur.execute("EXPLAIN " + sql, params)
                plan = "\n".join(r[0] for r in cur.fetchall())
                assert expected in plan, plan
        finally:
            cur.execute("ROLLBACK")
