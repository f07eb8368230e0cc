-- Named queries of the batch lane (roastq/llm/batch.py, roastq/llm/batch_driver.py).
-- A request is pending while its state is waiting, submitting or submitted.

-- name: lane_state
-- The job's deadline and its step's live request (if any), in one round trip.
SELECT j.queue, j.status, EXTRACT(EPOCH FROM j.deadline - now())::float8 AS slack_s,
       r.id AS request_id, r.state, r.batch_id, r.error, r.output, r.model, r.response_id,
       r.input_tokens, r.output_tokens, r.cache_read_tokens, r.cache_write_tokens, r.price_usd,
       EXTRACT(EPOCH FROM coalesce(r.ended_at, now()) - r.created_at)::float8 AS waited_s
FROM jobs j
LEFT JOIN llm_batch_requests r ON r.job_id = j.id AND r.step = %(step)s AND r.consumed_at IS NULL
WHERE j.id = %(job_id)s;

-- name: insert_request
INSERT INTO llm_batch_requests (job_id, step, queue, model, params, tool_name, tool_schema, cache_key, cache_seed)
VALUES (%(job_id)s, %(step)s, %(queue)s, %(model)s, %(params)s, %(tool_name)s, %(tool_schema)s, %(cache_key)s,
        %(cache_seed)s)
ON CONFLICT (job_id, step) WHERE consumed_at IS NULL DO NOTHING
RETURNING id;

-- name: consume_request
-- The job's delivery takes the outcome; a request still pending becomes fallback (the job runs
-- the step real-time, and a result that comes later is billed but ignored).
UPDATE llm_batch_requests
SET consumed_at = now(),
    state = CASE WHEN state IN ('waiting', 'submitting', 'submitted') THEN 'fallback' ELSE state END
WHERE id = %(id)s AND consumed_at IS NULL;

-- name: waiting_by_queue
-- Per queue: requests waiting for a batch, the oldest's age, and the age of the queue's last batch.
SELECT r.queue, count(*) AS waiting,
       EXTRACT(EPOCH FROM now() - min(r.created_at))::float8 AS oldest_s,
       (SELECT EXTRACT(EPOCH FROM now() - max(b.created_at))::float8 FROM llm_batches b
        WHERE b.queue = r.queue) AS last_batch_s
FROM llm_batch_requests r
WHERE r.state = 'waiting'
GROUP BY r.queue;

-- name: claim_requests
-- Mark up to `limit` waiting requests of live jobs as this submission's, before the API call.
WITH picked AS (
    SELECT r.id FROM llm_batch_requests r JOIN jobs j ON j.id = r.job_id
    WHERE r.queue = %(queue)s AND r.state = 'waiting'
      AND j.status IN ('PENDING', 'RUNNING') AND j.cancel_requested_at IS NULL
    ORDER BY r.created_at
    LIMIT %(limit)s
    FOR UPDATE OF r SKIP LOCKED
)
UPDATE llm_batch_requests r
SET state = 'submitting', submission_id = %(submission_id)s, submitting_at = now()
FROM picked WHERE r.id = picked.id
RETURNING r.id, r.params;

-- name: unclaim_requests
-- The API refused the batch: its requests wait again.
UPDATE llm_batch_requests SET state = 'waiting', submission_id = NULL, submitting_at = NULL
WHERE submission_id = %(submission_id)s AND state = 'submitting'
  AND (%(ids)s::uuid[] IS NULL OR id = ANY(%(ids)s::uuid[]));

-- name: record_batch
-- In one transaction with mark_submitted: the batch and its requests.
INSERT INTO llm_batches (id, queue, submission_id, request_count, processing_status, api_created_at, expires_at,
                         adopted, next_poll_at)
VALUES (%(id)s, %(queue)s, %(submission_id)s, %(request_count)s, %(processing_status)s, %(api_created_at)s,
        %(expires_at)s, %(adopted)s, now() + make_interval(secs => %(poll_s)s))
ON CONFLICT DO NOTHING
RETURNING id;

-- name: mark_submitted
UPDATE llm_batch_requests
SET state = 'submitted', batch_id = %(batch_id)s, submitted_at = now(), submissions = submissions + 1
WHERE submission_id = %(submission_id)s AND state = 'submitting';

