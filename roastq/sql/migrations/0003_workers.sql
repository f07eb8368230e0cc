-- Live workers: each worker process upserts its row every HEARTBEAT_INTERVAL_S seconds.
CREATE TABLE worker_heartbeats (
    worker_id text PRIMARY KEY,          -- hostname:pid
    hostname text NOT NULL,
    pid integer NOT NULL,
    threads integer NOT NULL,
    queues text[] NOT NULL DEFAULT '{}',
    started_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now()
);

-- Which worker runs a job now (NULL when it is not running).
ALTER TABLE jobs ADD COLUMN worker_id text;
