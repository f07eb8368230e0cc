-- The console (docs/console.md): indexes for its pages, so that they stay fast on a million jobs.

-- The jobs list: newest first, paged by keyset on (created_at, id).
CREATE INDEX IF NOT EXISTS jobs_created_idx ON jobs (created_at DESC, id DESC);
-- A job's reruns (the job page), and "failed and not yet rerun" (dead letters).
CREATE INDEX IF NOT EXISTS jobs_original_idx ON jobs (original_job_id) WHERE original_job_id IS NOT NULL;
-- Throughput and failures over the last hour (the overview's chart).
CREATE INDEX IF NOT EXISTS jobs_completed_idx ON jobs (completed_at) WHERE completed_at IS NOT NULL;
-- Dead letters (FAILED jobs), grouped and listed newest first, read from the index alone.
CREATE INDEX IF NOT EXISTS jobs_failed_idx ON jobs (created_at DESC, id DESC)
    INCLUDE (error_class, agent_version_id, completed_at) WHERE status = 'FAILED';
