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
