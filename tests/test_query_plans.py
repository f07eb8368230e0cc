"""The job path's statements read only the rows they touch, whatever the planner's statistics say.

A burst of enqueues into a quiet queue outruns ANALYZE: the statistics still say the tables are
empty while thousands of messages and jobs wait (autovacuum analyses a table a minute later at
best, and never where it is off). A statement whose plan is chosen from those statistics may scan
the whole backlog for every batch it takes: the drain then slows as the backlog grows. These tests
make exactly that state (tables analysed empty, then filled) and count, in the executed plan, the
rows each statement read from each table.
"""

from __future__ import annotations

import uuid

import psycopg2
import pytest
from psycopg2.extras import RealDictCursor

BACKLOG = 1500


def rows_read(plan: dict) -> dict[str, int]:
    """Rows each table's scans read in an executed plan (``EXPLAIN (ANALYZE, FORMAT JSON)``):
    the rows a scan returned and those its filter removed, times its loops."""
    read: dict[str, int] = {}

    def walk(node):
        if "Relation Name" in node and "Actual Rows" in node:
            n = (node["Actual Rows"] + node.get("Rows Removed by Filter", 0)) * node.get("Actual Loops", 1)
            read[node["Relation Name"]] = read.get(node["Relation Name"], 0) + int(n)
        for child in node.get("Plans", []):
            walk(child)

    walk(plan["Plan"])
    return read


def executed_plan(database_url, sql: str, params, *, generic: bool = False, buffers: bool = False) -> dict:
    """Run ``sql`` under EXPLAIN ANALYZE and roll it back, on a session of its own (the consume
    takes session advisory locks: they go with the session). ``generic``: as the prepared
    statement the workers run (``db.execute_prepared``), with the generic plan Postgres switches
    to after five executions. ``buffers``: with the buffers each node touched."""
    from roastq import db as roastq_db

    explain = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " if buffers else "EXPLAIN (ANALYZE, FORMAT JSON) "
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cur:
            if generic:
                name, text, execute = roastq_db._as_prepared(sql)
                cur.execute("SET plan_cache_mode = force_generic_plan")
                cur.execute(f"PREPARE {name} AS {text}".replace("%", "%%"))
                cur.execute(explain + execute, params)
            else:
                cur.execute(explain + sql, params)
            (plan,) = cur.fetchone()[0]
        conn.rollback()
        return plan
    finally:
        conn.close()


@pytest.fixture
def analysed_empty(db):
    """The tables emptied and analysed so: the statistics of a quiet system."""
    with db.cursor() as cur:
        cur.execute(
            "ANALYZE dramatiq.queue, jobs, job_attempts, evaluations, documents, document_versions, agent_versions"
        )
    return db


@pytest.fixture
def burst(analysed_empty, database_url):
    """BACKLOG jobs of as many documents, with their messages, enqueued into tables analysed empty,
    and the drain under way: each job has had an attempt, which has ended for all but the ten
    jobs returned (their rows: id, message_id, queue_name, message)."""
    from roastq.api import enqueue_evaluations

    db = analysed_empty
    with db.cursor() as cur:
        cur.execute(
            "INSERT INTO documents (slug) SELECT 'burst-' || g FROM generate_series(1, %s) g RETURNING id",
            (BACKLOG,),
        )
        docs = [str(r[0]) for r in cur.fetchall()]
        cur.execute(
            "INSERT INTO document_versions (document_id, version, title, content)"
            " SELECT id, 1, 'Burst', 'Some text.' FROM documents WHERE slug LIKE 'burst-%%'"
        )
        cur.execute("INSERT INTO agents (slug) VALUES ('burst') RETURNING id")
        agent = str(cur.fetchone()[0])
        cur.execute(
            "INSERT INTO agent_versions (agent_id, version, name, primary_instructions)"
            " VALUES (%s, 1, 'Burst', 'Evaluate.')",
            (agent,),
        )
    job_ids = enqueue_evaluations([(d, agent) for d in docs])
    with db.cursor() as cur:
        cur.execute("INSERT INTO job_attempts (job_id, attempt, message_id) SELECT id, 1, message_id FROM jobs")
        cur.execute("UPDATE jobs SET attempts = 1")
        cur.execute(
            "UPDATE job_attempts SET ended_at = now(), outcome = 'completed' WHERE job_id <> ALL(%s::uuid[])",
            (job_ids[:10],),
        )
    with db.cursor(cursor_factory=RealDictCursor) as cur:
        cur.execute(
            "SELECT j.id, j.message_id, q.queue_name, q.message::text AS message"
            " FROM jobs j JOIN dramatiq.queue q ON q.message_id = j.message_id WHERE j.id = ANY(%s::uuid[])",
            (job_ids[:10],),
        )
        return cur.fetchall()


