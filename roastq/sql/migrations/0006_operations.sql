-- Operations: the scheduler's tick guard, the system pause, the daily cost roll-up, and the map
-- from RoastMyPost's legacy "Job" table to ours.

-- One row a periodic task and tick (the minute periodiq scheduled it for). periodiq fires once
-- per scheduler process and again after a restart within the minute: the primary key lets
-- exactly one of those fires run; the others only count themselves in `duplicates`.
CREATE TABLE schedule_ticks (
    task text NOT NULL,
    tick timestamptz NOT NULL,
    claimed_by text NOT NULL,               -- the worker (host:pid) that ran it
    claimed_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,                -- NULL while it runs (or if its worker died: the next tick catches up)
    outcome text CHECK (outcome IN ('ok', 'failed')),
    result jsonb,
    error text,
    runs integer NOT NULL DEFAULT 0,        -- times the task body started for this tick: 1
    duplicates integer NOT NULL DEFAULT 0,  -- fires suppressed (a second scheduler, a restart)
    PRIMARY KEY (task, tick)
);
CREATE INDEX schedule_ticks_claimed_idx ON schedule_ticks (claimed_at);

-- Small switches operators flip at run time (`roastq pause` writes key 'pause').
CREATE TABLE system_state (
    key text PRIMARY KEY,
    value jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- LLM spend by UTC day, agent and model, rolled up from `tasks` by the scheduler.
CREATE TABLE cost_daily (
    day date NOT NULL,
    agent_id uuid NOT NULL,
    model text NOT NULL,                    -- '' for steps without a model
    jobs integer NOT NULL,
    tasks integer NOT NULL,
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    cache_read_tokens bigint NOT NULL,
    cache_write_tokens bigint NOT NULL,
    price_usd numeric(14, 6) NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (day, agent_id, model)
);
-- The roll-up reads the last days of tasks.
CREATE INDEX IF NOT EXISTS tasks_created_idx ON tasks (created_at);

-- Legacy import: which legacy "Job" became which job here (a second import adds nothing).
CREATE TABLE legacy_jobs (
    legacy_id text PRIMARY KEY,
    job_id uuid NOT NULL UNIQUE REFERENCES jobs(id) ON DELETE CASCADE,
    legacy_evaluation_id text NOT NULL,
    legacy_original_job_id text,
    legacy_attempts integer NOT NULL DEFAULT 0,
    legacy_created_at timestamptz,
    imported_at timestamptz NOT NULL DEFAULT now()
);

-- Legacy documents, agents and their versions copied here, by their legacy ids.
CREATE TABLE legacy_ids (
    kind text NOT NULL CHECK (kind IN ('document', 'document_version', 'agent', 'agent_version')),
    legacy_id text NOT NULL,
    roastq_id uuid NOT NULL,
    PRIMARY KEY (kind, legacy_id)
);

-- The advisory lock key dramatiq-pg takes for a consumed message (dramatiq_pg.broker.message_lock:
-- 16 hex digits from the middle of sha256(queue_name || message_id), shifted to a signed bigint).
-- Lets SQL tell a message whose worker holds it from an orphan.
CREATE OR REPLACE FUNCTION roastq_message_lock(queue_name text, message_id uuid) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT (('x' || substr(encode(sha256(convert_to(queue_name || message_id::text, 'UTF8')), 'hex'), 25, 16))
            ::bit(64)::bigint) # (-9223372036854775808)::bigint
$$;
