-- Named queries. psycopg2 parameters: %(name)s.

-- name: enqueue_evaluation
-- roastq.api.enqueue_evaluation in one statement: the latest document and agent versions, the
-- evaluation found or inserted, then the job row (the piece of roastq.jobs, in place of the job marker
-- below) and the message with its NOTIFY (the broker's piece, roastq.brokers, for the send marker). An unknown document or agent finds no row: nothing is written, and
-- the counts say which was missing.
-- An existing evaluation is read, never written: an upsert's DO UPDATE would leave a dead version
-- of that one row at every enqueue, and where vacuum is held back every later read of the row
-- (each enqueue, each start) walks all of them. The evaluation inserted by a concurrent first
-- enqueue after this statement's snapshot is neither inserted (DO NOTHING) nor seen: no source
-- row, nothing written, and the caller runs the statement again (roastq.api).
WITH document AS (
    SELECT id FROM document_versions WHERE document_id = %(document_id)s ORDER BY version DESC LIMIT 1
), agent AS (
    SELECT id FROM agent_versions WHERE agent_id = %(agent_id)s ORDER BY version DESC LIMIT 1
), inserted AS (
    INSERT INTO evaluations (document_id, agent_id)
    SELECT %(document_id)s::uuid, %(agent_id)s::uuid FROM document, agent
    ON CONFLICT (document_id, agent_id) DO NOTHING
    RETURNING id
), evaluation AS (
    SELECT id FROM inserted
    UNION ALL
    SELECT id FROM evaluations WHERE document_id = %(document_id)s::uuid AND agent_id = %(agent_id)s::uuid
), source AS (
    SELECT e.id AS evaluation_id, d.id AS document_version_id, a.id AS agent_version_id,
           %(queue)s::text AS queue, NULL::uuid AS original_job_id
    FROM evaluation e, document d, agent a
),
{job},
{send}
SELECT (SELECT count(*) FROM document) AS documents, (SELECT count(*) FROM agent) AS agents,
       (SELECT id FROM job) AS job_id, (SELECT queue FROM job) AS queue, (SELECT count(*) FROM sent) AS sent;

-- name: rerun_job
-- roastq.api.rerun_job in one statement: a finished job's pinned versions, evaluation and queue,
-- then the job row and the message as above. An unknown or unfinished job gives no source row: nothing is
-- written, and the original's status says why.
WITH original AS (
    SELECT id, status, evaluation_id, document_version_id, agent_version_id, queue
    FROM jobs WHERE id = %(original_job_id)s
), source AS (
    SELECT evaluation_id, document_version_id, agent_version_id, queue, id AS original_job_id
    FROM original WHERE status = ANY(%(finished)s::text[])
),
{job},
{send}
SELECT (SELECT status FROM original) AS original_status, (SELECT queue FROM original) AS queue,
       (SELECT id FROM job) AS job_id, (SELECT count(*) FROM sent) AS sent;

-- name: upsert_evaluation
INSERT INTO evaluations (document_id, agent_id)
VALUES (%(document_id)s, %(agent_id)s)
ON CONFLICT (document_id, agent_id) DO UPDATE SET document_id = EXCLUDED.document_id
RETURNING id;

-- name: job_by_id
SELECT j.*, e.document_id, e.agent_id
FROM jobs j JOIN evaluations e ON e.id = j.evaluation_id
WHERE j.id = %(job_id)s;

-- name: job_logs
-- A job's own log lines, every attempt's, in the order they were written (roastq/sql/jobs.sql,
-- append_logs).
SELECT coalesce(jsonb_agg(x.line ORDER BY l.id, x.n), '[]'::jsonb) AS logs
FROM job_logs l CROSS JOIN LATERAL jsonb_array_elements(l.lines) WITH ORDINALITY AS x(line, n)
WHERE l.job_id = %(job_id)s;

-- name: job_inputs
-- Everything the pipeline needs, from the versions pinned at enqueue.
SELECT j.id AS job_id, j.evaluation_id, j.status,
       dv.id AS document_version_id, dv.title, dv.authors, dv.content, dv.markdown_prepend,
       av.id AS agent_version_id, av.agent_id, av.name AS agent_name,
       av.primary_instructions, av.self_critique_instructions, av.provides_grades
FROM jobs j
JOIN document_versions dv ON dv.id = j.document_version_id
JOIN agent_versions av ON av.id = j.agent_version_id
WHERE j.id = %(job_id)s;

-- name: next_evaluation_version
-- Called with the job row locked (a deferred `lock` before it, in the same round trip); the
-- evaluation row lock serialises versions per evaluation. With the job's status, read after its
-- lock: a finished job's result is discarded without a round trip of its own for the lock.
SELECT coalesce(max(ev.version), 0) + 1 AS version,
       (SELECT j.status FROM jobs j WHERE j.id = %(job_id)s) AS job_status
FROM evaluations e LEFT JOIN evaluation_versions ev ON ev.evaluation_id = e.id
WHERE e.id = %(evaluation_id)s
GROUP BY e.id;

-- name: lock_evaluation
SELECT id FROM evaluations WHERE id = %(evaluation_id)s FOR UPDATE;

-- name: insert_evaluation_version
INSERT INTO evaluation_versions (evaluation_id, version, job_id, agent_version_id,
                                 document_version_id, summary, analysis, grade, self_critique, repairs)
VALUES (%(evaluation_id)s, %(version)s, %(job_id)s, %(agent_version_id)s, %(document_version_id)s,
        %(summary)s, %(analysis)s, %(grade)s, %(self_critique)s, %(repairs)s)
RETURNING id;

-- name: insert_highlight
INSERT INTO highlights (evaluation_version_id, start_offset, end_offset, quoted_text, prefix,
                        is_valid, error)
VALUES (%(evaluation_version_id)s, %(start_offset)s, %(end_offset)s, %(quoted_text)s, %(prefix)s,
        %(is_valid)s, %(error)s)
RETURNING id;

-- name: insert_comment
INSERT INTO comments (evaluation_version_id, highlight_id, description, header, importance,
                      grade, level)
VALUES (%(evaluation_version_id)s, %(highlight_id)s, %(description)s, %(header)s, %(importance)s,
        %(grade)s, %(level)s);

-- name: insert_task
-- Tokens and price: what the step was billed over all attempts (job_steps); cached/saved_usd: a
-- response-cache hit, which bills nothing and saves what the original call cost.
INSERT INTO tasks (job_id, evaluation_version_id, name, model, input_tokens, output_tokens,
                   cache_read_tokens, cache_write_tokens, price_usd, duration_s, cached, saved_usd)
VALUES (%(job_id)s, %(evaluation_version_id)s, %(name)s, %(model)s, %(input_tokens)s,
        %(output_tokens)s, %(cache_read_tokens)s, %(cache_write_tokens)s, %(price_usd)s,
        %(duration_s)s, %(cached)s, %(saved_usd)s);

-- name: list_jobs
SELECT j.id, j.status, j.queue, j.attempts, j.error_class, j.error, j.created_at, j.started_at,
       j.completed_at, j.duration_s, j.price_usd, j.evaluation_version_id, j.original_job_id,
       dv.title AS document_title, av.name AS agent_name
FROM jobs j
JOIN document_versions dv ON dv.id = j.document_version_id
JOIN agent_versions av ON av.id = j.agent_version_id
WHERE (%(status)s::text IS NULL OR j.status = %(status)s)
  AND (%(error_class)s::text IS NULL OR j.error_class = %(error_class)s)
ORDER BY j.created_at DESC
LIMIT %(limit)s;

-- name: job_attempts
SELECT attempt, message_id, started_at, ended_at, outcome, error_class, error, delay_s, delay_reason
FROM job_attempts WHERE job_id = %(job_id)s ORDER BY attempt;

-- name: job_tasks
SELECT name, model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
       price_usd, duration_s
FROM tasks WHERE job_id = %(job_id)s ORDER BY created_at;

-- name: job_counts
SELECT status, count(*) AS n FROM jobs GROUP BY status ORDER BY status;

-- name: queue_counts
-- Broker messages by queue and state, with the age of the oldest waiting one.
SELECT regexp_replace(queue_name, '\.(DQ|lane)$', '') AS queue,
       CASE WHEN queue_name ~ '\.(DQ|lane)$' AND state IN ('queued', 'consumed') THEN 'delayed'
            ELSE state::text END AS state,
       count(*) AS n,
       EXTRACT(EPOCH FROM now() - min(mtime)) AS oldest_age_s
FROM dramatiq.queue
GROUP BY 1, 2 ORDER BY 1, 2;

-- name: report
SELECT count(*) AS jobs,
       count(*) FILTER (WHERE status = 'COMPLETED') AS completed,
       count(*) FILTER (WHERE status = 'FAILED') AS failed,
       coalesce(sum(attempts), 0) AS attempts,
       coalesce(sum(price_usd), 0) AS price_usd,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY duration_s) AS p50_s,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY duration_s) AS p95_s
