-- The Postgres broker's own statements (beyond dramatiq-pg's). psycopg2 parameters: %(name)s.

-- name: park_message
-- A job's message waits, parked, for the batch lane (no consumer serves '<queue>.lane').
INSERT INTO dramatiq.queue (queue_name, message_id, "state", message)
VALUES (%(queue_name)s, %(message_id)s, 'queued', %(message)s)
ON CONFLICT (message_id) DO UPDATE SET "state" = 'queued', message = EXCLUDED.message,
                                       queue_name = EXCLUDED.queue_name, mtime = (now() AT TIME ZONE 'UTC');

-- name: enqueue_piece
-- The message's part of a one-statement enqueue (roastq.api, through roastq.brokers): the CTE
-- `sent`, writing to dramatiq.queue the candidate message whose id the CTE `job` returns, and
-- its NOTIFY (dramatiq-pg's ENQUEUE: the same channel and payload, delivered at commit). No job
-- row, no message.
sent AS (
    INSERT INTO dramatiq.queue (queue_name, message_id, "state", message)
    SELECT m.queue_name, m.message_id, 'queued', m.message
    FROM job
    JOIN unnest(%(message_queues)s::text[], %(message_ids)s::uuid[], %(messages)s::jsonb[])
        AS m(queue_name, message_id, message) ON m.message_id = job.message_id
    RETURNING message_id,
        pg_notify('dramatiq.' || queue_name || '.enqueue',
                  CASE WHEN octet_length(message::text) >= 8000
                  THEN jsonb_build_object('message_id', message_id)::text
                  ELSE message::text END) AS notified
)

-- name: consume
-- dramatiq-pg's CONSUME_ONE for many messages: take each message that is waiting and whose
-- advisory lock is free (a live worker holds the lock of every message it runs). A 'consumed'
-- one is taken again only when the worker that took it is gone (its lock may be free because
-- Postgres ended that session, terminated or restarted, while the worker runs it on), or is
-- this worker, which no longer holds it (the caller leaves out the messages it still runs). Returns the
-- messages locked, and whether each was taken; a lock won on a message finished in between
-- must be released by the caller. Only messages still in the consumer's queue: a retry moves a
-- message to its delay queue under the same id, where its lock is another key.
-- Its messages' jobs start in the same statement (CONSUME in postgres.py: jobs.sql's start_piece,
-- then consume_rows). Each table is read in a statement of its own, by its primary key alone: the queue and state
-- checks are written `(...) IS TRUE` so that no index on (queue_name, state) can serve them, and
-- the ids are matched to their locks on the rows found, not on the table. After a burst the
-- statistics may still say the queue is empty, and a plan that walks the queue's waiting messages
-- for each id reads the whole backlog for every batch; the session's cached plan of this
-- prepared statement may date from when the queue was empty (tests/test_query_plans.py).
WITH candidates AS MATERIALIZED (
    SELECT q.message_id FROM dramatiq.queue q
    WHERE q.message_id = ANY(%(ids)s::uuid[])
      AND (q.queue_name = %(queue)s
           AND (q.state = 'queued'
                OR (q.state = 'consumed' AND (q.consumer_id IS NOT DISTINCT FROM %(consumer_id)s
                                               OR NOT roastq_worker_alive(q.consumer_id, %(stale_after_s)s))))) IS TRUE
), paired AS MATERIALIZED (
    SELECT c.message_id, t.lock
    FROM candidates c JOIN unnest(%(ids)s::uuid[], %(locks)s::bigint[]) AS t(id, lock) ON t.id = c.message_id
), locked AS MATERIALIZED (
    SELECT message_id, lock FROM paired WHERE pg_try_advisory_lock(lock)
), taken AS (
    UPDATE dramatiq.queue q SET state = 'consumed', mtime = (NOW() AT TIME ZONE 'UTC'),
        consumer_id = %(consumer_id)s
    WHERE q.message_id = ANY(ARRAY(SELECT message_id FROM locked))
      AND (q.state IN ('queued', 'consumed') AND q.queue_name = %(queue)s) IS TRUE
    RETURNING q.message_id
)

-- name: consume_rows
-- The consume's result, a row a message locked: its lock, whether it was taken, and, for a message
-- whose job started with it (jobs.sql's start_piece, CTEs `started` and `crashed`), what `start`
-- returns.
SELECT l.message_id, l.lock, (t.message_id IS NOT NULL) AS consumed,
       s.id AS job_id, s.attempts, s.evaluation_id, s.agent_id, s.time_limit_s, s.retry_on_timeout,
       (SELECT count(*) FROM job_attempts a WHERE a.job_id = s.id AND a.outcome = 'crashed')
       + (SELECT count(*) FROM crashed c WHERE c.job_id = s.id) AS crashes
FROM locked l LEFT JOIN taken t ON t.message_id = l.message_id
LEFT JOIN started s ON s.message_id = l.message_id;

-- name: fetch_pending
-- A rescan (RoastqConsumer.fetch_pending_notifies): the live messages of a queue, as stock's
-- FETCH_PENDING reads them, but no more than a consumer keeps in memory (MAX_NOTIFIES): stock
-- read the whole backlog's payloads into memory at each rescan. Queued ones first, then the
-- consumed ones (an orphan's lock may be free): so that however many messages other workers hold,
-- a rescan never returns only those.
(SELECT message::text FROM dramatiq.queue WHERE state = 'queued' AND queue_name = %(queue)s LIMIT %(limit)s)
UNION ALL
(SELECT message::text FROM dramatiq.queue WHERE state = 'consumed' AND queue_name = %(queue)s LIMIT %(limit)s)
LIMIT %(limit)s;
