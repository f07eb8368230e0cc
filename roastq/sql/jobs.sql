-- The jobs table's state changes: every write to `jobs` and `job_attempts` is one of these,
-- run through roastq/jobs.py (the one owner of job status). psycopg2 parameters: %(name)s.

-- name: insert
INSERT INTO jobs (id, evaluation_id, document_version_id, agent_version_id, queue, message_id,
                  original_job_id, deadline, not_before, next_attempt_at)
VALUES (%(id)s, %(evaluation_id)s, %(document_version_id)s, %(agent_version_id)s, %(queue)s,
        %(message_id)s, %(original_job_id)s, %(deadline)s, %(not_before)s, %(not_before)s)
RETURNING id;

-- name: insert_piece
-- The job row's part of a one-statement enqueue (roastq.api): the CTE `job`, a new PENDING job
-- from the one row of the CTE `source` (evaluation_id, document_version_id, agent_version_id,
-- queue, original_job_id), with the message id and deadline of that queue's candidate (an enqueue
-- knows its queue: one candidate; a rerun takes the original job's: one a job queue). No source
-- row, no job. Its RETURNING feeds the broker's part (the message whose id the job names).
job AS (
    INSERT INTO jobs (id, evaluation_id, document_version_id, agent_version_id, queue, message_id,
                      original_job_id, deadline, not_before, next_attempt_at)
    SELECT %(job_id)s::uuid, s.evaluation_id, s.document_version_id, s.agent_version_id, s.queue,
           c.message_id, s.original_job_id, c.deadline, %(job_not_before)s::timestamptz,
           %(job_not_before)s::timestamptz
    FROM source s
    JOIN unnest(%(job_queues)s::text[], %(job_message_ids)s::uuid[], %(job_deadlines)s::timestamptz[])
        AS c(queue, message_id, deadline) ON c.queue = s.queue
    RETURNING id, queue, message_id
)

-- name: insert_many
INSERT INTO jobs (id, evaluation_id, document_version_id, agent_version_id, queue, message_id, deadline,
                  not_before, next_attempt_at)
SELECT *, %(not_before)s::timestamptz, %(not_before)s::timestamptz
FROM unnest(%(ids)s::uuid[], %(evaluation_ids)s::uuid[], %(document_version_ids)s::uuid[],
            %(agent_version_ids)s::uuid[], %(queues)s::text[], %(message_ids)s::uuid[],
            %(deadlines)s::timestamptz[]);

-- name: start
-- A delivery of the job's message begins an attempt, in one statement: the job becomes RUNNING
-- (RUNNING is accepted only when the attempt before is over: its worker is gone, see
-- roastq_worker_alive, or it is this worker, where it no longer runs; never beside a live
-- attempt), an attempt left open by a dead worker is
-- closed as crashed, and the new attempt row is opened. `crashes` counts the attempts that died
-- with their worker, this delivery's predecessor included.
WITH started AS (
    UPDATE jobs j
    SET status = 'RUNNING', attempts = attempts + 1, started_at = now(), updated_at = now(),
        next_attempt_at = NULL, message_id = %(message_id)s, worker_id = %(worker_id)s
    WHERE j.id = %(job_id)s AND j.cancel_requested_at IS NULL
      AND (j.status = 'PENDING'
           OR (j.status = 'RUNNING' AND j.worker_id = %(worker_id)s AND %(not_running_here)s)
           OR (j.status = 'RUNNING' AND NOT roastq_worker_alive(j.worker_id, %(stale_after_s)s)))
    -- Each table by its primary key, no join: a join's plan may walk another index of `jobs`
    -- in full, the cached plan of a session that began on tiny tables (tests/test_query_plans.py).
    RETURNING j.id, j.attempts, j.evaluation_id,
              (SELECT e.agent_id FROM evaluations e WHERE e.id = j.evaluation_id) AS agent_id,
              (SELECT av.time_limit_s FROM agent_versions av WHERE av.id = j.agent_version_id) AS time_limit_s,
              (SELECT av.retry_on_timeout FROM agent_versions av WHERE av.id = j.agent_version_id) AS retry_on_timeout
), crashed AS (
    UPDATE job_attempts SET ended_at = now(), outcome = 'crashed'
    WHERE job_id = (SELECT id FROM started) AND ended_at IS NULL
    RETURNING 1
), opened AS (
    INSERT INTO job_attempts (job_id, attempt, message_id)
    SELECT id, attempts, %(message_id)s FROM started
)
SELECT s.*,
       (SELECT count(*) FROM job_attempts WHERE job_id = s.id AND outcome = 'crashed')
       + (SELECT count(*) FROM crashed) AS crashes
