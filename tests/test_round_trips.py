"""The job path's statements: one round trip where one statement does, the WAL flush skipped only
where it is named, and the hot tables vacuumed early."""

import time

from helpers import one, rows


def test_execute_one_is_its_own_transaction_and_leaves_the_pooled_connection_as_it_was(db):
    from roastq import db as roastq_db

    with db.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS rt_probe (n int)")
    try:
        row = roastq_db.execute_one(
            "INSERT INTO rt_probe VALUES (1) RETURNING current_setting('synchronous_commit') AS s,"
            " txid_current_if_assigned() IS NOT NULL AS in_tx"
        )
        assert row["s"] == "on" and row["in_tx"]
        assert one(db, "SELECT count(*) FROM rt_probe") == 1  # committed: another session sees it
        lazy = roastq_db.execute_one("SELECT current_setting('synchronous_commit') AS s", durable=False)
        assert lazy["s"] == "off"
        first = roastq_db.execute_one("SELECT txid_current() AS t")["t"]
        assert roastq_db.execute_one("SELECT txid_current() AS t")["t"] != first  # a transaction each
        with roastq_db.transaction() as cur:  # the pooled connections are in transactions again
            cur.execute("SELECT txid_current() AS t, current_setting('synchronous_commit') AS s")
            row = cur.fetchone()
            cur.execute("SELECT txid_current() AS t")
            assert cur.fetchone()["t"] == row["t"] and row["s"] == "on"
    finally:
        with db.cursor() as cur:
            cur.execute("DROP TABLE rt_probe")


def test_a_failed_statement_leaves_nothing_and_the_pool_usable(db):
    import psycopg2
    import pytest

    from roastq import db as roastq_db

    with pytest.raises(psycopg2.errors.DivisionByZero):
        roastq_db.execute_one("SELECT 1 / 0")
    assert roastq_db.execute_one("SELECT 2 AS n")["n"] == 2


def test_hot_tables_have_their_own_autovacuum_settings(db):
    for table in ("dramatiq.queue", "jobs", "job_attempts"):
        options = one(db, "SELECT reloptions FROM pg_class WHERE oid = %s::regclass", table)
        assert "autovacuum_vacuum_scale_factor=0.01" in options, (table, options)
        assert "autovacuum_vacuum_cost_delay=0" in options


def test_a_lean_transaction_sends_begin_with_its_first_statement_and_deferred_writes_with_commit(db, wire):
    from roastq import db as roastq_db

    with db.cursor() as cur:
        cur.execute("CREATE TABLE lean_probe (n int PRIMARY KEY, t bigint)")
    try:
        wire.clear()
        with roastq_db.lean_transaction() as cur:
            cur.execute("SELECT txid_current() AS t")
            t = cur.fetchone()["t"]
            cur.defer("INSERT INTO lean_probe VALUES (1, txid_current())")
            cur.defer("INSERT INTO lean_probe VALUES (%(n)s, txid_current())", {"n": 2})
        sent = [q for q in wire.taken() if "lean_probe" in q or "txid_current() AS t" in q]
        assert len(sent) == 2, sent  # was five: BEGIN, SELECT, INSERT, INSERT, COMMIT
        assert sent[0].startswith("BEGIN; SELECT txid_current()")
        assert sent[1].endswith("; COMMIT") and sent[1].count("INSERT") == 2
        assert [tuple(r) for r in rows(db, "SELECT n, t FROM lean_probe ORDER BY n")] == [
            (1, t),
            (2, t),
        ]  # one transaction
    finally:
        with db.cursor() as cur:
            cur.execute("DROP TABLE lean_probe")