-- name: stale_submissions
-- Submissions left 'submitting' by a submitter that died (the caller holds the lane lock, so
-- no live submitter owns them).
SELECT submission_id, queue, count(*) AS n, min(submitting_at) AS since
FROM llm_batch_requests WHERE state = 'submitting'
GROUP BY submission_id, queue;

-- name: known_batch_ids
SELECT id FROM llm_batches WHERE id = ANY(%(ids)s::text[]);

-- name: due_batches
SELECT id, queue, polls, request_count, processing_status, cancel_requested_at
FROM llm_batches
WHERE collected_at IS NULL AND next_poll_at <= now()
ORDER BY next_poll_at
LIMIT %(limit)s;

-- name: batch_polled
UPDATE llm_batches
SET processing_status = %(processing_status)s, request_counts = %(request_counts)s, ended_at = %(ended_at)s,
    expires_at = coalesce(%(expires_at)s, expires_at), polls = polls + 1, last_error = NULL,
    next_poll_at = now() + make_interval(secs => %(next_poll_s)s)
WHERE id = %(id)s;

-- name: batch_poll_failed
UPDATE llm_batches
SET polls = polls + 1, last_error = %(error)s, next_poll_at = now() + make_interval(secs => %(next_poll_s)s)
WHERE id = %(id)s;

-- name: lock_result_request
SELECT r.id, r.job_id, r.step, r.model, r.state, r.batch_id, r.billed, r.tool_name, r.tool_schema, r.cache_key,
       r.cache_seed, r.created_at, EXTRACT(EPOCH FROM j.deadline - now())::float8 AS slack_s, j.status AS job_status
FROM llm_batch_requests r JOIN jobs j ON j.id = r.job_id
WHERE r.id = %(id)s
FOR UPDATE OF r;

-- name: request_answered
-- A succeeded result: `state` is succeeded (a valid tool call) or invalid.
UPDATE llm_batch_requests
SET state = %(state)s, output = %(output)s, error = %(error)s, response_id = %(response_id)s,
    input_tokens = %(input_tokens)s, output_tokens = %(output_tokens)s, cache_read_tokens = %(cache_read_tokens)s,
    cache_write_tokens = %(cache_write_tokens)s, price_usd = %(price_usd)s, saved_usd = %(saved_usd)s,
    billed = true, ended_at = now()
WHERE id = %(id)s;

-- name: bill_ignored
-- A succeeded result for a request the job no longer waits for (fallback, cancelled): paid all
-- the same, so it goes into the ledger, once.
UPDATE llm_batch_requests
SET billed = true, input_tokens = %(input_tokens)s, output_tokens = %(output_tokens)s,
    cache_read_tokens = %(cache_read_tokens)s, cache_write_tokens = %(cache_write_tokens)s,
    price_usd = %(price_usd)s
WHERE id = %(id)s AND NOT billed
RETURNING id;

-- name: request_errored
UPDATE llm_batch_requests SET state = 'errored', error = %(error)s, ended_at = now() WHERE id = %(id)s;

-- name: request_requeued
-- An expired or canceled result (or none at all): the request waits again, or falls back.
UPDATE llm_batch_requests
SET state = %(state)s, batch_id = NULL, submission_id = NULL, submitting_at = NULL, submitted_at = NULL,
    history = history || jsonb_build_array(jsonb_build_object('batch_id', batch_id, 'result', %(result)s::text))
WHERE id = %(id)s;

-- name: unanswered_requests
-- After a batch's whole results stream: requests of it that no line named.
SELECT id FROM llm_batch_requests WHERE batch_id = %(batch_id)s AND state = 'submitted';

-- name: batch_collected
UPDATE llm_batches SET collected_at = now() WHERE id = %(id)s AND collected_at IS NULL;

-- name: cancel_requests_of_finished_jobs
-- Jobs cancelled or finished: their pending requests leave the lane (a submitting one is left
-- to its submission, and cancelled at the next sweep).
UPDATE llm_batch_requests r SET state = 'cancelled', consumed_at = now()
FROM jobs j
WHERE j.id = r.job_id AND r.state IN ('waiting', 'submitted')
  AND (j.status IN ('COMPLETED', 'FAILED', 'CANCELLED') OR j.cancel_requested_at IS NOT NULL)
RETURNING r.id;

