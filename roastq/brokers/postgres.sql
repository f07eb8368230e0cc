-- The Postgres broker's own statements (beyond dramatiq-pg's). psycopg2 parameters: %(name)s.

-- name: park_message
-- A job's message waits, parked, for the batch lane (no consumer serves '<queue>.lane').
INSERT INTO dramatiq.queue (queue_name, message_id, "state", message)
VALUES (%(queue_name)s, %(message_id)s, 'queued', %(message)s)
ON CONFLICT (message_id) DO UPDATE SET "state" = 'queued', message = EXCLUDED.message,
                                       queue_name = EXCLUDED.queue_name, mtime = (now() AT TIME ZONE 'UTC');