FROM started s;

-- name: start_many
-- `start` for the deliveries of many jobs that began at the same moment on this worker, in one
-- statement (jobs.start's group, `db.Grouped`): each job as `start` would start it, by its own
-- message and its own `not_running_here`. The worker's threads start one delivery of a job at a
-- time (middleware/jobs.py), so no job is named twice. Each table by its primary key: the
-- jobs by `= ANY`, each one's values by a subquery on the candidates (no join, as above).
WITH c AS MATERIALIZED (
    SELECT * FROM unnest(%(job_ids)s::uuid[], %(message_ids)s::uuid[], %(not_running_here)s::bool[])
        AS c(job_id, message_id, not_running_here)
), started AS (
    UPDATE jobs j
    SET status = 'RUNNING', attempts = attempts + 1, started_at = now(), updated_at = now(),
        next_attempt_at = NULL, worker_id = %(worker_id)s,
        message_id = (SELECT c.message_id FROM c WHERE c.job_id = j.id)
    WHERE j.id = ANY(ARRAY(SELECT job_id FROM c)) AND j.cancel_requested_at IS NULL
      AND (j.status = 'PENDING'
           OR (j.status = 'RUNNING' AND j.worker_id = %(worker_id)s
               AND (SELECT c.not_running_here FROM c WHERE c.job_id = j.id))
           OR (j.status = 'RUNNING' AND NOT roastq_worker_alive(j.worker_id, %(stale_after_s)s)))
    RETURNING j.id, j.message_id, j.attempts, j.evaluation_id,
              (SELECT e.agent_id FROM evaluations e WHERE e.id = j.evaluation_id) AS agent_id,
              (SELECT av.time_limit_s FROM agent_versions av WHERE av.id = j.agent_version_id) AS time_limit_s,
              (SELECT av.retry_on_timeout FROM agent_versions av WHERE av.id = j.agent_version_id) AS retry_on_timeout
), crashed AS (
    -- As in start_piece: the attempt left open (its worker died) is the job's last one before
    -- this start, named by both key columns, so that no plan reads the whole table.
    UPDATE job_attempts a SET ended_at = now(), outcome = 'crashed'
    WHERE a.job_id = ANY(ARRAY(SELECT id FROM started))
      AND a.attempt = ANY(ARRAY(SELECT attempts - 1 FROM started)) AND a.ended_at IS NULL
    RETURNING a.job_id
), opened AS (
    INSERT INTO job_attempts (job_id, attempt, message_id)
    SELECT id, attempts, message_id FROM started
)
SELECT s.*,
       (SELECT count(*) FROM job_attempts WHERE job_id = s.id AND outcome = 'crashed')
       + (SELECT count(*) FROM crashed x WHERE x.job_id = s.id) AS crashes
FROM started s;

-- name: start_piece
-- Jobs started by the statement that consumes their messages (the broker's consume,
-- roastq/brokers/postgres.py): CTEs after the consume's `taken` (the ids of the messages it took).
-- `start` for the jobs of a consumed batch, in the consume's round trip and commit, but only a job
-- that is PENDING and not cancelled, and only by its live message (jobs.message_id): anything else
-- (a job RUNNING, finished, or a second message of it) is left to its delivery's own `start`. The
-- caller names the candidates (start_job_ids, start_message_ids: messages of job actors, no more
-- than a thread of the worker takes within START_AHEAD_S, so that a job is RUNNING only once it
-- runs, or is about to).
picks AS MATERIALIZED (
    SELECT c.job_id, c.message_id
    FROM unnest(%(start_job_ids)s::uuid[], %(start_message_ids)s::uuid[]) AS c(job_id, message_id)
    WHERE c.message_id IN (SELECT message_id FROM taken)
), started AS (
    UPDATE jobs j
    SET status = 'RUNNING', attempts = attempts + 1, started_at = now(), updated_at = now(),
        next_attempt_at = NULL, worker_id = %(consumer_id)s
    WHERE j.id = ANY(ARRAY(SELECT job_id FROM picks))
      AND (j.status = 'PENDING' AND j.cancel_requested_at IS NULL
           AND EXISTS (SELECT 1 FROM picks p WHERE p.job_id = j.id AND p.message_id = j.message_id)) IS TRUE
    RETURNING j.id, j.message_id, j.attempts, j.evaluation_id,
              (SELECT e.agent_id FROM evaluations e WHERE e.id = j.evaluation_id) AS agent_id,
              (SELECT av.time_limit_s FROM agent_versions av WHERE av.id = j.agent_version_id) AS time_limit_s,
              (SELECT av.retry_on_timeout FROM agent_versions av WHERE av.id = j.agent_version_id) AS retry_on_timeout
), crashed AS (
    -- An attempt left open (its worker died) is the job's last one before this start: each start
    -- closes all of them. Named by both key columns, so that no plan reads the whole table.
    UPDATE job_attempts a SET ended_at = now(), outcome = 'crashed'
    WHERE a.job_id = ANY(ARRAY(SELECT id FROM started))
      AND a.attempt = ANY(ARRAY(SELECT attempts - 1 FROM started)) AND a.ended_at IS NULL
    RETURNING a.job_id
), opened AS (
    INSERT INTO job_attempts (job_id, attempt, message_id)
    SELECT id, attempts, message_id FROM started
)

-- name: unstart
-- Undo starts made with a consume whose attempts never ran (their delivery was requeued, paused or
-- skipped before it began): the attempt row goes, and the job is PENDING again as before, its
-- attempts and started_at those of the attempt before. Only this worker's, and only the attempt
-- named (a job started again since is left alone).
WITH undone AS (
    DELETE FROM job_attempts a
    USING unnest(%(job_ids)s::uuid[], %(attempts)s::int[]) AS u(job_id, attempt)
    WHERE a.job_id = u.job_id AND a.attempt = u.attempt AND a.ended_at IS NULL
      AND EXISTS (SELECT 1 FROM jobs j WHERE j.id = u.job_id AND j.status = 'RUNNING'
                  AND j.attempts = u.attempt AND j.worker_id = %(worker_id)s)
    RETURNING a.job_id, a.attempt
)
UPDATE jobs j
SET status = 'PENDING', attempts = u.attempt - 1, worker_id = NULL, updated_at = now(),
    started_at = (SELECT max(p.started_at) FROM job_attempts p WHERE p.job_id = j.id AND p.attempt < u.attempt)
FROM undone u
WHERE j.id = u.job_id AND j.status = 'RUNNING' AND j.attempts = u.attempt AND j.worker_id = %(worker_id)s;

-- name: attempt_alive
-- A RUNNING job whose attempt runs on a live worker (roastq_worker_alive).
SELECT j.status = 'RUNNING' AND roastq_worker_alive(j.worker_id, %(stale_after_s)s) AS alive
FROM jobs j WHERE j.id = %(job_id)s;

-- name: finish_attempt
-- With a job's result: close its attempt as completed and mark its message done. The message by
-- its primary key alone: the state check is written `(...) IS TRUE` so that the queue's partial
-- index of live states cannot serve it. Beside a session holding vacuum back, that index holds
-- every dead 'consumed' version, and a plan along it (chosen once an ANALYZE finds few live ones)
-- visited them all for each result: 150 to 190 ms (tests/test_query_plans.py).
WITH closed AS (
    UPDATE job_attempts SET ended_at = now(), outcome = 'completed'
    WHERE job_id = %(job_id)s AND attempt = %(attempt)s AND ended_at IS NULL
)
UPDATE dramatiq.queue SET state = 'done', mtime = (NOW() AT TIME ZONE 'UTC')
WHERE message_id = %(message_id)s AND (state = 'consumed') IS TRUE;

-- name: close_crashed_attempts
UPDATE job_attempts SET ended_at = now(), outcome = 'crashed'
WHERE job_id = %(job_id)s AND ended_at IS NULL;

-- name: end_attempt
UPDATE job_attempts
SET ended_at = now(), outcome = %(outcome)s, error_class = %(error_class)s, error = %(error)s,
    delay_s = %(delay_s)s, delay_reason = %(delay_reason)s
WHERE job_id = %(job_id)s AND attempt = %(attempt)s AND ended_at IS NULL;

-- name: wait
UPDATE jobs
SET status = 'PENDING', next_attempt_at = now() + make_interval(secs => %(delay_s)s), worker_id = NULL,
    error_class = %(error_class)s, error = %(error)s, updated_at = now()
WHERE id = %(job_id)s AND status = 'RUNNING';

-- name: fail
UPDATE jobs
SET status = 'FAILED', error_class = %(error_class)s, error = %(error)s, completed_at = now(), worker_id = NULL,
    updated_at = now(), next_attempt_at = NULL,
    duration_s = EXTRACT(EPOCH FROM now() - created_at)
WHERE id = %(job_id)s AND status IN ('PENDING', 'RUNNING');

-- name: cancel
UPDATE jobs
SET status = 'CANCELLED', completed_at = now(), updated_at = now(), next_attempt_at = NULL, worker_id = NULL,
    cancel_reason = coalesce(cancel_reason, %(reason)s),
    cancel_requested_at = coalesce(cancel_requested_at, now())
WHERE id = %(job_id)s AND status IN ('PENDING', 'RUNNING')
RETURNING id;

-- name: request_cancel
-- A PENDING job is cancelled at once; a RUNNING one is flagged and stops at its next step.
UPDATE jobs
SET cancel_requested_at = now(), cancel_reason = %(reason)s, updated_at = now(),
    status = CASE WHEN status = 'PENDING' THEN 'CANCELLED' ELSE status END,
    completed_at = CASE WHEN status = 'PENDING' THEN now() ELSE completed_at END
WHERE id = %(job_id)s AND status IN ('PENDING', 'RUNNING')
RETURNING id, status;

-- name: cancel_requested
SELECT cancel_requested_at IS NOT NULL AS cancelled FROM jobs WHERE id = %(job_id)s;

-- name: lock
SELECT id, status, evaluation_id, created_at, cancel_requested_at, worker_id FROM jobs WHERE id = %(job_id)s FOR UPDATE;

-- name: complete
-- A live job (PENDING or RUNNING) becomes COMPLETED with its result; a finished one (a duplicate
-- delivery's result came first) fails the statement with SQLSTATE RQ001, and with it the result's
-- transaction (migration 0018). The UPDATE locks the row: two results land one after the other.
WITH done AS (
    UPDATE jobs
    SET status = 'COMPLETED', evaluation_version_id = %(evaluation_version_id)s, worker_id = NULL,
        price_usd = %(price_usd)s, completed_at = now(), updated_at = now(),
        error_class = NULL, error = NULL, next_attempt_at = NULL,
        duration_s = EXTRACT(EPOCH FROM now() - created_at)
    WHERE id = %(job_id)s AND status IN ('PENDING', 'RUNNING')
    RETURNING id
)
SELECT roastq_result_lands(EXISTS (SELECT 1 FROM done), %(job_id)s::uuid);

-- name: append_logs
-- Log lines of finished attempts, many jobs in one statement: a row of `job_logs` a job (its
-- lines, a jsonb array). Insert-only: the job row is not written again for its logs.
INSERT INTO job_logs (job_id, lines)
SELECT * FROM unnest(%(job_ids)s::uuid[], %(lines)s::jsonb[]);

-- name: lose
-- The job's worker died: it waits for its message again (or a new one).
UPDATE jobs
SET status = 'PENDING', worker_id = NULL, error_class = 'WORKER_LOST', error = %(error)s,
    next_attempt_at = NULL, updated_at = now()
WHERE id = %(job_id)s AND status = 'RUNNING';

-- name: fail_worker_lost
UPDATE jobs
SET status = 'FAILED', error_class = 'WORKER_LOST', error = %(error)s, completed_at = now(),
    worker_id = NULL, next_attempt_at = NULL, updated_at = now(),
    duration_s = EXTRACT(EPOCH FROM now() - created_at)
WHERE id = %(job_id)s AND status = 'RUNNING';

-- name: set_message
UPDATE jobs SET message_id = %(message_id)s, updated_at = now() WHERE id = %(job_id)s;

-- name: hold
-- The job waits for the pause to end: PENDING still, and `roastq jobs` says why.
UPDATE jobs
SET next_attempt_at = now() + make_interval(secs => %(delay_s)s), error_class = 'SNOOZED',
    error = %(error)s, updated_at = now()
WHERE id = %(job_id)s AND status = 'PENDING';
