-- A message runs once while its first run is alive (issue 13).

-- Which worker (host:pid) took a message: a 'consumed' message whose lock is free is taken again
-- only when that worker is gone. A free lock alone proves only that one session ended: Postgres
-- may have terminated it, or restarted, while the worker runs on.
ALTER TABLE dramatiq.queue ADD COLUMN IF NOT EXISTS consumer_id text;

-- When the worker's liveness session took its liveness lock (roastq_worker_lock). NULL: a worker
-- that takes none (an older release): only its heartbeat tells whether it lives.
ALTER TABLE worker_heartbeats ADD COLUMN IF NOT EXISTS lock_since timestamptz;

-- The advisory lock a worker process holds on its own session for as long as it lives.
CREATE OR REPLACE FUNCTION roastq_worker_lock(worker_id text) RETURNS bigint
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT hashtextextended('roastq.worker:' || worker_id, 0)
$$;

-- Is this worker alive? Its liveness lock is held: a kill -9 ends its session and frees the
-- lock at once, long before its heartbeat goes stale, and a worker whose beats are late (an
-- overloaded database) but whose session lives is not taken for dead. A lock taken before the
-- server last started proves nothing (a restart frees every lock while the workers live on and
-- reconnect), nor does a worker that takes none (an older release): for those the heartbeat
-- decides (fresh within stale_after_s). No row (a graceful stop deletes it), or NULL: not alive.
-- The probe is a transaction-level lock: held, at most, until the caller's transaction ends.
CREATE OR REPLACE FUNCTION roastq_worker_alive(worker text, stale_after_s double precision) RETURNS boolean
LANGUAGE sql VOLATILE AS $$
    SELECT coalesce(bool_or(
        CASE WHEN h.lock_since IS NULL OR h.lock_since < pg_postmaster_start_time()
             THEN h.last_seen_at > now() - make_interval(secs => stale_after_s)
             ELSE NOT pg_try_advisory_xact_lock(roastq_worker_lock(worker)) END), false)
    FROM worker_heartbeats h
    WHERE h.worker_id = worker
$$;
