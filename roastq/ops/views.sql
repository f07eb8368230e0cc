-- Named queries that read what a job produced and what the queue holds, for people: the CLI's
-- `roastq job` and the console's pages use these same queries (one read layer for both).

-- name: job_evaluation
-- The evaluation version a job saved, with the document text its highlights point into.
SELECT ev.id, ev.version, ev.summary, ev.analysis, ev.grade, ev.self_critique, ev.created_at,
       av.provides_grades
FROM evaluation_versions ev
JOIN agent_versions av ON av.id = ev.agent_version_id
WHERE ev.job_id = %(job_id)s;

-- name: evaluation_highlights
-- Each highlight with its comment; located ones first, in document order.
SELECT h.id, h.start_offset, h.end_offset, h.quoted_text, h.is_valid, h.error,
       c.header, c.description, c.importance, c.grade, c.level
FROM highlights h
LEFT JOIN comments c ON c.highlight_id = h.id
WHERE h.evaluation_version_id = %(evaluation_version_id)s
ORDER BY h.is_valid DESC, h.start_offset NULLS LAST, c.importance DESC NULLS LAST;

-- name: job_subject
-- What the job evaluates: the document and agent versions pinned on it.
SELECT dv.title AS document_title, dv.content AS document_content,
       coalesce(dv.markdown_prepend, '') AS document_prepend, dv.version AS document_version,
       av.name AS agent_name, av.version AS agent_version, e.document_id, e.agent_id
FROM jobs j
JOIN evaluations e ON e.id = j.evaluation_id
JOIN document_versions dv ON dv.id = j.document_version_id
JOIN agent_versions av ON av.id = j.agent_version_id
WHERE j.id = %(job_id)s;

-- name: job_llm_calls
-- The LLM steps of a job as its ledger has them (every billed call of a step, over all attempts;
-- the local highlight step has no model and is left out).
SELECT step, model, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, price_usd,
       billed_calls, cached, saved_usd, duration_s, attempt, request_id, completed_at
FROM job_steps WHERE job_id = %(job_id)s AND model IS NOT NULL
ORDER BY completed_at NULLS LAST, step;

-- name: job_reruns
SELECT id, status, created_at, completed_at
FROM jobs WHERE original_job_id = %(job_id)s ORDER BY created_at;

-- name: dead_letter_groups
-- Dead letters, by error class and agent: FAILED jobs (their message was rejected) that no rerun
-- has replaced yet. The same with both brokers (the jobs table, not the broker's own).
-- Read from jobs_failed_idx alone (index-only); the reruns are hashed once (the explicit
-- `IS NOT NULL` lets the planner see how few they are: a hash anti join, not a sort of every dead
-- letter by id for a merge), and the rows are counted per agent version before the names are
-- joined (a few groups joined, not every row).
WITH per_version AS (
    SELECT j.error_class, j.agent_version_id, count(*) AS n,
           min(j.completed_at) AS first_at, max(j.completed_at) AS last_at
    FROM jobs j
    WHERE j.status = 'FAILED'
      AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.original_job_id = j.id AND r.original_job_id IS NOT NULL)
    GROUP BY j.error_class, j.agent_version_id
)
SELECT g.error_class, av.agent_id, av.name AS agent_name, sum(g.n)::bigint AS n,
       min(g.first_at) AS first_at, max(g.last_at) AS last_at
FROM per_version g
JOIN agent_versions av ON av.id = g.agent_version_id
GROUP BY g.error_class, av.agent_id, av.name
ORDER BY n DESC, g.error_class, agent_name, av.agent_id;  -- ties in a fixed order

-- name: dead_letters
-- The dead letters of one group (or all), newest first.
SELECT j.id, j.error_class, j.error, j.attempts, j.queue, j.completed_at, av.name AS agent_name,
       dv.title AS document_title
FROM jobs j
JOIN agent_versions av ON av.id = j.agent_version_id
JOIN document_versions dv ON dv.id = j.document_version_id
WHERE j.status = 'FAILED'
  AND NOT EXISTS (SELECT 1 FROM jobs r WHERE r.original_job_id = j.id AND r.original_job_id IS NOT NULL)
  -- `=`, not IS NOT DISTINCT FROM (the same here: the class is given or not asked), so that one
  -- class is read along jobs_failed_class_idx (error_class, created_at DESC) up to the limit
  AND (%(error_class)s::text IS NULL OR j.error_class = %(error_class)s::text)
  AND (%(agent_id)s::uuid IS NULL OR av.agent_id = %(agent_id)s::uuid)
ORDER BY j.created_at DESC, j.id  -- newest first, along jobs_status_idx (status, created_at)
LIMIT %(limit)s;

-- name: throughput_last_hour
-- Jobs finished a minute over the last hour, by outcome (the overview's chart).
SELECT date_trunc('minute', completed_at) AS minute,
       count(*) FILTER (WHERE status = 'COMPLETED') AS completed,
       count(*) FILTER (WHERE status = 'FAILED') AS failed,
       count(*) FILTER (WHERE status = 'CANCELLED') AS cancelled
FROM jobs
WHERE completed_at > now() - interval '1 hour'
GROUP BY 1 ORDER BY 1;

-- name: spend_by_day
-- Live LLM spend by UTC day and model (the ledger adds to it with every billed call), with the
-- response cache's hits and savings.
SELECT day, model, price_usd, billed_calls, saved_usd, cache_hits
FROM llm_spend_daily
WHERE day >= (now() AT TIME ZONE 'UTC')::date - %(days)s + 1
ORDER BY day DESC, price_usd DESC;

-- name: agents
-- Every agent, by its latest version's name (the console's agent filter).
SELECT DISTINCT ON (a.id) a.id, a.slug, v.name
FROM agents a JOIN agent_versions v ON v.agent_id = a.id
ORDER BY a.id, v.version DESC;
