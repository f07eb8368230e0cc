-- The LLM cost layer (issue 5, docs/llm.md): response cache, step memoisation and ledger, daily
-- spend for the budget guard, and the rate limiter shared by every worker process and host.

-- Response cache: complete, validated responses, by a hash of the canonical request and a seed.
CREATE TABLE llm_cache (
    key text PRIMARY KEY,                      -- sha256 hex of the canonical request + seed
    model text NOT NULL,
    step text,
    seed text NOT NULL,
    response jsonb NOT NULL,                   -- the API's message, as received
    input_tokens integer NOT NULL,
    output_tokens integer NOT NULL,
    cache_read_tokens integer NOT NULL,
    cache_write_tokens integer NOT NULL,
    price_usd numeric(14, 6) NOT NULL,         -- what the original call cost: each hit saves it
    request_id text,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    hits integer NOT NULL DEFAULT 0,
    last_hit_at timestamptz
);
CREATE INDEX llm_cache_expires_idx ON llm_cache (expires_at);

-- One row per job and pipeline step: its output once it succeeded (a retry resumes after it)
-- and everything the step was billed, over all attempts (the ledger the tasks rows come from).
CREATE TABLE job_steps (
    job_id uuid NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    step text NOT NULL,
    output jsonb,                              -- NULL until the step succeeded
    model text,
    input_tokens integer NOT NULL DEFAULT 0,
    output_tokens integer NOT NULL DEFAULT 0,
    cache_read_tokens integer NOT NULL DEFAULT 0,
    cache_write_tokens integer NOT NULL DEFAULT 0,
    price_usd numeric(14, 6) NOT NULL DEFAULT 0,
    billed_calls integer NOT NULL DEFAULT 0,   -- responses billed, unusable ones included
    cached boolean NOT NULL DEFAULT false,     -- the output came from the response cache
    saved_usd numeric(14, 6) NOT NULL DEFAULT 0,
    duration_s double precision NOT NULL DEFAULT 0,
    attempt integer,                           -- the attempt that produced the output
    request_id text,
    completed_at timestamptz,
    PRIMARY KEY (job_id, step)
);

ALTER TABLE tasks
    ADD COLUMN cached boolean NOT NULL DEFAULT false,
    ADD COLUMN saved_usd numeric(14, 6) NOT NULL DEFAULT 0;

-- Spend per UTC day and model: the budget guard sums today's rows.
CREATE TABLE llm_spend_daily (
    day date NOT NULL,
    model text NOT NULL,
    price_usd numeric(16, 6) NOT NULL DEFAULT 0,
    billed_calls bigint NOT NULL DEFAULT 0,
    saved_usd numeric(16, 6) NOT NULL DEFAULT 0,
    cache_hits bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (day, model)
);

