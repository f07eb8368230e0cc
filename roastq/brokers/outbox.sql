-- The outbox (migration 0008): messages for RabbitMQ, relayed by roastq/outbox.py.
-- psycopg2 parameters: %(name)s.

-- name: outbox_add
-- Many messages in one statement, and one NOTIFY (delivered at commit) to wake the relays.
WITH added AS (
    INSERT INTO outbox (queue_name, message_id, message)
    SELECT * FROM unnest(%(queues)s::text[], %(message_ids)s::uuid[], %(messages)s::jsonb[])
    RETURNING id
)
SELECT pg_notify('roastq_outbox', count(*)::text) FROM added;

-- name: outbox_add_piece
-- The message's part of a one-statement enqueue with RabbitMQ (roastq.api, through
-- roastq.brokers): the CTE `sent`, writing to the outbox the candidate message whose id the CTE
-- `job` returns, with outbox_add's NOTIFY to wake the relays (delivered at commit). No job row,
-- no message.
sent AS (
    INSERT INTO outbox (queue_name, message_id, message)
    SELECT m.queue_name, m.message_id, m.message
    FROM job
    JOIN unnest(%(message_queues)s::text[], %(message_ids)s::uuid[], %(messages)s::jsonb[])
        AS m(queue_name, message_id, message) ON m.message_id = job.message_id
    RETURNING message_id, pg_notify('roastq_outbox', '1') AS notified
)

-- name: outbox_claim
-- The oldest unsent rows that no other relay holds: relays in many processes share the work.
SELECT id, queue_name, message::text AS message
FROM outbox
WHERE sent_at IS NULL
ORDER BY id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- name: outbox_mark_sent
UPDATE outbox SET sent_at = now() WHERE id = ANY(%(ids)s::bigint[]);

-- name: outbox_backlog
-- Rows not yet relayed, and how long the oldest has waited.
SELECT count(*) AS unsent,
       coalesce(EXTRACT(EPOCH FROM now() - min(created_at)), 0)::float8 AS oldest_unsent_s
FROM outbox WHERE sent_at IS NULL;

-- name: outbox_message_state
-- 'unsent', 'sent' or NULL (no outbox row) for one message id.
SELECT CASE WHEN sent_at IS NULL THEN 'unsent' ELSE 'sent' END AS state, sent_at
FROM outbox WHERE message_id = %(message_id)s ORDER BY id DESC LIMIT 1;

-- name: outbox_purge_sent
-- One batch of sent rows older than the retention: short transactions.
DELETE FROM outbox WHERE id IN (
    SELECT id FROM outbox
    WHERE sent_at IS NOT NULL AND sent_at < now() - make_interval(secs => %(older_than_s)s)
    LIMIT %(batch)s
);
