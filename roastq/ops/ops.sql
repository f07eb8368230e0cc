-- Named queries for operations: the scheduler's tick guard and housekeeping, the admin CLI,
-- the system pause and health checks. psycopg2 parameters: %(name)s.
--
-- "Live" message: state 'queued' or 'consumed' (in its queue or its .DQ delay queue).
-- A 'consumed' message is held by a worker exactly while that worker's session holds the
-- message's advisory lock (roastq_message_lock, migration 0006); without it, it is an orphan.

-- name: claim_tick
-- The first fire of a (task, tick) inserts the row and runs; every other fire conflicts.
INSERT INTO schedule_ticks (task, tick, claimed_by)
VALUES (%(task)s, date_trunc('minute', %(scheduled_at)s::timestamptz), %(worker_id)s)
ON CONFLICT (task, tick) DO NOTHING
RETURNING tick;

-- name: count_duplicate_tick
UPDATE schedule_ticks SET duplicates = duplicates + 1
WHERE task = %(task)s AND tick = date_trunc('minute', %(scheduled_at)s::timestamptz)
RETURNING tick, claimed_by, claimed_at;

-- name: start_tick
UPDATE schedule_ticks SET runs = runs + 1 WHERE task = %(task)s AND tick = %(tick)s;

-- name: finish_tick
UPDATE schedule_ticks
SET finished_at = now(), outcome = %(outcome)s, result = %(result)s, error = %(error)s
WHERE task = %(task)s AND tick = %(tick)s;

-- name: last_ticks
SELECT DISTINCT ON (task) task, tick, claimed_by, claimed_at, finished_at, outcome, error, result,
       duplicates, EXTRACT(EPOCH FROM now() - claimed_at) AS age_s
FROM schedule_ticks ORDER BY task, tick DESC;

-- name: recent_ticks
SELECT task, tick, claimed_by, claimed_at, finished_at, outcome, error, result, runs, duplicates
FROM schedule_ticks
WHERE (%(task)s::text IS NULL OR task = %(task)s)
ORDER BY tick DESC, task LIMIT %(limit)s;

-- name: stale_running_jobs
-- RUNNING jobs whose worker has not beaten for stale_after_s (killed, frozen or gone).
-- A job that started less than stale_after_s ago is left alone: its worker may not have
-- written its first beat yet.
SELECT j.id, j.queue
FROM jobs j
WHERE j.status = 'RUNNING'
  AND j.started_at < now() - make_interval(secs => %(stale_after_s)s)
  AND NOT EXISTS (SELECT 1 FROM worker_heartbeats h
                  WHERE h.worker_id = j.worker_id
                    AND h.last_seen_at > now() - make_interval(secs => %(stale_after_s)s))
ORDER BY j.started_at
LIMIT %(limit)s;

-- name: lock_stale_job
-- The same conditions, re-checked under the job's row lock (a worker may have just taken it).
SELECT j.id, j.worker_id, j.message_id, j.queue, j.attempts, j.next_attempt_at,
       q.queue_name AS message_queue, q.state::text AS message_state,
       (SELECT count(*) FROM job_attempts a WHERE a.job_id = j.id AND a.outcome = 'crashed') AS crashes
FROM jobs j
LEFT JOIN dramatiq.queue q ON q.message_id = j.message_id
WHERE j.id = %(job_id)s AND j.status = 'RUNNING'
  AND NOT EXISTS (SELECT 1 FROM worker_heartbeats h
                  WHERE h.worker_id = j.worker_id
                    AND h.last_seen_at > now() - make_interval(secs => %(stale_after_s)s))
FOR UPDATE OF j SKIP LOCKED;

-- name: try_message_lock
-- Held until the transaction ends: no consumer can take the message meanwhile. False when a
-- live worker holds it.
SELECT pg_try_advisory_xact_lock(roastq_message_lock(%(queue_name)s, %(message_id)s)) AS free;

