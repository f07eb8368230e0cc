-- The batch lane (roastq/llm/batch.py, docs/llm.md): jobs may carry a deadline and a start time;
-- an LLM step of a job with time to spare waits in llm_batch_requests for a Message Batch.

ALTER TABLE jobs ADD COLUMN IF NOT EXISTS deadline timestamptz;
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS not_before timestamptz;

-- One row a batch created through the API (its id is the API's), recorded in the transaction
-- that marks its requests submitted.
CREATE TABLE IF NOT EXISTS llm_batches (
    id text PRIMARY KEY,
    queue text NOT NULL,
    submission_id uuid NOT NULL UNIQUE,
    request_count integer NOT NULL,
    processing_status text NOT NULL DEFAULT 'in_progress',  -- the API's: in_progress, canceling, ended
    request_counts jsonb,
    adopted boolean NOT NULL DEFAULT false,  -- found again from the API's list after a crash
    created_at timestamptz NOT NULL DEFAULT now(),
    api_created_at timestamptz,
    expires_at timestamptz,
    ended_at timestamptz,
    collected_at timestamptz,  -- every result recorded
    cancel_requested_at timestamptz,
    polls integer NOT NULL DEFAULT 0,
    next_poll_at timestamptz NOT NULL DEFAULT now(),
    last_error text
);
CREATE INDEX IF NOT EXISTS llm_batches_open ON llm_batches (next_poll_at) WHERE collected_at IS NULL;

-- One row a step's request in the lane. custom_id = replace(id::text, '-', '').
-- state: waiting -> submitting -> submitted -> succeeded | invalid | errored (then consumed by the
-- job's next delivery); expired or canceled results go back to waiting (or fallback); fallback:
-- the job runs the step real-time; cancelled: its job was cancelled or finished.
CREATE TABLE IF NOT EXISTS llm_batch_requests (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    job_id uuid NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    step text NOT NULL,
    queue text NOT NULL,
    model text NOT NULL,
    params jsonb NOT NULL,  -- the Messages API request body
    tool_name text NOT NULL,
    tool_schema jsonb NOT NULL,
    cache_key text,
    cache_seed text,
    state text NOT NULL DEFAULT 'waiting',
    submission_id uuid,
    batch_id text,
    submissions integer NOT NULL DEFAULT 0,
    history jsonb NOT NULL DEFAULT '[]',  -- earlier batches: [{batch_id, result}]
    created_at timestamptz NOT NULL DEFAULT now(),
    submitting_at timestamptz,
    submitted_at timestamptz,
    ended_at timestamptz,
    consumed_at timestamptz,  -- the job's delivery that used the outcome
    error jsonb,  -- an errored result's error response
    output jsonb,  -- a succeeded result's validated tool input
    response_id text,
    input_tokens bigint NOT NULL DEFAULT 0,
    output_tokens bigint NOT NULL DEFAULT 0,
    cache_read_tokens bigint NOT NULL DEFAULT 0,
    cache_write_tokens bigint NOT NULL DEFAULT 0,
    price_usd numeric(14, 6) NOT NULL DEFAULT 0,  -- billed at batch prices
    saved_usd numeric(14, 6) NOT NULL DEFAULT 0,  -- against the same answer real-time
    billed boolean NOT NULL DEFAULT false  -- its answer is in the ledger (once)
);
CREATE UNIQUE INDEX IF NOT EXISTS llm_batch_requests_live ON llm_batch_requests (job_id, step)
    WHERE consumed_at IS NULL;
CREATE INDEX IF NOT EXISTS llm_batch_requests_pending ON llm_batch_requests (queue, state, created_at)
    WHERE state IN ('waiting', 'submitting', 'submitted');
CREATE INDEX IF NOT EXISTS llm_batch_requests_batch ON llm_batch_requests (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS llm_batch_requests_job ON llm_batch_requests (job_id);
