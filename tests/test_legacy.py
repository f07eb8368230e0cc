"""`roastq legacy import`: a legacy RoastMyPost database (Prisma naming, "JobStatus" enum) in a
database of its own; its PENDING jobs become jobs here exactly once, and the old runner no
longer sees them. The real command, as a process."""

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import psycopg2
import pytest
from helpers import one, rows, wait_for_status
from psycopg2.extensions import make_dsn

SCHEMA_SQL = (Path(__file__).parent / "legacy_schema.sql").read_text()
DDL, SEED = SCHEMA_SQL.split("-- name: seed")
PENDING = ["job_p1", "job_p2", "job_p3"]


@pytest.fixture
def legacy(database_url):
    """The old app's database: (url, connection)."""
    name = f"roastq_legacy_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(database_url)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    url = make_dsn(database_url, dbname=name)
    conn = psycopg2.connect(url)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(DDL)
        cur.execute(SEED)
    yield url, conn
    conn.close()
    with admin.cursor() as cur:
        cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        cur.execute(f'DROP DATABASE "{name}"')
    admin.close()


def legacy_import(url, *args):
    return subprocess.run(
        [sys.executable, "-m", "roastq.cli.main", "legacy", "import", "--url", url, "--json", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ),
    )


class Ran:
    def __init__(self, returncode, stdout, stderr):
        self.returncode, self.stdout, self.stderr = returncode, stdout, stderr


def legacy_cli(capsys, url, *args, command="import"):
    """The same command in this process (quicker than a new interpreter)."""
    from roastq.cli.main import main

    capsys.readouterr()
    code = main(["legacy", command, "--url", url, "--json", *args])
    out, err = capsys.readouterr()
    return Ran(code, out, err)


def imported(db):
    return dict(rows(db, "SELECT legacy_id, job_id::text FROM legacy_jobs"))


def test_import_creates_each_pending_job_once_and_hides_it_from_the_old_runner(db, legacy, capsys):
    url, old = legacy
    result = legacy_import(url, "--batch-size", "2")  # two batches
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"pending": 3, "created": 3, "already_imported": 0, "skipped": []}
    assert "legacy jobs: 3/3" in result.stderr  # progress
    mapping = imported(db)
    assert sorted(mapping) == PENDING
    assert rows(db, "SELECT DISTINCT status, queue, attempts FROM jobs") == [("PENDING", "interactive", 0)]
    assert (
        one(
            db,
            "SELECT count(*) FROM dramatiq.queue q JOIN jobs j ON j.message_id = q.message_id WHERE q.state = 'queued'",
        )
        == 3
    )
    # The legacy rows: moved ones CANCELLED with a note naming the new job; the others untouched.
    legacy_rows = {r[0]: r[1:] for r in rows(old, 'SELECT "id", "status"::text, "logs" FROM "Job"')}
    for legacy_id in PENDING:
        assert legacy_rows[legacy_id] == ("CANCELLED", f"moved to roastq: job {mapping[legacy_id]}")
    assert [legacy_rows[i][0] for i in ("job_failed", "job_done", "job_running")] == ["FAILED", "COMPLETED", "RUNNING"]
    # What the old runner does (claim the oldest PENDING job) finds nothing any more.
    assert (
        rows(
            old,
            """UPDATE "Job" SET "status" = 'RUNNING' WHERE "id" = (SELECT "id" FROM "Job"
                        WHERE "status" = 'PENDING' ORDER BY "createdAt" LIMIT 1) RETURNING "id" """,
        )
        == []
    )
    # The legacy documents and agents were copied once, at their latest versions.
    assert one(db, "SELECT count(*) FROM documents WHERE slug LIKE 'legacy/%%'") == 2
    assert (
        one(
            db,
            "SELECT dv.title FROM jobs j JOIN document_versions dv ON dv.id = j.document_version_id WHERE j.id = %s",
            mapping["job_p1"],
        )
        == "Naps, revisited"
    )  # version 2, not the draft
    assert (
        one(
            db,
            "SELECT av.self_critique_instructions IS NOT NULL FROM jobs j JOIN agent_versions av "
            "ON av.id = j.agent_version_id WHERE j.id = %s",
            mapping["job_p3"],
        )
        is True
    )
    assert one(db, "SELECT legacy_original_job_id, legacy_attempts FROM legacy_jobs WHERE legacy_id = 'job_p3'") == (
        "job_failed",
        1,
    )

    # A second run adds nothing.
    result = legacy_cli(capsys, url)
    assert json.loads(result.stdout) == {"pending": 0, "created": 0, "already_imported": 0, "skipped": []}
    assert one(db, "SELECT count(*) FROM jobs") == 3 and imported(db) == mapping

    # The process died between its two commits: the row is PENDING again, but mapped. Marked, once.
    with old.cursor() as cur:
        cur.execute("""UPDATE "Job" SET "status" = 'PENDING' WHERE "id" = 'job_p2'""")
    result = legacy_cli(capsys, url)
    assert json.loads(result.stdout)["already_imported"] == 1 and json.loads(result.stdout)["created"] == 0
    assert one(db, "SELECT count(*) FROM jobs") == 3
    assert one(old, """SELECT "status"::text FROM "Job" WHERE "id" = 'job_p2'""") == "CANCELLED"

    status = legacy_cli(capsys, url, command="status")
    assert json.loads(status.stdout) == {
        "legacy": {"CANCELLED": 3, "COMPLETED": 1, "FAILED": 1, "RUNNING": 1},
        "imported": 3,
        "old_runner_busy": 1,
        "left_to_import": 0,
    }