-- name: requeue_messages
-- Back to 'queued', with a NOTIFY so that a listening worker takes them at once.
WITH requeued AS (
    UPDATE dramatiq.queue SET state = 'queued', mtime = (NOW() AT TIME ZONE 'UTC')
    WHERE message_id = ANY(%(message_ids)s::uuid[]) AND (state = 'consumed') IS TRUE  -- by id alone (finish_attempt)
    RETURNING queue_name, message_id, message
)
SELECT count(pg_notify('dramatiq.' || queue_name || '.enqueue',
    CASE WHEN octet_length(message::text) >= 8000
    THEN jsonb_build_object('message_id', message_id)::text
    ELSE message::text END)) AS n
FROM requeued;

-- name: reject_message
-- A dead letter, as the broker's NACK leaves it.
UPDATE dramatiq.queue SET state = 'rejected', mtime = (NOW() AT TIME ZONE 'UTC')
WHERE message_id = %(message_id)s AND (state IN ('queued', 'consumed')) IS TRUE;  -- by id alone (finish_attempt)

-- name: recover_orphans
-- Messages left 'consumed' by a dead worker: their advisory lock died with its connection.
-- Taking the lock here proves that nobody holds it and keeps consumers off the message until
-- it is requeued. The message of a RUNNING job whose worker still beats is left alone: that
-- worker's connection may have dropped for a moment while it works on.
WITH orphans AS (
    SELECT q.message_id
    FROM dramatiq.queue q
    WHERE q.state = 'consumed'
      AND NOT EXISTS (SELECT 1 FROM jobs j JOIN worker_heartbeats h ON h.worker_id = j.worker_id
                      WHERE j.message_id = q.message_id AND j.status = 'RUNNING'
                        AND h.last_seen_at > now() - make_interval(secs => %(stale_after_s)s))
      AND pg_try_advisory_xact_lock(roastq_message_lock(q.queue_name, q.message_id))
    LIMIT %(limit)s
    FOR UPDATE OF q SKIP LOCKED
), requeued AS (
    UPDATE dramatiq.queue q SET state = 'queued', mtime = (NOW() AT TIME ZONE 'UTC')
    FROM orphans o WHERE q.message_id = o.message_id
    RETURNING q.queue_name, q.message_id, q.message
)
SELECT count(pg_notify('dramatiq.' || queue_name || '.enqueue',
    CASE WHEN octet_length(message::text) >= 8000
    THEN jsonb_build_object('message_id', message_id)::text
    ELSE message::text END)) AS requeued
FROM requeued;

-- name: pending_jobs_without_message
-- PENDING jobs with no live message, neither the one the job names nor any other carrying its
-- id (an app may write the row and send the message itself: hence also the grace period).
WITH candidates AS (
    SELECT j.id, j.created_at FROM jobs j
    WHERE j.status = 'PENDING' AND j.cancel_requested_at IS NULL
      AND j.updated_at < now() - make_interval(secs => %(grace_s)s)
      AND NOT EXISTS (SELECT 1 FROM dramatiq.queue q
                      WHERE q.message_id = j.message_id AND (q.state IN ('queued', 'consumed')) IS TRUE)
)
SELECT c.id FROM candidates c
WHERE NOT EXISTS (SELECT 1 FROM dramatiq.queue q
                  WHERE q.state IN ('queued', 'consumed') AND q.message->'args'->>0 = c.id::text)
ORDER BY c.created_at
LIMIT %(limit)s;

-- name: lock_pending_job
SELECT j.id, j.queue, j.message_id, j.next_attempt_at,
       GREATEST(0, EXTRACT(EPOCH FROM j.next_attempt_at - now())) AS wait_s
FROM jobs j
WHERE j.id = %(job_id)s AND j.status = 'PENDING' AND j.cancel_requested_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM dramatiq.queue q
                  WHERE q.state IN ('queued', 'consumed')
                    AND (q.message_id = j.message_id OR q.message->'args'->>0 = j.id::text))
FOR UPDATE OF j SKIP LOCKED;

