-- A job's own log lines (JSON objects: time, level, logger, message, attempt[, exception]),
-- appended after each attempt by the job-logs middleware and shown by `roastq job ID`.
ALTER TABLE jobs ADD COLUMN logs jsonb NOT NULL DEFAULT '[]'::jsonb;
