-- The legacy import (roastq/legacy.py). Queries named legacy_* run on the legacy RoastMyPost
-- database, with search_path set to its schema; they use Prisma's names (quoted camelCase
-- columns, the "JobStatus" enum). The others run on roastq's database.

-- name: legacy_tables
SELECT to_regclass('"Job"') IS NOT NULL AS "Job",
       to_regclass('"Evaluation"') IS NOT NULL AS "Evaluation",
       to_regclass('"DocumentVersion"') IS NOT NULL AS "DocumentVersion",
       to_regclass('"AgentVersion"') IS NOT NULL AS "AgentVersion";

-- name: legacy_counts
SELECT "status"::text AS status, count(*) AS n FROM "Job" GROUP BY 1 ORDER BY 1;

-- name: legacy_pending_jobs
-- One batch, in creation order (keyset: rows skipped by an earlier batch are not met again).
-- Locked until the batch is marked: the old runner cannot claim them meanwhile, and SKIP LOCKED
-- passes over the ones it is claiming right now.
SELECT j."id", j."evaluationId", j."originalJobId", j."attempts", j."createdAt",
       e."documentId", e."agentId"
FROM "Job" j
JOIN "Evaluation" e ON e."id" = j."evaluationId"
WHERE j."status" = 'PENDING'
  AND (%(after_created)s::timestamp IS NULL
       OR (j."createdAt", j."id") > (%(after_created)s::timestamp, %(after_id)s::text))
ORDER BY j."createdAt", j."id"
LIMIT %(limit)s
FOR UPDATE OF j SKIP LOCKED;

-- name: legacy_pending_ids
SELECT "id" FROM "Job" WHERE "status" = 'PENDING';

-- name: legacy_document_versions
-- The latest version of each document: what the old runner would have evaluated.
SELECT DISTINCT ON ("documentId") "id", "documentId", "version", "title", "authors", "content",
       "markdownPrepend"
FROM "DocumentVersion"
WHERE "documentId" = ANY(%(ids)s::text[])
ORDER BY "documentId", "version" DESC;

-- name: legacy_agent_versions
SELECT DISTINCT ON ("agentId") "id", "agentId", "version", "name", "description",
       "primaryInstructions", "selfCritiqueInstructions", "providesGrades"
FROM "AgentVersion"
WHERE "agentId" = ANY(%(ids)s::text[])
ORDER BY "agentId", "version" DESC;

-- name: legacy_mark_moved
-- CANCELLED is a status the old runner never picks up (it claims PENDING) nor retries (it
-- retries FAILED); the log line says where the job went. Only rows still PENDING are touched.
UPDATE "Job" j
SET "status" = 'CANCELLED', "updatedAt" = (now() AT TIME ZONE 'UTC'),
    "logs" = concat_ws(E'\n', j."logs", 'moved to roastq: job ' || m.job_id)
FROM unnest(%(legacy_ids)s::text[], %(job_ids)s::text[]) AS m(legacy_id, job_id)
WHERE j."id" = m.legacy_id AND j."status" = 'PENDING';

-- name: lock_import
-- One importer at a time on roastq's side (documents and agents are created once).
SELECT pg_advisory_xact_lock(hashtext('roastq.legacy_import'));

-- name: imported_jobs
SELECT legacy_id, job_id FROM legacy_jobs WHERE legacy_id = ANY(%(ids)s::text[]);

-- name: imported_count
SELECT count(*) AS n FROM legacy_jobs;

-- name: insert_imported_job
INSERT INTO legacy_jobs (legacy_id, job_id, legacy_evaluation_id, legacy_original_job_id,
                         legacy_attempts, legacy_created_at)
VALUES (%(legacy_id)s, %(job_id)s, %(legacy_evaluation_id)s, %(legacy_original_job_id)s,
        %(legacy_attempts)s, %(legacy_created_at)s);

-- name: mapped_id
SELECT roastq_id FROM legacy_ids WHERE kind = %(kind)s AND legacy_id = %(legacy_id)s;

-- name: map_id
INSERT INTO legacy_ids (kind, legacy_id, roastq_id) VALUES (%(kind)s, %(legacy_id)s, %(roastq_id)s);

-- name: insert_document_version
INSERT INTO document_versions (document_id, version, title, authors, content, markdown_prepend)
SELECT %(document_id)s, coalesce(max(version), 0) + 1, %(title)s, %(authors)s, %(content)s,
       %(markdown_prepend)s
FROM document_versions WHERE document_id = %(document_id)s
RETURNING id;

-- name: insert_agent_version
INSERT INTO agent_versions (agent_id, version, name, description, primary_instructions,
                            self_critique_instructions, provides_grades, time_limit_s)
SELECT %(agent_id)s, coalesce(max(version), 0) + 1, %(name)s, %(description)s,
       %(primary_instructions)s, %(self_critique_instructions)s, %(provides_grades)s, %(time_limit_s)s
FROM agent_versions WHERE agent_id = %(agent_id)s
RETURNING id;