-- name: retire_messages_of_finished_jobs
-- Live messages whose job has finished (cancelled while queued, failed by the reaper): a worker
-- would only skip them, but meanwhile they count as waiting work. Marked done. A message a
-- worker holds (its lock taken) is left to that worker.
WITH finished AS (
    SELECT q.message_id
    FROM dramatiq.queue q
    JOIN jobs j ON j.id = CASE WHEN q.message->'args'->>0 ~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                               THEN (q.message->'args'->>0)::uuid END
    WHERE q.state IN ('queued', 'consumed')
      AND q.message->>'actor_name' = ANY(%(job_actors)s::text[])
      AND j.status IN ('COMPLETED', 'FAILED', 'CANCELLED')
      AND pg_try_advisory_xact_lock(roastq_message_lock(q.queue_name, q.message_id))
    LIMIT %(limit)s
    FOR UPDATE OF q SKIP LOCKED
)
UPDATE dramatiq.queue q SET state = 'done', mtime = (NOW() AT TIME ZONE 'UTC')
FROM finished f WHERE q.message_id = f.message_id
RETURNING q.message_id;

-- name: count_finished_messages
SELECT count(*) AS n FROM dramatiq.queue
WHERE state = ANY(%(states)s::dramatiq.state[])
  AND mtime < now() - make_interval(secs => %(older_than_s)s)
  AND (%(queue)s::text IS NULL OR regexp_replace(queue_name, '\.DQ$', '') = %(queue)s);

