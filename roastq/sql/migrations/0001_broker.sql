-- The dramatiq-pg broker schema (dramatiq_pg/schema.sql of 0.12), made idempotent.
CREATE SCHEMA IF NOT EXISTS dramatiq;

DO $$ BEGIN
    CREATE TYPE dramatiq.state AS ENUM ('queued', 'consumed', 'rejected', 'done');
EXCEPTION WHEN duplicate_object THEN NULL;
END $$;

CREATE TABLE IF NOT EXISTS dramatiq.queue (
    message_id uuid PRIMARY KEY,
    queue_name TEXT NOT NULL DEFAULT 'default',
    "state" dramatiq.state,
    mtime TIMESTAMP WITH TIME ZONE DEFAULT (NOW() AT TIME ZONE 'UTC'),
    message JSONB,
    "result" JSONB,
    result_ttl TIMESTAMP WITH TIME ZONE
);

CREATE INDEX IF NOT EXISTS queue_state_mtime_idx ON dramatiq.queue ("state", mtime);
-- Consumers scan pending messages per queue (startup and orphan recovery).
CREATE INDEX IF NOT EXISTS queue_pending_idx ON dramatiq.queue (queue_name, "state")
    WHERE "state" IN ('queued', 'consumed');