def test_a_lean_transaction_that_fails_in_a_deferred_write_or_its_block_leaves_nothing(db):
    import psycopg2
    import pytest

    from roastq import db as roastq_db

    with db.cursor() as cur:
        cur.execute("CREATE TABLE lean_probe (n int PRIMARY KEY)")
    try:
        with pytest.raises(psycopg2.errors.UniqueViolation):  # raised at the COMMIT that carries it
            with roastq_db.lean_transaction() as cur:
                cur.execute("INSERT INTO lean_probe VALUES (1)")
                cur.defer("INSERT INTO lean_probe VALUES (1)")
        with pytest.raises(RuntimeError):
            with roastq_db.lean_transaction() as cur:
                cur.execute("INSERT INTO lean_probe VALUES (2)")
                raise RuntimeError("the job's own failure")
        assert one(db, "SELECT count(*) FROM lean_probe") == 0
        for _ in range(roastq_db.pool().maxconn):  # every pooled connection is clean again
            with roastq_db.transaction() as cur:
                cur.execute("SELECT txid_current() AS t")
                t = cur.fetchone()["t"]
                cur.execute("SELECT txid_current() AS t")
                assert cur.fetchone()["t"] == t  # in a transaction, not autocommit
    finally:
        with db.cursor() as cur:
            cur.execute("DROP TABLE lean_probe")


def test_a_jobs_result_is_prepared_once_a_session_and_stays_two_round_trips(seeded, wire):
    """The result's statements (lock, complete, finish_attempt) are the session's prepared
    statements: the first result on a session sends their PREPAREs with their first EXECUTEs,
    the next only EXECUTEs, in the same two round trips (the lock's answer read)."""
    from roastq import db as roastq_db
    from roastq import jobs
    from roastq.api import enqueue_evaluations

    doc, agent = next(iter(seeded.documents.values())), next(iter(seeded.agents.values()))
    job_ids = enqueue_evaluations([(doc, agent)] * 2)
    sent = []
    for job_id in job_ids:
        wire.clear()
        with roastq_db.lean_transaction() as cur:
            jobs.lock(cur, job_id)
            jobs.complete(cur, job_id, evaluation_version_id=None, price_usd=0)
            jobs.finish_attempt(cur, job_id, 1, job_id)
        sent.append([q for q in wire.taken() if "roastq_" in q])
    first, second = sent
    assert len(first) == 2 and len(second) == 2, sent
    assert sum(q.count("PREPARE roastq_") for q in first) == 3, first
    assert not any("PREPARE" in q for q in second) and sum(q.count("EXECUTE roastq_") for q in second) == 3, second
    with roastq_db.transaction() as cur:
        cur.execute("SELECT count(*) AS n FROM jobs WHERE status = 'COMPLETED' AND id = ANY(%s::uuid[])", (job_ids,))
        assert cur.fetchone()["n"] == 2


def test_a_lean_transaction_whose_prepared_statement_failed_leaves_its_session_usable(db):
    """A PREPARE that ran before its EXECUTE failed outlives the ROLLBACK (PREPARE is not
    transactional): the session's prepared statements are dropped with it, or every later use
    of the statement on that session would fail as a duplicate PREPARE."""
    import psycopg2
    import pytest

    from roastq import db as roastq_db

    sql = "SELECT 10 / %(n)s AS x, pg_backend_pid() AS pid"
    with pytest.raises(psycopg2.errors.DivisionByZero):
        with roastq_db.lean_transaction() as cur:
            cur.execute(sql, {"n": 0}, prepared=True)
    pids = set()
    for n in (1, 2, 5):
        with roastq_db.lean_transaction() as cur:
            cur.execute(sql, {"n": n}, prepared=True)
            row = cur.fetchone()
            assert row["x"] == 10 // n
            pids.add(row["pid"])
    with roastq_db.autocommit() as cur:
        cur.execute("SELECT pg_backend_pid() AS pid")
        assert cur.fetchone()["pid"] in pids  # the same pooled session as the failed one