-- name: delete_finished_messages
-- One batch: short transactions, so that consumers never wait long on a big delete.
WITH doomed AS (
    SELECT message_id FROM dramatiq.queue
    WHERE state = ANY(%(states)s::dramatiq.state[])
      AND mtime < now() - make_interval(secs => %(older_than_s)s)
      AND (%(queue)s::text IS NULL OR regexp_replace(queue_name, '\.DQ$', '') = %(queue)s)
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM dramatiq.queue q USING doomed d WHERE q.message_id = d.message_id;

-- name: delete_old_ticks
DELETE FROM schedule_ticks WHERE claimed_at < now() - make_interval(days => %(days)s);

-- name: delete_dead_heartbeats
-- Rows of workers that died without saying goodbye (kill -9, a lost host).
DELETE FROM worker_heartbeats WHERE last_seen_at < now() - make_interval(days => %(days)s);

-- name: lock_cost_rollup
SELECT pg_advisory_xact_lock(hashtext('roastq.cost_rollup'));

-- name: delete_cost_days
DELETE FROM cost_daily WHERE day >= (now() AT TIME ZONE 'UTC')::date - %(days)s + 1;

-- name: roll_up_costs
-- Recomputes whole UTC days from `tasks` (a day's rows are replaced, never added to).
INSERT INTO cost_daily (day, agent_id, model, jobs, tasks, input_tokens, output_tokens,
                        cache_read_tokens, cache_write_tokens, price_usd)
SELECT (t.created_at AT TIME ZONE 'UTC')::date, e.agent_id, coalesce(t.model, ''),
       count(DISTINCT t.job_id), count(*), sum(t.input_tokens), sum(t.output_tokens),
       sum(t.cache_read_tokens), sum(t.cache_write_tokens), sum(t.price_usd)
FROM tasks t
JOIN jobs j ON j.id = t.job_id
JOIN evaluations e ON e.id = j.evaluation_id
WHERE t.created_at >= ((now() AT TIME ZONE 'UTC')::date - %(days)s + 1)::timestamp AT TIME ZONE 'UTC'
GROUP BY 1, 2, 3
RETURNING day;

-- name: cost_report
SELECT c.day, c.agent_id, av.name AS agent_name, c.model, c.jobs, c.tasks, c.input_tokens,
       c.output_tokens, c.cache_read_tokens, c.cache_write_tokens, c.price_usd
FROM cost_daily c
LEFT JOIN LATERAL (SELECT name FROM agent_versions v WHERE v.agent_id = c.agent_id
                   ORDER BY v.version DESC LIMIT 1) av ON true
WHERE c.day >= (now() AT TIME ZONE 'UTC')::date - %(days)s + 1
ORDER BY c.day DESC, c.price_usd DESC;

-- name: queue_summary
-- Per queue, each message counted once: queued (ready), delayed (waiting for its eta in the .DQ
-- queue, or parked in .lane for the batch lane), in flight (held by a worker), orphaned (consumed, but no worker holds its lock: its
-- worker died), dead (rejected), done. The lock table is read once. With with_done false, finished
-- messages are neither read nor counted (the console's overview: the other states are few and
-- indexed, finished ones are most of the table).
WITH held_locks AS MATERIALIZED (
    SELECT (l.classid::bigint << 32) | l.objid::bigint AS key
    FROM pg_locks l
    WHERE l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted
      AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
), per_name AS (
    -- Counted per queue name and state first: the per-row work is the lock test alone.
    SELECT q.queue_name, q.state, count(*) AS n, min(q.mtime) AS oldest,
           count(*) FILTER (WHERE q.state = 'consumed'
                            AND roastq_message_lock(q.queue_name, q.message_id) IN (SELECT key FROM held_locks)) AS held
    FROM dramatiq.queue q
    WHERE %(with_done)s OR q.state IN ('queued', 'consumed', 'rejected')
    GROUP BY q.queue_name, q.state
), messages AS (
    -- a .DQ queue holds delayed messages, a .lane queue jobs waiting for the batch lane: both "delayed"
    SELECT regexp_replace(queue_name, '\.(DQ|lane)$', '') AS queue, queue_name ~ '\.(DQ|lane)$' AS dq,
           state, n, held, oldest
    FROM per_name
)
SELECT queue,
       coalesce(sum(n) FILTER (WHERE NOT dq AND state = 'queued'), 0)::bigint AS queued,
       (coalesce(sum(n) FILTER (WHERE dq AND state = 'queued'), 0)
        + coalesce(sum(held) FILTER (WHERE dq AND state = 'consumed'), 0))::bigint AS delayed,
       coalesce(sum(held) FILTER (WHERE NOT dq AND state = 'consumed'), 0)::bigint AS in_flight,
       coalesce(sum(n - held) FILTER (WHERE state = 'consumed'), 0)::bigint AS orphaned,
       coalesce(sum(n) FILTER (WHERE state = 'rejected'), 0)::bigint AS dead,
       coalesce(sum(n) FILTER (WHERE state = 'done'), 0)::bigint AS done,
       EXTRACT(EPOCH FROM now() - min(oldest) FILTER (WHERE NOT dq AND state = 'queued')) AS oldest_queued_age_s
FROM messages
GROUP BY queue ORDER BY queue;

-- name: job_counts_recent
-- Jobs waiting or running now, and jobs finished in the last 24 hours, by status: each part read
-- through an index (jobs_status_idx, jobs_completed_idx), whatever the size of the history.
-- The finished ones counted with three FILTERs in one pass, not grouped by status through a hash
-- table: about a third less time for the day's 13,500 index entries (docs/benchmarks.md); a
-- status none had is left out, as a GROUP BY leaves it.
SELECT status, count(*) AS n FROM jobs WHERE status IN ('PENDING', 'RUNNING') GROUP BY status
UNION ALL
SELECT f.status, f.n
FROM (SELECT count(*) FILTER (WHERE status = 'COMPLETED') AS completed,
             count(*) FILTER (WHERE status = 'FAILED') AS failed,
             count(*) FILTER (WHERE status = 'CANCELLED') AS cancelled
      FROM jobs WHERE completed_at > now() - interval '24 hours') day,
     LATERAL (VALUES ('COMPLETED', day.completed), ('FAILED', day.failed), ('CANCELLED', day.cancelled)) f (status, n)
WHERE f.n > 0;

-- name: find_jobs
SELECT j.id, j.status, j.queue, j.attempts, j.error_class, j.error, j.created_at, j.started_at,
       j.completed_at, j.next_attempt_at, j.duration_s, j.price_usd, j.worker_id,
       j.evaluation_version_id, j.original_job_id, e.document_id, e.agent_id,
       dv.title AS document_title, av.name AS agent_name
FROM jobs j
JOIN evaluations e ON e.id = j.evaluation_id
JOIN document_versions dv ON dv.id = j.document_version_id
JOIN agent_versions av ON av.id = j.agent_version_id
WHERE (%(statuses)s::text[] IS NULL OR j.status = ANY(%(statuses)s::text[]))
  AND (%(error_class)s::text IS NULL OR j.error_class = %(error_class)s)
  AND (%(queue)s::text IS NULL OR j.queue = %(queue)s)
  AND (%(agent_id)s::uuid IS NULL OR e.agent_id = %(agent_id)s::uuid)
  AND (%(document_id)s::uuid IS NULL OR e.document_id = %(document_id)s::uuid)
  AND (%(since)s::timestamptz IS NULL OR j.created_at >= %(since)s::timestamptz)
  AND (%(until)s::timestamptz IS NULL OR j.created_at < %(until)s::timestamptz)
  -- Text search over the document's title; a page after another starts below its last row
  -- (keyset on jobs_created_idx: as fast on page 1,000 as on page 1).
  AND (%(search)s::text IS NULL OR strpos(lower(dv.title), lower(%(search)s::text)) > 0)
  AND (%(after_created_at)s::timestamptz IS NULL
       OR (j.created_at, j.id) < (%(after_created_at)s::timestamptz, %(after_id)s::uuid))
ORDER BY j.created_at DESC, j.id DESC
LIMIT %(limit)s;

-- name: resolve_agent
-- An agent by id, slug or (latest version's) name.
SELECT a.id FROM agents a
WHERE a.id::text = %(ref)s OR a.slug = %(ref)s
   OR (SELECT lower(v.name) FROM agent_versions v WHERE v.agent_id = a.id ORDER BY v.version DESC LIMIT 1)
      = lower(%(ref)s);

-- name: resolve_document
SELECT d.id FROM documents d WHERE d.id::text = %(ref)s OR d.slug = %(ref)s;

-- name: get_state
SELECT value, updated_at FROM system_state WHERE key = %(key)s;

-- name: set_state
INSERT INTO system_state (key, value) VALUES (%(key)s, %(value)s)
ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, updated_at = now()
RETURNING value, updated_at;

-- name: delete_state
DELETE FROM system_state WHERE key = %(key)s RETURNING value;

-- name: health_schema
SELECT to_regclass('dramatiq.queue') IS NOT NULL AS broker_queue,
       to_regtype('dramatiq.state') IS NOT NULL AS broker_state,
       to_regclass('schema_migrations') IS NOT NULL AS migrations_table;

-- name: applied_migrations
SELECT version FROM schema_migrations ORDER BY version;

-- name: health_workers
SELECT count(*) AS live,
       min(EXTRACT(EPOCH FROM now() - last_seen_at)) AS freshest_s
FROM worker_heartbeats
WHERE last_seen_at > now() - make_interval(secs => %(stale_after_s)s);

-- name: vacuum_state
-- What keeps dead row versions of the queue tables from being removed: autovacuum off on the
-- server (or on one of the hot tables), or the oldest snapshot or transaction id held by another session (an idle
-- transaction, a long report) since when, in this database (a snapshot in another database
-- does not hold back this one's tables); roastq health reports both (docs/operations.md).
SELECT current_setting('autovacuum')::boolean AS autovacuum,
       (SELECT array_agg(c.oid::regclass::text ORDER BY c.oid::regclass::text)
        FROM pg_class c
        WHERE c.oid IN ('dramatiq.queue'::regclass, 'jobs'::regclass, 'job_attempts'::regclass)
          AND 'autovacuum_enabled=false' = ANY(coalesce(c.reloptions, '{}'))) AS disabled_on,
       (SELECT EXTRACT(EPOCH FROM now() - min(a.xact_start))
        FROM pg_stat_activity a
        WHERE (a.backend_xmin IS NOT NULL OR a.backend_xid IS NOT NULL) AND a.pid <> pg_backend_pid() AND a.xact_start IS NOT NULL
          AND a.backend_type = 'client backend' AND a.datname = current_database()) AS oldest_snapshot_s,
       (SELECT a.pid FROM pg_stat_activity a
        WHERE (a.backend_xmin IS NOT NULL OR a.backend_xid IS NOT NULL) AND a.pid <> pg_backend_pid() AND a.xact_start IS NOT NULL
          AND a.backend_type = 'client backend' AND a.datname = current_database()
        ORDER BY a.xact_start LIMIT 1) AS oldest_snapshot_pid,
       (SELECT a.state FROM pg_stat_activity a
        WHERE (a.backend_xmin IS NOT NULL OR a.backend_xid IS NOT NULL) AND a.pid <> pg_backend_pid() AND a.xact_start IS NOT NULL
          AND a.backend_type = 'client backend' AND a.datname = current_database()
        ORDER BY a.xact_start LIMIT 1) AS oldest_snapshot_state;