FROM jobs WHERE id = ANY(%(job_ids)s::uuid[]);

-- name: report_tokens
SELECT coalesce(sum(input_tokens), 0) AS input_tokens, coalesce(sum(output_tokens), 0) AS output_tokens,
       coalesce(sum(cache_read_tokens), 0) AS cache_read_tokens,
       coalesce(sum(cache_write_tokens), 0) AS cache_write_tokens
FROM tasks WHERE job_id = ANY(%(job_ids)s::uuid[]);

-- name: report_repairs
-- Repairs made to the answers of these jobs' evaluations, by kind (roastq/evaluation/answers.py).
SELECT r.repair->>'kind' AS kind, count(*) AS n, count(DISTINCT ev.id) AS evaluations
FROM evaluation_versions ev, jsonb_array_elements(ev.repairs) AS r(repair)
WHERE ev.job_id = ANY(%(job_ids)s::uuid[])
GROUP BY 1 ORDER BY 2 DESC, 1;

-- name: report_repaired
SELECT count(*) AS evaluations, count(*) FILTER (WHERE repairs <> '[]'::jsonb) AS repaired
FROM evaluation_versions WHERE job_id = ANY(%(job_ids)s::uuid[]);

-- name: seed_document
INSERT INTO documents (slug) VALUES (%(slug)s)
ON CONFLICT (slug) DO UPDATE SET slug = EXCLUDED.slug RETURNING id;