GENERIC = pytest.mark.parametrize("generic", [False, True], ids=["custom-plan", "generic-plan"])


@GENERIC
def test_a_consumed_batch_reads_its_messages_and_jobs_only(burst, database_url, generic):
    from dramatiq.message import Message
    from dramatiq_pg.broker import message_lock

    from roastq import jobs
    from roastq.brokers.postgres import CONSUME

    messages = [Message.decode(r["message"].encode()) for r in burst]
    plan = executed_plan(
        database_url,
        CONSUME,
        {
            "ids": [m.message_id for m in messages],
            "locks": [message_lock(m) for m in messages],
            "queue": burst[0]["queue_name"],
            "consumer_id": "plan-test",
            "stale_after_s": 30.0,
            **jobs.start_piece([(r["message_id"], r["id"]) for r in burst]),  # their jobs start with it
        },
        generic=generic,
    )
    read = rows_read(plan)
    assert read.get("queue", 0) <= 3 * len(messages), read  # the batch, not the backlog of BACKLOG
    assert read.get("jobs", 0) <= 3 * len(messages), read
    assert read.get("job_attempts", 0) <= 3 * len(messages), read


@GENERIC
def test_a_job_start_reads_its_own_rows_only(burst, database_url, generic):
    from roastq import jobs

    job = burst[0]
    plan = executed_plan(
        database_url,
        jobs.J.start,
        {
            "job_id": job["id"],
            "message_id": job["message_id"],
            "worker_id": "plan-test",
            "stale_after_s": 30.0,
            "not_running_here": True,
        },
        generic=generic,
    )
    read = rows_read(plan)
    for table in ("jobs", "evaluations", "agent_versions", "job_attempts"):
        assert read.get(table, 0) <= 3, (table, read)


def start_many_params(burst) -> dict:
    return {
        "job_ids": [r["id"] for r in burst],
        "message_ids": [r["message_id"] for r in burst],
        "not_running_here": [True] * len(burst),
        "worker_id": "plan-test",
        "stale_after_s": 30.0,
    }


@GENERIC
def test_a_group_of_starts_reads_its_own_rows_only(burst, database_url, generic):
    from roastq import jobs

    plan = executed_plan(database_url, jobs.J.start_many, start_many_params(burst), generic=generic)
    read = rows_read(plan)
    for table in ("jobs", "evaluations", "agent_versions", "job_attempts"):
        assert read.get(table, 0) <= 3 * len(burst), (table, read)


@GENERIC
@pytest.mark.parametrize("statement", ["lock", "complete", "finish_attempt", "cancel_requested"])
def test_a_job_result_reads_its_own_rows_only(burst, database_url, statement, generic):
    from roastq import jobs

    job = burst[0]
    params = {
        "job_id": job["id"],
        "message_id": job["message_id"],
        "attempt": 1,
        "evaluation_version_id": None,
        "price_usd": 0,
    }
    sql = getattr(jobs.J, statement)
    used = {k: v for k, v in params.items() if f"%({k})s" in sql}
    read = rows_read(executed_plan(database_url, sql, used, generic=generic))
    assert all(n <= 3 for n in read.values()), read


