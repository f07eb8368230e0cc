-- Results of actors declared with store_results=True (roastq/brokers/results.py). dramatiq-pg
-- keeps them on the message's own row of dramatiq.queue (columns result and result_ttl); its
-- STORE query writes them, with result_ttl in the same UTC wall-clock form compared here.

-- name: get_result
-- The stored result, unless it has expired.
SELECT result FROM dramatiq.queue
WHERE message_id = %(message_id)s AND result IS NOT NULL
  AND (result_ttl IS NULL OR result_ttl > (NOW() AT TIME ZONE 'UTC'));

-- name: clear_expired_results
-- Expired results are dropped (the message rows stay until the retention deletes them).
WITH expired AS (
    SELECT message_id FROM dramatiq.queue
    WHERE result IS NOT NULL AND result_ttl <= (NOW() AT TIME ZONE 'UTC')
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
UPDATE dramatiq.queue q SET result = NULL, result_ttl = NULL
FROM expired WHERE q.message_id = expired.message_id;
