-- Attempt outcomes in one vocabulary with the decision's (roastq/failures.py, Action.outcome):
-- a retried attempt is 'retried' (it was 'retry').
UPDATE job_attempts SET outcome = 'retried' WHERE outcome = 'retry';
