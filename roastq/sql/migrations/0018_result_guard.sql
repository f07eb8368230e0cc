-- A job's result lands only on a live job (issue 14, item 1): `complete` (roastq/sql/jobs.sql)
-- updates the row only while the job is PENDING or RUNNING and calls this guard with whether it
-- did: otherwise the statement fails with SQLSTATE RQ001 (roastq.jobs.ALREADY_FINISHED) and the
-- whole transaction rolls back. So a result's bookkeeping needs no lock and read of the job row
-- first (a round trip of its own) to stay off a finished or cancelled job; the UPDATE takes the
-- row lock itself, and two results of one job land one after the other.
CREATE OR REPLACE FUNCTION roastq_result_lands(landed boolean, job uuid) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF landed IS NOT TRUE THEN
        RAISE EXCEPTION 'job % is already finished: this result is discarded', job USING ERRCODE = 'RQ001';
    END IF;
END
$$;