def test_a_consumed_batch_is_one_statement_and_its_lock_releases_one_more(db, wire):
    """Five notified messages are taken in one round trip (the consume, its own commit: stock's
    transaction added BEGIN and COMMIT), and their locks freed in one more."""
    from test_broker import drain, make_consumer, put_message

    consumer = make_consumer("ours", prefetch=8, recovery_interval_s=60)
    try:
        drain(consumer, 0.3)  # the consumer's LISTEN and first look are not counted
        messages = [put_message(db, notify=True) for _ in range(5)]
        time.sleep(0.3)  # all five notifications are in before the consumer looks
        wire.clear()
        taken = drain(consumer, 1.5)
        assert sorted(m.message_id for m in taken) == sorted(m.message_id for m in messages), wire.taken()
        sent = [q for q in wire.taken() if not q.upper().startswith("LISTEN")]
        consumes = [q for q in sent if "pg_try_advisory_lock" in q]
        assert len(consumes) == 1, sent
        assert not any(q.upper() in ("BEGIN", "COMMIT") for q in sent), sent
        for m in taken:
            consumer.ack(m)
        wire.clear()
        drain(consumer, 0.3)
        unlocks = [q for q in wire.taken() if "pg_advisory_unlock" in q]
        assert len(unlocks) == 1 and not any(q.upper() in ("BEGIN", "COMMIT") for q in wire.taken()), wire.taken()
        assert one(db, "SELECT count(*) FROM dramatiq.queue WHERE state = 'done'") == 5
    finally:
        consumer.close()


def test_a_jobs_bookkeeping_without_a_lock_is_one_round_trip_and_lands_only_on_a_live_job(seeded, wire, db):
    """complete + finish_attempt, all deferred: BEGIN, both and COMMIT in one round trip. The
    guarded complete refuses a finished job (SQLSTATE RQ001): nothing of that transaction stays."""
    import psycopg2
    import pytest

    from roastq import db as roastq_db
    from roastq import jobs
    from roastq.api import enqueue_evaluations

    doc, agent = next(iter(seeded.documents.values())), next(iter(seeded.agents.values()))
    (job_id,) = enqueue_evaluations([(doc, agent)])
    wire.clear()
    with roastq_db.lean_transaction() as cur:
        jobs.complete(cur, job_id, evaluation_version_id=None, price_usd=0)
        jobs.finish_attempt(cur, job_id, 1, job_id)
    sent = [q for q in wire.taken() if "roastq_" in q]
    assert len(sent) == 1 and sent[0].startswith("BEGIN") and sent[0].endswith("COMMIT"), sent
    assert one(db, "SELECT status FROM jobs WHERE id = %s", job_id) == "COMPLETED"
    with db.cursor() as cur:
        cur.execute("UPDATE jobs SET status = 'CANCELLED', price_usd = 7 WHERE id = %s", (job_id,))
    with pytest.raises(psycopg2.Error) as raised:
        with roastq_db.lean_transaction() as cur:
            jobs.complete(cur, job_id, evaluation_version_id=None, price_usd=0)
    assert jobs.already_finished(raised.value)
    assert one(db, "SELECT status, price_usd FROM jobs WHERE id = %s", job_id) == ("CANCELLED", 7)
    assert roastq_db.execute_one("SELECT 1 AS n")["n"] == 1  # the pool's sessions are usable


def test_a_result_sends_the_job_lock_with_its_first_read(seeded, wire, db):
    """pipeline.save locks the job row in the round trip that reads the evaluation's next version
    number (and the job's status): the lock has no round trip of its own."""
    from roastq.api import enqueue_evaluations
    from roastq.evaluation import pipeline

    doc, agent = next(iter(seeded.documents.values())), next(iter(seeded.agents.values()))
    (job_id,) = enqueue_evaluations([(doc, agent)])
    inputs = pipeline.load_inputs(job_id)
    wire.clear()
    result = pipeline.EvaluationResult(summary="s", analysis="a", grade=50, highlights=[], self_critique=None)
    assert pipeline.save(inputs, result) is not None
    sent = wire.taken()
    (first,) = [q for q in sent if "coalesce(max(ev.version)" in q]
    assert first.startswith("BEGIN") and "FOR UPDATE" in first and "EXECUTE roastq_" in first, first
    assert sent.index(first) == 0, sent  # nothing before it: no round trip for the lock alone
