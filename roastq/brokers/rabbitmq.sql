-- Queries for the RabbitMQ broker's status and housekeeping (roastq/brokers.py): what the Postgres
-- broker answers from dramatiq.queue, answered from the jobs table and the outbox instead.
-- psycopg2 parameters: %(name)s.

-- name: stalled_pending_jobs
-- RabbitMQ's reconcile (roastq/maintenance.py): PENDING jobs whose time came more than the grace
-- ago, in queues where RabbitMQ holds nothing waiting, and whose message is not waiting in the
-- outbox: their message is lost, and they get a new one. (A delayed retry's message is held
-- unacknowledged by a worker until its time: hence next_attempt_at plus the grace.)
SELECT j.id FROM jobs j
WHERE j.status = 'PENDING' AND j.cancel_requested_at IS NULL
  AND j.queue = ANY(%(queues)s::text[])
  AND j.updated_at < now() - make_interval(secs => %(grace_s)s)
  AND coalesce(j.next_attempt_at, j.updated_at) < now() - make_interval(secs => %(grace_s)s)
  AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.message_id = j.message_id AND o.sent_at IS NULL)
ORDER BY j.created_at
LIMIT %(limit)s;

-- name: running_jobs_by_queue
-- Jobs in flight, by queue: RabbitMQ counts the messages workers hold only as "unacked".
SELECT queue, count(*) AS n FROM jobs WHERE status = 'RUNNING' GROUP BY queue;