def test_imported_jobs_run_here(db, legacy, worker, sim, capsys):
    url, _ = legacy
    assert legacy_cli(capsys, url).returncode == 0
    mapping = imported(db)
    assert set(wait_for_status(db, mapping.values()).values()) == {"COMPLETED"}
    assert one(db, "SELECT count(*) FROM evaluation_versions") == 3


def test_dry_run_only_counts(db, legacy, capsys):
    url, old = legacy
    result = legacy_cli(capsys, url, "--dry-run")
    assert result.returncode == 0
    assert json.loads(result.stdout) == {"pending": 3, "already_imported": 0, "would_create": 3}
    assert one(db, "SELECT count(*) FROM jobs") == 0
    assert one(old, """SELECT count(*) FROM "Job" WHERE "status" = 'PENDING'""") == 3


def test_a_job_without_a_document_version_is_skipped_and_left_to_the_old_runner(db, legacy, capsys):
    url, old = legacy
    with old.cursor() as cur:
        cur.execute("""INSERT INTO "Document" ("id", "updatedAt", "submittedById") VALUES ('doc_empty', now(), 'u');
                       INSERT INTO "Evaluation" ("id", "documentId", "agentId") VALUES ('ev_x', 'doc_empty', 'agent_clarity');
                       INSERT INTO "Job" ("id", "evaluationId", "updatedAt") VALUES ('job_orphan', 'ev_x', now())""")
    result = legacy_cli(capsys, url)
    assert result.returncode == 1  # a script must notice
    data = json.loads(result.stdout)
    assert data["created"] == 3
    assert data["skipped"] == [{"legacy_id": "job_orphan", "reason": "document doc_empty has no version"}]
    assert "skipped job_orphan: document doc_empty has no version (left PENDING)" in result.stderr
    assert one(old, """SELECT "status"::text FROM "Job" WHERE "id" = 'job_orphan'""") == "PENDING"


def test_a_newer_legacy_version_is_copied_for_later_jobs(db, legacy, capsys):
    url, old = legacy
    legacy_cli(capsys, url)
    with old.cursor() as cur:
        cur.execute("""INSERT INTO "DocumentVersion" ("id", "version", "title", "authors", "content", "documentId",
                                                      "updatedAt")
                       VALUES ('dv_4', 3, 'Naps, final', '{Ann Author}', 'Final text.', 'doc_a1b2c3d4e5f6', now());
                       INSERT INTO "Job" ("id", "evaluationId", "updatedAt") VALUES ('job_p4', 'ev_1', now())""")
    legacy_cli(capsys, url)
    assert one(
        db,
        "SELECT dv.title, dv.version FROM legacy_jobs l JOIN jobs j ON j.id = l.job_id "
        "JOIN document_versions dv ON dv.id = j.document_version_id WHERE l.legacy_id = 'job_p4'",
    ) == ("Naps, final", 2)  # the second version of that document here
    assert one(db, "SELECT count(*) FROM documents") == 2


def test_two_imports_at_once_create_each_job_once(db, legacy):
    url, _ = legacy
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "roastq.cli.main", "legacy", "import", "--url", url, "--json", "--batch-size", "1"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=dict(os.environ),
        )
        for _ in range(2)
    ]
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sum(r["created"] for r in results) == 3
    assert one(db, "SELECT count(*) FROM jobs") == 3 and sorted(imported(db)) == PENDING


def test_not_a_legacy_schema_is_a_usage_error(db, legacy, capsys):
    url, _ = legacy
    result = legacy_cli(capsys, url, "--schema", "nothing_here")
    assert result.returncode == 2
    assert "has no legacy table" in result.stderr and "Traceback" not in result.stderr
    result = legacy_cli(capsys, "postgresql://postgres@127.0.0.1:1/nowhere")
    assert result.returncode == 2 and "cannot connect to the legacy database" in result.stderr
