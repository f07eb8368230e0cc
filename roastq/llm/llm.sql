-- Named queries of the LLM cost layer (docs/llm.md). psycopg2 parameters: %(name)s.

-- name: cache_hit
-- One round trip: the live entry, counted as a hit. The caller turns synchronous_commit off for
-- this transaction: a hit counter lost in a crash is not worth an fsync on the hot path.
UPDATE llm_cache SET hits = hits + 1, last_hit_at = now()
WHERE key = %(key)s AND expires_at > now()
RETURNING response, model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
          price_usd, request_id;

-- name: cache_store
-- A fresh answer replaces an entry (a bypassing call refreshes it) and restarts its TTL.
INSERT INTO llm_cache (key, model, step, seed, response, input_tokens, output_tokens,
                       cache_read_tokens, cache_write_tokens, price_usd, request_id, expires_at)
VALUES (%(key)s, %(model)s, %(step)s, %(seed)s, %(response)s, %(input_tokens)s, %(output_tokens)s,
        %(cache_read_tokens)s, %(cache_write_tokens)s, %(price_usd)s, %(request_id)s,
        now() + make_interval(secs => %(ttl_s)s))
ON CONFLICT (key) DO UPDATE SET
    model = EXCLUDED.model, step = EXCLUDED.step, seed = EXCLUDED.seed, response = EXCLUDED.response,
    input_tokens = EXCLUDED.input_tokens, output_tokens = EXCLUDED.output_tokens,
    cache_read_tokens = EXCLUDED.cache_read_tokens, cache_write_tokens = EXCLUDED.cache_write_tokens,
    price_usd = EXCLUDED.price_usd, request_id = EXCLUDED.request_id, created_at = now(),
    expires_at = EXCLUDED.expires_at;

-- name: cache_purge_expired
DELETE FROM llm_cache WHERE key IN (
    SELECT key FROM llm_cache WHERE expires_at <= now() LIMIT %(limit)s);

-- name: ledger_billed
-- A billed response (usable or not): added to its job step (when it ran in a job) and to today's
-- spend, in one statement.
WITH step AS (
    INSERT INTO job_steps (job_id, step, model, input_tokens, output_tokens, cache_read_tokens,
                           cache_write_tokens, price_usd, billed_calls)
    SELECT %(job_id)s, %(step)s, %(model)s, %(input_tokens)s, %(output_tokens)s,
           %(cache_read_tokens)s, %(cache_write_tokens)s, %(price_usd)s, 1
    WHERE %(job_id)s::uuid IS NOT NULL AND EXISTS (SELECT 1 FROM jobs WHERE id = %(job_id)s::uuid)
    ON CONFLICT (job_id, step) DO UPDATE SET
        model = EXCLUDED.model,
        input_tokens = job_steps.input_tokens + EXCLUDED.input_tokens,
        output_tokens = job_steps.output_tokens + EXCLUDED.output_tokens,
        cache_read_tokens = job_steps.cache_read_tokens + EXCLUDED.cache_read_tokens,
        cache_write_tokens = job_steps.cache_write_tokens + EXCLUDED.cache_write_tokens,
        price_usd = job_steps.price_usd + EXCLUDED.price_usd,
        billed_calls = job_steps.billed_calls + 1
)
INSERT INTO llm_spend_daily (day, model, price_usd, billed_calls)
VALUES ((now() AT TIME ZONE 'UTC')::date, %(model)s, %(price_usd)s, 1)
ON CONFLICT (day, model) DO UPDATE SET
    price_usd = llm_spend_daily.price_usd + EXCLUDED.price_usd,
    billed_calls = llm_spend_daily.billed_calls + 1, updated_at = now();

-- name: ledger_saved
-- A cache hit: nothing billed; the saving is kept on the job step and on today's row.
WITH step AS (
    INSERT INTO job_steps (job_id, step, model, cached, saved_usd)
    SELECT %(job_id)s, %(step)s, %(model)s, true, %(saved_usd)s
    WHERE %(job_id)s::uuid IS NOT NULL AND EXISTS (SELECT 1 FROM jobs WHERE id = %(job_id)s::uuid)
    ON CONFLICT (job_id, step) DO UPDATE SET
        cached = true, saved_usd = job_steps.saved_usd + EXCLUDED.saved_usd
)
INSERT INTO llm_spend_daily (day, model, saved_usd, cache_hits)
VALUES ((now() AT TIME ZONE 'UTC')::date, %(model)s, %(saved_usd)s, 1)
ON CONFLICT (day, model) DO UPDATE SET
    saved_usd = llm_spend_daily.saved_usd + EXCLUDED.saved_usd,
    cache_hits = llm_spend_daily.cache_hits + 1, updated_at = now();

-- name: spend_today
-- Today's spend (UTC day) over all models, and how long until the day ends.
SELECT (now() AT TIME ZONE 'UTC')::date AS day,
       coalesce((SELECT sum(price_usd) FROM llm_spend_daily
                 WHERE day = (now() AT TIME ZONE 'UTC')::date), 0) AS spent_usd,
       EXTRACT(EPOCH FROM (date_trunc('day', now() AT TIME ZONE 'UTC') + interval '1 day')
                          - (now() AT TIME ZONE 'UTC')) AS day_left_s;

-- name: memo_load
SELECT step, output, model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens,
       price_usd, cached, saved_usd, duration_s, request_id
FROM job_steps WHERE job_id = %(job_id)s AND output IS NOT NULL;

-- name: memo_store
INSERT INTO job_steps (job_id, step, output, model, duration_s, attempt, request_id, completed_at)
VALUES (%(job_id)s, %(step)s, %(output)s, %(model)s, %(duration_s)s, %(attempt)s, %(request_id)s, now())
ON CONFLICT (job_id, step) DO UPDATE SET
    output = EXCLUDED.output, model = coalesce(EXCLUDED.model, job_steps.model),
    duration_s = EXCLUDED.duration_s, attempt = EXCLUDED.attempt, request_id = EXCLUDED.request_id,
    completed_at = now();

-- name: step_ledger
-- The job's steps as tasks rows: what each step was billed over all attempts, and what the
-- response cache saved it.
SELECT step, model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, price_usd,
       cached, saved_usd, duration_s
FROM job_steps WHERE job_id = %(job_id)s;

-- name: rate_reserve
SELECT wait_s, reserved, reason, start_at
FROM llm_rate_reserve(%(model)s, %(rpm)s, %(input_tpm)s, %(output_tpm)s, %(headroom)s,
                      %(input_tokens)s, %(max_wait_s)s);

-- name: rate_settle
SELECT llm_rate_settle(%(model)s, %(input_delta)s, %(output_tokens)s, %(learned_rpm)s,
                       %(learned_input_tpm)s, %(learned_output_tpm)s, %(gate_s)s, %(gate_reason)s);

-- name: rate_state
SELECT model, learned_rpm, learned_input_tpm, learned_output_tpm, rpm, input_tpm, output_tpm,
       EXTRACT(EPOCH FROM gate_until - clock_timestamp()) AS gate_left_s, gate_reason
FROM llm_rate_limits ORDER BY model;