-- name: seed_document_version
-- A new version only when the text changed: seeding twice adds nothing.
INSERT INTO document_versions (document_id, version, title, authors, content)
SELECT %(document_id)s, coalesce(max(version), 0) + 1, %(title)s, %(authors)s, %(content)s
FROM document_versions WHERE document_id = %(document_id)s
HAVING NOT EXISTS (
    SELECT 1 FROM document_versions dv WHERE dv.document_id = %(document_id)s
      AND dv.version = (SELECT max(version) FROM document_versions WHERE document_id = %(document_id)s)
      AND dv.title = %(title)s AND dv.content = %(content)s AND dv.authors = %(authors)s::text[]);

-- name: seed_agent
INSERT INTO agents (slug) VALUES (%(slug)s)
ON CONFLICT (slug) DO UPDATE SET slug = EXCLUDED.slug RETURNING id;

-- name: seed_agent_version
INSERT INTO agent_versions (agent_id, version, name, description, primary_instructions,
                            self_critique_instructions, provides_grades, time_limit_s)
SELECT %(agent_id)s, coalesce(max(version), 0) + 1, %(name)s, %(description)s,
       %(primary_instructions)s, %(self_critique_instructions)s, %(provides_grades)s, %(time_limit_s)s
FROM agent_versions WHERE agent_id = %(agent_id)s
HAVING NOT EXISTS (
    SELECT 1 FROM agent_versions av WHERE av.agent_id = %(agent_id)s
      AND av.version = (SELECT max(version) FROM agent_versions WHERE agent_id = %(agent_id)s)
      AND av.name = %(name)s AND av.primary_instructions = %(primary_instructions)s
      AND av.self_critique_instructions IS NOT DISTINCT FROM %(self_critique_instructions)s
      AND av.provides_grades = %(provides_grades)s AND av.time_limit_s = %(time_limit_s)s);

-- name: heartbeat
-- new_lock: the liveness session has just taken the worker's lock (roastq_worker_lock).
INSERT INTO worker_heartbeats (worker_id, hostname, pid, threads, queues, lock_since)
VALUES (%(worker_id)s, %(hostname)s, %(pid)s, %(threads)s, %(queues)s,
        CASE WHEN %(new_lock)s THEN now() END)