def test_rows_read_counts_a_scan_of_the_whole_table(burst, database_url):
    """The measure itself: a statement that does scan the backlog is seen to."""
    read = rows_read(
        executed_plan(database_url, "SELECT count(*) FROM dramatiq.queue WHERE message::text LIKE %s", ("%x%",))
    )
    assert read["queue"] >= BACKLOG


def enqueue_statement(document_id, agent_id):
    """``enqueue_evaluation``'s one statement and its parameters, as ``roastq.api`` runs it."""
    from roastq import api

    sql, params, _ = api.one_statement(
        api.Q.enqueue_evaluation,
        {"document_id": document_id, "agent_id": agent_id, "queue": "interactive"},
        queues=["interactive"],
        deadlines={"interactive": None},
        not_before=None,
        delay_ms=None,
    )
    return sql, params


def rerun_statement(job_id):
    """``rerun_job``'s one statement and its parameters, as ``roastq.api`` runs it."""
    from roastq import api, jobs
    from roastq.queues import JOB_QUEUES

    sql, params, _ = api.one_statement(
        api.Q.rerun_job,
        {"original_job_id": job_id, "finished": sorted(str(s) for s in jobs.FINISHED)},
        queues=list(JOB_QUEUES),
        deadlines={q: None for q in JOB_QUEUES},
        not_before=None,
        delay_ms=None,
    )
    return sql, params


@pytest.fixture
def planned_early(analysed_empty, database_url):
    """A pooled session of a worker that started on an empty database: each job-path statement
    prepared and run, as ``db`` runs it, while the tables were tiny (Postgres caches a prepared
    statement's generic plan from its sixth execution for the session's lifetime; ANALYZE would
    renew it, and autovacuum may be late or off)."""
    from roastq import db as roastq_db
    from roastq import jobs
    from roastq.brokers.postgres import CONSUME

    none = str(uuid.uuid4())
    statements = {
        "consume": (
            CONSUME,
            {
                "ids": [none],
                "locks": [1],
                "queue": "batch",
                "consumer_id": "x",
                "stale_after_s": 30.0,
                **jobs.start_piece([(none, none)]),
            },
        ),
        "start": (
            jobs.J.start,
            {"job_id": none, "message_id": none, "worker_id": "x", "stale_after_s": 30.0, "not_running_here": True},
        ),
        "start_many": (
            jobs.J.start_many,
            {
                "job_ids": [none],
                "message_ids": [none],
                "not_running_here": [True],
                "worker_id": "x",
                "stale_after_s": 30.0,
            },
        ),
        "finish_attempt": (jobs.J.finish_attempt, {"job_id": none, "attempt": 1, "message_id": none}),
        "lock": (jobs.J.lock, {"job_id": none}),
        "enqueue": enqueue_statement(none, none),
        "rerun": rerun_statement(none),
    }
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    with conn.cursor() as cur:
        for sql, params in statements.values():
            for _ in range(8):  # past the five custom plans: the generic plan is cached now
                roastq_db.execute_prepared(cur, sql, params)
    yield conn, statements
    conn.close()