-- name: fall_back_near_deadline
-- Requests still pending when their job's time left falls under what a real-time call needs.
UPDATE llm_batch_requests r SET state = 'fallback'
FROM jobs j
WHERE j.id = r.job_id AND r.state IN ('waiting', 'submitted') AND r.consumed_at IS NULL
  AND j.deadline < now() + make_interval(secs => %(fallback_s)s)
RETURNING r.id, r.job_id, r.step;

-- name: batches_without_live_requests
-- Open batches none of whose requests is still waited for: cancelled in the API.
SELECT b.id FROM llm_batches b
WHERE b.collected_at IS NULL AND b.processing_status = 'in_progress' AND b.cancel_requested_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM llm_batch_requests r WHERE r.batch_id = b.id AND r.state = 'submitted');

-- name: batch_cancel_requested
UPDATE llm_batches SET cancel_requested_at = now(), processing_status = %(processing_status)s WHERE id = %(id)s;

-- name: wake_parked_jobs
-- Parked job messages (queue '<queue>.lane') whose job has no pending request any more go back
-- to their queue, announced: the job's next delivery resumes past the steps the lane answered.
-- Each goes back under a new message id (the job row follows): an advisory lock still held on the
-- old id by the consumer of the delivery that parked it must not hold the new delivery up.
WITH parked AS (
    SELECT q.message_id, q.message, roastq_uuid7() AS new_id
    FROM dramatiq.queue q
    WHERE q.queue_name LIKE '%%.lane' AND q.state = 'queued'
      AND NOT EXISTS (SELECT 1 FROM llm_batch_requests r
                      WHERE r.job_id = (q.message->'args'->>0)::uuid  -- parked: job messages only
                        AND r.state IN ('waiting', 'submitting', 'submitted'))
    FOR UPDATE OF q SKIP LOCKED
), retired AS (
    UPDATE dramatiq.queue q SET state = 'done', mtime = (now() AT TIME ZONE 'UTC')
    FROM parked p WHERE q.message_id = p.message_id
), moved AS (
    UPDATE jobs j SET message_id = p.new_id
    FROM parked p WHERE j.id = (p.message->'args'->>0)::uuid AND j.message_id = p.message_id
), woken AS (
    INSERT INTO dramatiq.queue (queue_name, message_id, "state", message)
    SELECT p.message->>'queue_name', p.new_id, 'queued',
           jsonb_set(p.message, '{message_id}', to_jsonb(p.new_id::text))
    FROM parked p
    RETURNING queue_name, message_id, message
)
SELECT count(pg_notify('dramatiq.' || queue_name || '.enqueue',
           CASE WHEN octet_length(message::text) >= 8000
                THEN jsonb_build_object('message_id', message_id)::text ELSE message::text END)) AS woken
FROM woken;

-- name: lane_status
SELECT
    (SELECT count(*) FROM llm_batch_requests WHERE state = 'waiting') AS waiting,
    (SELECT count(*) FROM llm_batch_requests WHERE state IN ('submitting', 'submitted')) AS in_batches,
    (SELECT EXTRACT(EPOCH FROM now() - min(created_at))::float8 FROM llm_batch_requests
     WHERE state IN ('waiting', 'submitting', 'submitted')) AS oldest_request_s,
    (SELECT count(*) FROM llm_batches WHERE collected_at IS NULL) AS open_batches,
    (SELECT EXTRACT(EPOCH FROM now() - min(created_at))::float8 FROM llm_batches
     WHERE collected_at IS NULL) AS oldest_batch_s,
    (SELECT count(*) FROM llm_batches) AS batches,
    (SELECT count(*) FROM llm_batch_requests WHERE state IN ('succeeded', 'invalid')) AS answered,
    (SELECT count(*) FROM llm_batch_requests WHERE state = 'errored') AS errored,
    (SELECT count(*) FROM llm_batch_requests WHERE state = 'fallback') AS fell_back,
    (SELECT coalesce(sum(price_usd), 0) FROM llm_batch_requests WHERE billed) AS billed_usd,
    (SELECT coalesce(sum(saved_usd), 0) FROM llm_batch_requests WHERE billed) AS saved_usd;

-- name: job_lane_requests
SELECT step, state, batch_id, submissions, history, created_at, submitted_at, ended_at, consumed_at,
       price_usd, saved_usd, error->'error'->>'type' AS error_type
FROM llm_batch_requests WHERE job_id = %(job_id)s ORDER BY created_at;
