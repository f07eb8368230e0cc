-- Domain tables, mirroring RoastMyPost's Prisma models in snake_case.

CREATE TABLE documents (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug text UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE document_versions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    document_id uuid NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    version integer NOT NULL,
    title text NOT NULL,
    authors text[] NOT NULL DEFAULT '{}',
    content text NOT NULL,
    markdown_prepend text,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (document_id, version)
);

CREATE TABLE agents (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    slug text UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE agent_versions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    agent_id uuid NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    version integer NOT NULL,
    name text NOT NULL,
    description text NOT NULL DEFAULT '',
    primary_instructions text NOT NULL,
    self_critique_instructions text,
    provides_grades boolean NOT NULL DEFAULT false,
    time_limit_s integer NOT NULL DEFAULT 240 CHECK (time_limit_s > 0),
    retry_on_timeout boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (agent_id, version)
);

CREATE TABLE evaluations (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    document_id uuid NOT NULL REFERENCES documents(id) ON DELETE CASCADE,
    agent_id uuid NOT NULL REFERENCES agents(id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (document_id, agent_id)
);

CREATE TABLE jobs (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    evaluation_id uuid NOT NULL REFERENCES evaluations(id) ON DELETE CASCADE,
    document_version_id uuid NOT NULL REFERENCES document_versions(id),
    agent_version_id uuid NOT NULL REFERENCES agent_versions(id),
    status text NOT NULL DEFAULT 'PENDING'
        CHECK (status IN ('PENDING', 'RUNNING', 'COMPLETED', 'FAILED', 'CANCELLED')),
    queue text NOT NULL DEFAULT 'interactive',
    attempts integer NOT NULL DEFAULT 0,
    error_class text,
    error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    completed_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    next_attempt_at timestamptz,
    duration_s double precision,
    price_usd numeric(14, 6),
    original_job_id uuid REFERENCES jobs(id),
    evaluation_version_id uuid UNIQUE,
    message_id uuid,
    cancel_requested_at timestamptz,
    cancel_reason text
);
CREATE INDEX jobs_status_idx ON jobs (status, created_at);
CREATE INDEX jobs_evaluation_idx ON jobs (evaluation_id);
CREATE INDEX jobs_message_idx ON jobs (message_id);

CREATE TABLE evaluation_versions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    evaluation_id uuid NOT NULL REFERENCES evaluations(id) ON DELETE CASCADE,
    version integer NOT NULL,
    job_id uuid NOT NULL UNIQUE REFERENCES jobs(id),
    agent_version_id uuid NOT NULL REFERENCES agent_versions(id),
    document_version_id uuid NOT NULL REFERENCES document_versions(id),
    summary text,
    analysis text,
    grade integer CHECK (grade BETWEEN 0 AND 100),
    self_critique text,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (evaluation_id, version)
);
ALTER TABLE jobs ADD CONSTRAINT jobs_evaluation_version_fk
    FOREIGN KEY (evaluation_version_id) REFERENCES evaluation_versions(id);

CREATE TABLE highlights (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    evaluation_version_id uuid NOT NULL REFERENCES evaluation_versions(id) ON DELETE CASCADE,
    start_offset integer,
    end_offset integer,
    quoted_text text NOT NULL,
    prefix text,
    is_valid boolean NOT NULL,
    error text
);

CREATE TABLE comments (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    evaluation_version_id uuid NOT NULL REFERENCES evaluation_versions(id) ON DELETE CASCADE,
    highlight_id uuid REFERENCES highlights(id) ON DELETE SET NULL,
    description text NOT NULL,
    header text,
    importance integer,
    grade integer,
    level text CHECK (level IN ('error', 'warning', 'info', 'success'))
);

CREATE TABLE tasks (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    job_id uuid NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    evaluation_version_id uuid REFERENCES evaluation_versions(id) ON DELETE CASCADE,
    name text NOT NULL,
    model text,
    input_tokens integer NOT NULL DEFAULT 0,
    output_tokens integer NOT NULL DEFAULT 0,
    cache_read_tokens integer NOT NULL DEFAULT 0,
    cache_write_tokens integer NOT NULL DEFAULT 0,
    price_usd numeric(14, 6) NOT NULL DEFAULT 0,
    duration_s double precision NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tasks_job_idx ON tasks (job_id);

-- One row per attempt at a job: what happened and, for a retry, the delay chosen and why.
CREATE TABLE job_attempts (
    job_id uuid NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    attempt integer NOT NULL,
    message_id uuid,
    started_at timestamptz NOT NULL DEFAULT now(),
    ended_at timestamptz,
    outcome text,            -- completed, retry, failed, cancelled, crashed
    error_class text,
    error text,
    delay_s double precision,
    delay_reason text,       -- backoff, server_requested
    PRIMARY KEY (job_id, attempt)
);