ON CONFLICT (worker_id) DO UPDATE SET last_seen_at = now(), threads = EXCLUDED.threads,
    queues = EXCLUDED.queues,
    lock_since = CASE WHEN %(new_lock)s THEN now() ELSE worker_heartbeats.lock_since END;

-- name: take_worker_lock
SELECT pg_try_advisory_lock(roastq_worker_lock(%(worker_id)s)) AS taken;

-- name: worker_gone
DELETE FROM worker_heartbeats WHERE worker_id = %(worker_id)s;

-- name: live_workers
SELECT worker_id, hostname, pid, threads, queues, started_at, last_seen_at
FROM worker_heartbeats
WHERE last_seen_at > now() - make_interval(secs => %(stale_after_s)s)
ORDER BY worker_id;

-- name: latest_document_versions
SELECT DISTINCT ON (document_id) document_id, id FROM document_versions
WHERE document_id = ANY(%(ids)s::uuid[]) ORDER BY document_id, version DESC;

-- name: latest_agent_versions
SELECT DISTINCT ON (agent_id) agent_id, id FROM agent_versions
WHERE agent_id = ANY(%(ids)s::uuid[]) ORDER BY agent_id, version DESC;

-- name: upsert_evaluations
-- The evaluations of many (document, agent) pairs, the missing ones inserted; existing ones are
-- read, never written (see enqueue_evaluation). A pair inserted by a concurrent transaction
-- after this statement's snapshot is missing from the answer: the caller runs it again.
WITH wanted AS (
    SELECT * FROM unnest(%(document_ids)s::uuid[], %(agent_ids)s::uuid[]) AS w(document_id, agent_id)
), inserted AS (
    INSERT INTO evaluations (document_id, agent_id)
    SELECT document_id, agent_id FROM wanted
    ON CONFLICT (document_id, agent_id) DO NOTHING
    RETURNING id, document_id, agent_id
)
SELECT id, document_id, agent_id FROM inserted
UNION ALL
SELECT e.id, e.document_id, e.agent_id FROM evaluations e JOIN wanted w USING (document_id, agent_id);

-- name: enqueue_messages
-- dramatiq-pg's ENQUEUE for many messages in one statement, with one NOTIFY each.
WITH enqueued AS (
    INSERT INTO dramatiq.queue (queue_name, message_id, "state", message)
    SELECT q, id, 'queued', m FROM unnest(%(queues)s::text[], %(message_ids)s::uuid[], %(messages)s::jsonb[])
        AS t(q, id, m)
    RETURNING queue_name, message_id, message
)
SELECT count(pg_notify('dramatiq.' || queue_name || '.enqueue',
    CASE WHEN octet_length(message::text) >= 8000
    THEN jsonb_build_object('message_id', message_id)::text
    ELSE message::text END))
FROM enqueued;

-- name: metrics_snapshot
-- The metrics exporter's one read a scrape: broker messages by queue and state (messages of a
-- .DQ delay queue are "delayed") with the age of the oldest, then one row about live workers.
SELECT 'queue' AS kind, regexp_replace(queue_name, '\.(DQ|lane)$', '') AS queue,
       CASE WHEN queue_name ~ '\.(DQ|lane)$' AND state IN ('queued', 'consumed') THEN 'delayed'
            ELSE state::text END AS state,
       count(*) AS n,
       EXTRACT(EPOCH FROM now() - min(mtime))::float8 AS age_s
FROM dramatiq.queue
WHERE state IN ('queued', 'consumed', 'rejected')  -- not done: history, and the most rows
GROUP BY 2, 3
UNION ALL
SELECT 'workers', NULL, (coalesce(sum(threads) FILTER (WHERE fresh), 0))::text,
       count(*) FILTER (WHERE fresh),
       EXTRACT(EPOCH FROM now() - min(last_seen_at))::float8
FROM (SELECT threads, last_seen_at,
             last_seen_at > now() - make_interval(secs => %(stale_after_s)s) AS fresh
      FROM worker_heartbeats) w;

-- name: broker_fetch_by_ids
SELECT message::text FROM dramatiq.queue WHERE message_id = ANY(%(ids)s::uuid[]);