@pytest.mark.parametrize("statement", ["consume", "start", "start_many", "finish_attempt", "lock", "enqueue", "rerun"])
def test_a_plan_cached_while_the_tables_were_tiny_still_reads_only_its_rows(planned_early, burst, statement):
    from roastq import db as roastq_db
    from roastq import jobs

    conn, statements = planned_early
    job = burst[0]
    sql, _ = statements[statement]
    if statement == "consume":
        from dramatiq.message import Message
        from dramatiq_pg.broker import message_lock

        messages = [Message.decode(r["message"].encode()) for r in burst]
        params = {
            "ids": [m.message_id for m in messages],
            "locks": [message_lock(m) for m in messages],
            "queue": job["queue_name"],
            "consumer_id": "plan-test",
            "stale_after_s": 30.0,
            **jobs.start_piece([(r["message_id"], r["id"]) for r in burst]),
        }
    elif statement == "enqueue":
        with conn.cursor() as cur:
            cur.execute(
                "SELECT e.document_id, e.agent_id FROM jobs j JOIN evaluations e ON e.id = j.evaluation_id WHERE j.id = %s",
                (job["id"],),
            )
            document_id, agent_id = (str(v) for v in cur.fetchone())
        sql, params = enqueue_statement(document_id, agent_id)
    elif statement == "rerun":
        with conn.cursor() as cur:
            cur.execute("UPDATE jobs SET status = 'COMPLETED' WHERE id = %s", (job["id"],))
        sql, params = rerun_statement(str(job["id"]))
    elif statement == "start_many":
        params = start_many_params(burst)
    else:
        params = {
            "job_id": job["id"],
            "message_id": job["message_id"],
            "attempt": 1,
            "worker_id": "plan-test",
            "stale_after_s": 30.0,
            "not_running_here": True,
        }
        params = {k: v for k, v in params.items() if f"%({k})s" in sql}
    conn.autocommit = False
    try:
        with conn.cursor() as cur:
            _, _, execute = roastq_db._as_prepared(sql)
            cur.execute(roastq_db.PREPARED_SETTINGS + "; EXPLAIN (ANALYZE, FORMAT JSON) " + execute, params)
            (plan,) = cur.fetchone()[0]
            if statement in ("enqueue", "rerun"):  # it wrote its job and message: the plan was run
                assert plan["Plan"]["Plans"], plan
    finally:
        conn.rollback()
    read = rows_read(plan)
    limit = 3 * len(burst) if statement in ("consume", "start_many") else 3
    assert all(n <= limit for n in read.values()), read


def blocks_touched(plan: dict) -> dict[str, int]:
    """Shared buffers each table's scans touched (hit or read) in ``EXPLAIN (ANALYZE, BUFFERS)``:
    unlike rows, this counts the dead row versions a scan had to visit and skip."""
    touched: dict[str, int] = {}

    def walk(node):
        if "Scan" in node["Node Type"] and "Relation Name" in node:
            n = node.get("Shared Hit Blocks", 0) + node.get("Shared Read Blocks", 0)
            touched[node["Relation Name"]] = touched.get(node["Relation Name"], 0) + n
        for child in node.get("Plans", []):
            walk(child)

    walk(plan["Plan"])
    return touched


@GENERIC
def test_a_result_reads_its_own_message_beside_a_held_back_vacuum(db, database_url, generic):
    """The 300/s run beside an idle-in-transaction session (docs/benchmarks.md, issue 14, session
    9): every message there had been consumed and then done while vacuum was held back, so the
    queue's partial index of live states held every dead 'consumed' version, which no scan may
    skip for good; an ANALYZE then found hardly a live consumed message. finish_attempt's update of
    its message, planned along that index (state = 'consumed', the id as a filter), visited them
    all: 150 to 190 ms a result, and the drain fell to a third for a minute, until the next
    ANALYZE changed the plan back."""
    from roastq import jobs

    holder = psycopg2.connect(database_url)  # the idle transaction: its snapshot holds vacuum back
    try:
        with holder.cursor() as cur:
            cur.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
            cur.execute("SELECT count(*) FROM dramatiq.queue")
        with db.cursor() as cur:
            cur.execute(
                "INSERT INTO dramatiq.queue (queue_name, message_id, state, message)"
                " SELECT 'batch', gen_random_uuid(), 'queued', '{}'::jsonb FROM generate_series(1, 3000)"
            )
            cur.execute("UPDATE dramatiq.queue SET state = 'consumed'")
            cur.execute("UPDATE dramatiq.queue SET state = 'done'")
            message_id = str(uuid.uuid4())
            cur.execute(
                "INSERT INTO dramatiq.queue (queue_name, message_id, state, message) VALUES ('batch', %s, 'consumed', '{}')",
                (message_id,),
            )
            cur.execute("ANALYZE dramatiq.queue")
        params = {"job_id": str(uuid.uuid4()), "attempt": 1, "message_id": message_id}
        plan = executed_plan(database_url, jobs.J.finish_attempt, params, generic=generic, buffers=True)
        touched = blocks_touched(plan)
        assert touched.get("queue", 0) <= 10, (touched, plan)
    finally:
        holder.close()
