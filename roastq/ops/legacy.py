"""Moving work off RoastMyPost's legacy job table (``roastq legacy import``; docs/migration.md).

The legacy runner polls a Prisma-managed ``"Job"`` table (quoted camelCase columns, a
``"JobStatus"`` enum: PENDING, RUNNING, COMPLETED, FAILED, CANCELLED) whose rows point at an
``"Evaluation"`` (``"documentId"``, ``"agentId"``). The import takes its PENDING rows and, for each:

1. copies the document's and agent's latest legacy versions here once (``legacy_ids`` maps
   legacy ids to ours; a newer legacy version is copied as a new version);
2. creates the job here, with its message, and records ``legacy_jobs`` (legacy id -> job id);
3. marks the legacy row CANCELLED, with ``moved to roastq: job <id>`` appended to its
   ``"logs"``: the old runner only claims PENDING rows and only retries FAILED ones.

Idempotent: a second run finds no PENDING row, and a row already in ``legacy_jobs`` never gets a
second job. Order of commits: a batch's legacy rows stay locked (FOR UPDATE) while its jobs are
created and committed here, then the legacy rows are marked and committed. If the process dies
between the two commits, the rows are still PENDING but already mapped: the next run only marks
them (in that window the old runner could claim one too: run the import while the old runner is
stopped or idle, as docs/migration.md says, if a duplicate evaluation matters).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC

import psycopg2
import psycopg2.extras
from psycopg2 import sql

from roastq import db
from roastq.api import insert_and_send
from roastq.db import Q
from roastq.settings import get_settings
from roastq.sql import load_queries

LQ = load_queries("legacy.sql", __package__)


class LegacyError(ValueError):
    """The legacy database cannot be read as a RoastMyPost job table."""


def connect(url: str | None = None, schema: str = "public"):
    """A connection to the legacy database, its search_path set to the legacy schema."""
    url = url or get_settings().legacy_database_url or db.database_url()
    try:
        conn = psycopg2.connect(url, connect_timeout=10, application_name="roastq-legacy-import")
    except psycopg2.OperationalError as exc:
        raise LegacyError(f"cannot connect to the legacy database: {str(exc).strip().splitlines()[0]}") from None
    try:
        with conn, conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(schema)))
            cur.execute(LQ.legacy_tables)
            missing = [name for name, present in cur.fetchone().items() if not present]
        if missing:
            raise LegacyError(f"schema {schema!r} has no legacy table {', '.join(repr(m) for m in missing)}")
    except Exception:
        conn.close()
        raise
    return conn


def status(*, url: str | None = None, schema: str = "public") -> dict:
    """Legacy jobs by status, and how many were imported here."""
    legacy = connect(url, schema)
    try:
        with legacy, legacy.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(LQ.legacy_counts)
            counts = {r["status"]: r["n"] for r in cur.fetchall()}
    finally:
        legacy.close()
    with db.transaction() as cur:
        cur.execute(LQ.imported_count)
        imported = cur.fetchone()["n"]
    return {
        "legacy": counts,
        "imported": imported,
        "old_runner_busy": counts.get("RUNNING", 0),
        "left_to_import": counts.get("PENDING", 0),
    }


def import_pending(
    *,
    url: str | None = None,
    schema: str = "public",
    queue: str = "interactive",
    batch_size: int = 200,
    dry_run: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> dict:
    """Import the legacy PENDING jobs; return counts (``created``, ``already_imported``,
    ``skipped`` with reasons)."""
    legacy = connect(url, schema)
    try:
        with legacy, legacy.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(LQ.legacy_pending_ids)
            pending = [r["id"] for r in cur.fetchall()]
        if dry_run:
            with db.transaction() as cur:
                cur.execute(LQ.imported_jobs, {"ids": pending})
                mapped = len(cur.fetchall())
            return {"pending": len(pending), "already_imported": mapped, "would_create": len(pending) - mapped}
        result = {"pending": len(pending), "created": 0, "already_imported": 0, "skipped": []}
        after, seen = (None, ""), 0
        while True:
            with legacy, legacy.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                cur.execute(
                    LQ.legacy_pending_jobs, {"after_created": after[0], "after_id": after[1], "limit": batch_size}
                )
                batch = cur.fetchall()
                if not batch:
                    break
                after = (batch[-1]["createdAt"], batch[-1]["id"])
                cur.execute(LQ.legacy_document_versions, {"ids": sorted({r["documentId"] for r in batch})})
                documents = {r["documentId"]: r for r in cur.fetchall()}
                cur.execute(LQ.legacy_agent_versions, {"ids": sorted({r["agentId"] for r in batch})})
                agents = {r["agentId"]: r for r in cur.fetchall()}
                moved = _import_batch(batch, documents, agents, queue, result)  # committed here
                if moved:
                    cur.execute(
                        LQ.legacy_mark_moved, {"legacy_ids": [m[0] for m in moved], "job_ids": [m[1] for m in moved]}
                    )
            # The legacy transaction commits here: the rows are marked and unlocked.
            seen += len(batch)
            if progress is not None:
                progress(seen, max(seen, len(pending)))
        return result
    finally:
        legacy.close()


def _import_batch(batch, documents, agents, queue, result) -> list[tuple[str, str]]:
    """Create the jobs of one batch here, in one transaction; return (legacy id, job id) pairs
    to mark on the legacy side."""
    moved = []
    with db.transaction() as cur:
        cur.execute(LQ.lock_import)
        cur.execute(
            LQ.imported_jobs,
            {"ids": [r["id"] for r in batch] + [r["originalJobId"] for r in batch if r["originalJobId"]]},
        )
        imported = {r["legacy_id"]: str(r["job_id"]) for r in cur.fetchall()}
        for row in batch:
            if row["id"] in imported:
                moved.append((row["id"], imported[row["id"]]))
                result["already_imported"] += 1
                continue
            document, agent = documents.get(row["documentId"]), agents.get(row["agentId"])
            if document is None or agent is None:
                what = f"document {row['documentId']}" if document is None else f"agent {row['agentId']}"
                result["skipped"].append({"legacy_id": row["id"], "reason": f"{what} has no version"})
                continue  # left PENDING for the old runner
            cur.execute(
                Q.upsert_evaluation,
                {"document_id": _document_id(cur, row["documentId"]), "agent_id": _agent_id(cur, row["agentId"])},
            )
            evaluation_id = cur.fetchone()["id"]
            job_id = insert_and_send(
                cur,
                evaluation_id=evaluation_id,
                document_version_id=_document_version_id(cur, document),
                agent_version_id=_agent_version_id(cur, agent),
                queue=queue,
                original_job_id=imported.get(row["originalJobId"]),
            )
            created_at = row["createdAt"]
            if created_at is not None and created_at.tzinfo is None:
                created_at = created_at.replace(tzinfo=UTC)  # Prisma stores UTC in timestamp(3)
            cur.execute(
                LQ.insert_imported_job,
                {
                    "legacy_id": row["id"],
                    "job_id": job_id,
                    "legacy_evaluation_id": row["evaluationId"],
                    "legacy_original_job_id": row["originalJobId"],
                    "legacy_attempts": row["attempts"] or 0,
                    "legacy_created_at": created_at,
                },
            )
            imported[row["id"]] = job_id
            moved.append((row["id"], job_id))
            result["created"] += 1
    return moved


def _mapped(cur, kind: str, legacy_id: str):
    cur.execute(LQ.mapped_id, {"kind": kind, "legacy_id": legacy_id})
    row = cur.fetchone()
    return row["roastq_id"] if row else None


def _map(cur, kind: str, legacy_id: str, roastq_id) -> None:
    cur.execute(LQ.map_id, {"kind": kind, "legacy_id": legacy_id, "roastq_id": roastq_id})


def _entity_id(cur, kind: str, legacy_id: str, insert: str):
    """Our document or agent for a legacy one, created (by slug, as `roastq seed` does) once."""
    found = _mapped(cur, kind, legacy_id)
    if found is None:
        cur.execute(insert, {"slug": f"legacy/{legacy_id}"})
        found = cur.fetchone()["id"]
        _map(cur, kind, legacy_id, found)
    return found


def _document_id(cur, legacy_id: str):
    return _entity_id(cur, "document", legacy_id, Q.seed_document)


def _agent_id(cur, legacy_id: str):
    return _entity_id(cur, "agent", legacy_id, Q.seed_agent)


def _document_version_id(cur, v: dict):
    found = _mapped(cur, "document_version", v["id"])
    if found is None:
        cur.execute(
            LQ.insert_document_version,
            {
                "document_id": _document_id(cur, v["documentId"]),
                "title": v["title"] or "(untitled)",
                "authors": list(v["authors"] or []),
                "content": v["content"] or "",
                "markdown_prepend": v["markdownPrepend"],
            },
        )
        found = cur.fetchone()["id"]
        _map(cur, "document_version", v["id"], found)
    return found


def _agent_version_id(cur, v: dict):
    found = _mapped(cur, "agent_version", v["id"])
    if found is None:
        cur.execute(
            LQ.insert_agent_version,
            {
                "agent_id": _agent_id(cur, v["agentId"]),
                "name": v["name"],
                "description": v["description"] or "",
                "primary_instructions": v["primaryInstructions"] or "",
                "self_critique_instructions": v["selfCritiqueInstructions"],
                "provides_grades": bool(v["providesGrades"]),
                "time_limit_s": get_settings().default_time_limit_s,
            },
        )
        found = cur.fetchone()["id"]
        _map(cur, "agent_version", v["id"], found)
    return found
