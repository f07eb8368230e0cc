-- A job's result lands only on a live job (issue 14, item 1): the result's transaction no longer
-- locks and reads the job row first (a round trip of its own) to learn whether a duplicate
-- delivery finished it already. Its `complete` (roastq/sql/jobs.sql) updates the row only while
-- the job is PENDING or RUNNING and calls this guard with whether it did: otherwise the statement
-- fails with SQLSTATE RQ001 (roastq.jobs.ALREADY_FINISHED), the whole transaction rolls back, and
-- the pipeline discards its result (the first one stands). The UPDATE takes the row lock the
-- SELECT ... FOR UPDATE took: two results of one job still land one after the other.
CREATE OR REPLACE FUNCTION roastq_result_lands(landed boolean, job uuid) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF landed IS NOT TRUE THEN
        RAISE EXCEPTION 'job % is already finished: this result is discarded', job USING ERRCODE = 'RQ001';
    END IF;
END
$$;
