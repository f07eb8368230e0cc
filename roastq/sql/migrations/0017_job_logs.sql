-- A job's own log lines in an insert-only table (issue 14, item 1): an attempt's lines were
-- appended to `jobs.logs`, a second update of the job row after its result (a dead row version
-- each time, and the whole jsonb array rewritten). Now each flush of the worker's JobLogs inserts
-- one row a job (that attempt's lines, in order); the job's log is its rows in `id` order.
-- Insert-only: vacuum has nothing to remove, and the job row is written once less a job.
CREATE TABLE job_logs (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id uuid NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    written_at timestamptz NOT NULL DEFAULT now(),
    lines jsonb NOT NULL
);
CREATE INDEX job_logs_job_idx ON job_logs (job_id, id);

INSERT INTO job_logs (job_id, written_at, lines)
SELECT id, updated_at, logs FROM jobs WHERE logs <> '[]'::jsonb ORDER BY created_at;

-- Additive, as every migration (docs/operations.md, "Upgrades"): `jobs.logs` stays, no longer read
-- or written by this version; a worker older than this migration still appends there while the
-- pools roll (those lines are in its process log). A later migration drops the column.
COMMENT ON COLUMN jobs.logs IS 'unused since 0017_job_logs: a job''s lines are in job_logs';
