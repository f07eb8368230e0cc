-- The console's hot reads from indexes alone (issue 16, item 6: every page under 200 ms at 100,000
-- jobs). Both are partial: a message or a job enters them only in the states the console counts,
-- so the broker's and the jobs' write path pays for them only there (a finished message or job
-- is never written into them).

-- The overview's queue counts (`queue_summary` without finished messages): messages waiting, held
-- and dead, per queue name and state, with the oldest waiting one and the id the lock test needs,
-- read by an index-only scan instead of visiting a heap page for each row.
CREATE INDEX IF NOT EXISTS queue_live_idx ON dramatiq.queue (queue_name, "state") INCLUDE (mtime, message_id)
    WHERE "state" IN ('queued', 'consumed', 'rejected');
-- Dead letters of one error class, newest first (the dead-letter page's group, the jobs page's
-- status FAILED + class filter): the first rows of the class straight from the index, instead of
-- every FAILED job's row read and filtered.
CREATE INDEX IF NOT EXISTS jobs_failed_class_idx ON jobs (error_class, created_at DESC, id DESC)
    WHERE status = 'FAILED';