-- The shared rate limiter: one row per model. Each limit is a GCRA schedule (the time at which
-- the next request may start, "theoretical arrival time"), so a reservation is one atomic update
-- and waiters are served in the order they asked; the gate is closed by a 429 or by rate-limit
-- headers that say nothing is left.
CREATE TABLE llm_rate_limits (
    model text PRIMARY KEY,
    learned_rpm double precision,              -- from anthropic-ratelimit-*-limit headers
    learned_input_tpm double precision,
    learned_output_tpm double precision,
    rpm double precision NOT NULL DEFAULT 0,   -- the effective rates last used (0: no limit)
    input_tpm double precision NOT NULL DEFAULT 0,
    output_tpm double precision NOT NULL DEFAULT 0,
    next_request_at timestamptz,
    next_input_at timestamptz,
    next_output_at timestamptz,
    gate_until timestamptz,
    gate_reason text,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Reserve a start time for one request of p_input_tokens (estimated) on p_model. Configured
-- limits (> 0) win over learned ones; both are scaled by p_headroom. If the start time is more
-- than p_max_wait_s away nothing is reserved: the caller snoozes for wait_s instead. Clock:
-- the database's, read after the row lock, so every process and host shares one clock.
CREATE FUNCTION llm_rate_reserve(
    p_model text, p_rpm double precision, p_input_tpm double precision, p_output_tpm double precision,
    p_headroom double precision, p_input_tokens double precision, p_max_wait_s double precision
) RETURNS TABLE (wait_s double precision, reserved boolean, reason text, start_at timestamptz)
LANGUAGE plpgsql AS $$
DECLARE
    r llm_rate_limits%ROWTYPE;
    t timestamptz;
    v_rpm double precision;
    v_itpm double precision;
    v_otpm double precision;
    v_start timestamptz;
    why text := NULL;
    wait double precision;
BEGIN
    INSERT INTO llm_rate_limits (model) VALUES (p_model) ON CONFLICT (model) DO NOTHING;
    SELECT * INTO r FROM llm_rate_limits WHERE model = p_model FOR UPDATE;
    t := clock_timestamp();
    v_rpm := p_headroom * CASE WHEN p_rpm > 0 THEN p_rpm ELSE coalesce(r.learned_rpm, 0) END;
    v_itpm := p_headroom * CASE WHEN p_input_tpm > 0 THEN p_input_tpm ELSE coalesce(r.learned_input_tpm, 0) END;
    v_otpm := p_headroom * CASE WHEN p_output_tpm > 0 THEN p_output_tpm ELSE coalesce(r.learned_output_tpm, 0) END;
    v_start := t;
    IF r.gate_until > v_start THEN v_start := r.gate_until; why := 'gate'; END IF;
    IF v_rpm > 0 AND r.next_request_at > v_start THEN v_start := r.next_request_at; why := 'requests'; END IF;
    IF v_itpm > 0 AND r.next_input_at > v_start THEN v_start := r.next_input_at; why := 'input_tokens'; END IF;
    IF v_otpm > 0 AND r.next_output_at > v_start THEN v_start := r.next_output_at; why := 'output_tokens'; END IF;
    wait := extract(epoch FROM v_start - t);
    IF wait > p_max_wait_s THEN
        RETURN QUERY SELECT wait, false, why, v_start;
        RETURN;
    END IF;
    -- Output tokens are unknown until the answer: llm_rate_settle charges them.
    UPDATE llm_rate_limits SET
        rpm = v_rpm, input_tpm = v_itpm, output_tpm = v_otpm,
        next_request_at = CASE WHEN v_rpm > 0
            THEN greatest(coalesce(next_request_at, v_start), v_start) + make_interval(secs => 60.0 / v_rpm)
            ELSE next_request_at END,
        next_input_at = CASE WHEN v_itpm > 0
            THEN greatest(coalesce(next_input_at, v_start), v_start)
                 + make_interval(secs => 60.0 * p_input_tokens / v_itpm)
            ELSE next_input_at END,
        updated_at = t
    WHERE model = p_model;
    RETURN QUERY SELECT wait, true, why, v_start;
END $$;

-- After a response: charge the tokens the estimate missed (or give back what it overcharged),
-- remember the limits the headers announced, and close the gate for everyone until p_gate_s
-- from now when the server said so (a 429, or nothing remaining).
CREATE FUNCTION llm_rate_settle(
    p_model text, p_input_delta double precision, p_output_tokens double precision,
    p_learned_rpm double precision, p_learned_input_tpm double precision,
    p_learned_output_tpm double precision, p_gate_s double precision, p_gate_reason text
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    t timestamptz;
BEGIN
    INSERT INTO llm_rate_limits (model) VALUES (p_model) ON CONFLICT (model) DO NOTHING;
    PERFORM 1 FROM llm_rate_limits WHERE model = p_model FOR UPDATE;
    t := clock_timestamp();
    UPDATE llm_rate_limits SET
        learned_rpm = coalesce(p_learned_rpm, learned_rpm),
        learned_input_tpm = coalesce(p_learned_input_tpm, learned_input_tpm),
        learned_output_tpm = coalesce(p_learned_output_tpm, learned_output_tpm),
        next_input_at = CASE WHEN input_tpm > 0 AND p_input_delta <> 0
            THEN coalesce(next_input_at, t) + make_interval(secs => 60.0 * p_input_delta / input_tpm)
            ELSE next_input_at END,
        next_output_at = CASE WHEN output_tpm > 0 AND p_output_tokens > 0
            THEN greatest(coalesce(next_output_at, t), t) + make_interval(secs => 60.0 * p_output_tokens / output_tpm)
            ELSE next_output_at END,
        gate_until = CASE WHEN p_gate_s IS NOT NULL
            THEN greatest(coalesce(gate_until, t), t + make_interval(secs => p_gate_s)) ELSE gate_until END,
        gate_reason = CASE WHEN p_gate_s IS NOT NULL THEN p_gate_reason ELSE gate_reason END,
        updated_at = t
    WHERE model = p_model;
END $$;
