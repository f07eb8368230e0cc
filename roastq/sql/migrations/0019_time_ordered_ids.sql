-- Time-ordered ids (issue 14, item 5; roastq/ids.py says why): the ids the database makes are
-- UUIDs of version 7 (RFC 9562), as those roastq makes in Python. A new row's index entry then
-- lands on the rightmost leaf pages, which stay in shared buffers however large the table grows,
-- not on a random page of an index that no longer fits. Postgres 18 has uuidv7(); 15 has not.
-- The first 48 bits are the milliseconds since 1970 (of `at`, the statement's clock by default),
-- the rest a random version-4 UUID's, with its version nibble turned from 4 into 7 (bits 52, 53).
CREATE OR REPLACE FUNCTION roastq_uuid7(at timestamptz DEFAULT clock_timestamp()) RETURNS uuid
LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
    SELECT encode(set_bit(set_bit(
        overlay(uuid_send(gen_random_uuid())
                PLACING substring(int8send(floor(extract(epoch FROM at) * 1000)::bigint) FROM 3)
                FROM 1 FOR 6),
        52, 1), 53, 1), 'hex')::uuid
$$;

-- Every id column's default (rows made before keep their ids: an id is never rewritten).
ALTER TABLE documents ALTER COLUMN id SET DEFAULT roastq_uuid7();
ALTER TABLE document_versions ALTER COLUMN id SET DEFAULT roastq_uuid7();
ALTER TABLE agents ALTER COLUMN id SET DEFAULT roastq_uuid7();
ALTER TABLE agent_versions ALTER COLUMN id SET DEFAULT roastq_uuid7();
ALTER TABLE evaluations ALTER COLUMN id SET DEFAULT roastq_uuid7();
ALTER TABLE jobs ALTER COLUMN id SET DEFAULT roastq_uuid7();
ALTER TABLE evaluation_versions ALTER COLUMN id SET DEFAULT roastq_uuid7();
ALTER TABLE highlights ALTER COLUMN id SET DEFAULT roastq_uuid7();
ALTER TABLE comments ALTER COLUMN id SET DEFAULT roastq_uuid7();
ALTER TABLE tasks ALTER COLUMN id SET DEFAULT roastq_uuid7();
ALTER TABLE llm_batch_requests ALTER COLUMN id SET DEFAULT roastq_uuid7();
