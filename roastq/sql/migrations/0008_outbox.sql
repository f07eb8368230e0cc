-- The outbox (BROKER_URL=amqp://...): messages bound for RabbitMQ, written in the transaction
-- that writes their jobs, and published by a relay afterwards (roastq/outbox.py). A transaction
-- cannot span Postgres and RabbitMQ: the job row and its outbox row commit or roll back together,
-- and the relay delivers every committed row at least once. Unused with the Postgres broker.
CREATE TABLE outbox (
    id bigserial PRIMARY KEY,
    queue_name text NOT NULL,        -- the RabbitMQ queue (a queue's .DQ for a delayed message)
    message_id uuid NOT NULL,
    message jsonb NOT NULL,          -- the dramatiq message as the broker would publish it
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at timestamptz              -- NULL until RabbitMQ confirmed it
);
-- The relay's scan: unsent rows in order.
CREATE INDEX outbox_unsent_idx ON outbox (id) WHERE sent_at IS NULL;
-- Retention: sent rows are deleted after RETENTION_DAYS.
CREATE INDEX outbox_sent_at_idx ON outbox (sent_at) WHERE sent_at IS NOT NULL;
CREATE INDEX outbox_message_id_idx ON outbox (message_id);
