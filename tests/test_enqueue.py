"""Enqueueing from the app: the job row and the message share the caller's transaction."""

import psycopg2
import pytest
from helpers import one, rows, wait_for_status
from messages import MESSAGES  # dramatiq.queue, or the outbox with RabbitMQ

from roastq.api import EnqueueError, enqueue_evaluation


def _pair(seeded):
    return next(iter(seeded.documents.values())), next(iter(seeded.agents.values()))


def counts(conn):
    return one(conn, "SELECT count(*) FROM jobs"), one(conn, f"SELECT count(*) FROM {MESSAGES}")


def test_enqueue_commits_with_the_callers_transaction(db, seeded, database_url):
    doc, agent = _pair(seeded)
    app = psycopg2.connect(database_url)  # the app's own connection, in a transaction
    try:
        job_id = enqueue_evaluation(doc, agent, conn=app)
        assert counts(db) == (0, 0)  # nothing visible before the caller commits
        app.commit()
    finally:
        app.close()
    assert counts(db) == (1, 1)
    status, message_id, queue = one(db, "SELECT status, message_id, queue FROM jobs WHERE id = %s", job_id)
    assert (status, queue) == ("PENDING", "interactive")
    assert one(db, f"SELECT message->'args'->>0 FROM {MESSAGES} WHERE message_id = %s", message_id) == job_id


def test_enqueue_rolls_back_with_the_callers_transaction(db, seeded, database_url):
    doc, agent = _pair(seeded)
    app = psycopg2.connect(database_url)
    try:
        enqueue_evaluation(doc, agent, conn=app)
        app.rollback()
    finally:
        app.close()
    assert counts(db) == (0, 0)


def test_enqueue_pins_the_versions_current_at_enqueue(db, seeded):
    doc, agent = _pair(seeded)
    job_id = enqueue_evaluation(doc, agent, priority="batch")
    pinned = one(db, "SELECT document_version_id FROM jobs WHERE id = %s", job_id)
    with db.cursor() as cur:  # the document is edited after the job was enqueued
        cur.execute(
            "INSERT INTO document_versions (document_id, version, title, content) "
            "SELECT document_id, version + 1, title, content || ' edited' FROM document_versions "
            "WHERE id = %s",
            (pinned,),
        )
    assert one(db, "SELECT document_version_id FROM jobs WHERE id = %s", job_id) == pinned
    assert one(db, "SELECT queue FROM jobs WHERE id = %s", job_id) == "batch"
    assert one(db, f"SELECT queue_name FROM {MESSAGES}") == "batch"


@pytest.mark.parametrize("which", ["document", "agent"])
def test_unknown_document_or_agent_is_a_clear_error_and_writes_nothing(db, seeded, which):
    doc, agent = _pair(seeded)
    unknown = "00000000-0000-0000-0000-000000000000"
    args = (unknown, agent) if which == "document" else (doc, unknown)
    with pytest.raises(EnqueueError, match=f"unknown {which}"):
        enqueue_evaluation(*args)
    assert counts(db) == (0, 0)


def test_malformed_ids_and_priority_are_clear_errors(db, seeded):
    doc, agent = _pair(seeded)
    with pytest.raises(EnqueueError, match="not a valid id"):
        enqueue_evaluation("not-a-uuid", agent)
    with pytest.raises(EnqueueError, match="priority"):
        enqueue_evaluation(doc, agent, priority="urgent")
    assert counts(db) == (0, 0)


def test_actor_send_runs_an_existing_job(db, seeded, worker):
    """`evaluate_document.send(job_id)` works for a job row that exists."""
    from actors import evaluate_document

    doc, agent = _pair(seeded)
    with db.cursor() as cur:  # a job row written by the app itself, with no message yet
        cur.execute("INSERT INTO evaluations (document_id, agent_id) VALUES (%s, %s)", (doc, agent))
        cur.execute(
            "INSERT INTO jobs (evaluation_id, document_version_id, agent_version_id) "
            "SELECT e.id, (SELECT id FROM document_versions WHERE document_id = %s), "
            "(SELECT id FROM agent_versions WHERE agent_id = %s) FROM evaluations e "
            "WHERE e.document_id = %s AND e.agent_id = %s RETURNING id",
            (doc, agent, doc, agent),
        )
        job_id = str(cur.fetchone()[0])
    assert one(db, f"SELECT count(*) FROM {MESSAGES}") == 0
    evaluate_document.send(job_id)
    assert wait_for_status(db, [job_id])[job_id] == "COMPLETED"


def test_batch_enqueue_writes_all_jobs_and_messages_in_one_transaction(db, seeded, database_url):
    from roastq.api import enqueue_evaluations

    pairs = [(d, a) for d in seeded.documents.values() for a in seeded.agents.values()] * 5  # 120, repeats
    app = psycopg2.connect(database_url)
    try:
        job_ids = enqueue_evaluations(pairs, priority="batch", conn=app)
        assert counts(db) == (0, 0)  # not before the caller commits
        app.commit()
    finally:
        app.close()
    assert len(job_ids) == len(set(job_ids)) == 120
    assert counts(db) == (120, 120)
    assert one(db, "SELECT count(*) FROM evaluations") == 24
    assert one(db, f"SELECT count(DISTINCT queue_name) FROM {MESSAGES}") == 1
    # every job's message carries its id, and the job names its message
    assert (
        one(
            db,
            f"SELECT count(*) FROM jobs j JOIN {MESSAGES} q ON q.message_id = j.message_id "
            "AND q.message->'args'->>0 = j.id::text",
        )
        == 120
    )


def test_batch_enqueue_uses_a_few_statements_whatever_the_size(db, seeded, database_url, monkeypatch):
    import psycopg2.extras

    from roastq.api import enqueue_evaluations

    statements = []

    class Counting(psycopg2.extras.RealDictCursor):
        def execute(self, query, vars=None):
            statements.append(query)
            return super().execute(query, vars)

    monkeypatch.setattr(psycopg2.extras, "RealDictCursor", Counting)  # the cursor roastq.db hands out
    doc, agent = _pair(seeded)
    enqueue_evaluations([(doc, agent)] * 500)
    assert counts(db) == (500, 500)
    assert len(statements) <= 6


def test_batch_enqueue_is_all_or_nothing(db, seeded):
    from roastq.api import enqueue_evaluations

    doc, agent = _pair(seeded)
    with pytest.raises(EnqueueError, match="unknown agent"):
        enqueue_evaluations([(doc, agent), (doc, "00000000-0000-0000-0000-000000000000")])
    assert counts(db) == (0, 0)


def test_batch_enqueued_jobs_run(db, seeded, worker):
    from roastq.api import enqueue_evaluations

    job_ids = enqueue_evaluations([(d, a) for d in list(seeded.documents.values())[:2] for a in seeded.agents.values()])
    assert set(wait_for_status(db, job_ids).values()) == {"COMPLETED"}


# -- one statement: what reaches Postgres (counted on the wire, BEGIN and COMMIT included) ------


def _is_transaction_control(sql: str) -> bool:
    return sql.split(None, 1)[0].upper() in ("BEGIN", "COMMIT", "ROLLBACK", "SAVEPOINT", "RELEASE")


def test_enqueue_is_one_statement_that_is_its_own_commit(db, seeded, wire):
    doc, agent = _pair(seeded)
    enqueue_evaluation(doc, agent)  # the pool's connection now exists
    wire.clear()
    job_id = enqueue_evaluation(doc, agent, priority="batch", not_before=60)
    sent = wire.taken()
    assert len(sent) == 1, sent  # no BEGIN, no COMMIT: autocommit
    assert not _is_transaction_control(sent[0])
    # committed by that one statement: visible to another session at once
    assert one(db, "SELECT status FROM jobs WHERE id = %s", job_id) == "PENDING"
    assert one(db, f"SELECT count(*) FROM jobs j JOIN {MESSAGES} m ON m.message_id = j.message_id") == 2


def test_enqueue_is_prepared_once_a_session_and_then_only_executed(db, seeded, wire):
    """The pooled session parses and plans the enqueue once (its PREPARE rides with the first
    EXECUTE); after that each enqueue is one EXECUTE, and each job still pins its own document's
    and agent's versions (past the five executions after which Postgres may plan generically;
    whether that plan stays good as the tables grow: tests/test_query_plans.py)."""
    docs, agents = list(seeded.documents.values()), list(seeded.agents.values())
    pairs = [(docs[i % len(docs)], agents[i % len(agents)]) for i in range(8)]
    wire.clear()
    job_ids = [
        enqueue_evaluation(d, a, priority=("batch" if i % 2 else "interactive")) for i, (d, a) in enumerate(pairs)
    ]
    sent = wire.taken()
    assert len(sent) == 8, sent  # one round trip each, the first included
    prepares = [q for q in sent if q.startswith("PREPARE ")]
    executes = [q for q in sent if q not in prepares]
    planned = "SET LOCAL enable_seqscan = off; EXECUTE "
    assert 1 <= len(prepares) <= 2 and all(q.startswith(planned) for q in executes), sent
    for job_id, (doc, agent), i in zip(job_ids, pairs, range(8)):
        row = rows(
            db,
            f"""SELECT dv.document_id, av.agent_id, j.queue, m.queue_name FROM jobs j
               JOIN document_versions dv ON dv.id = j.document_version_id
               JOIN agent_versions av ON av.id = j.agent_version_id
               JOIN {MESSAGES} m ON m.message_id = j.message_id WHERE j.id = %s""",
            job_id,
        )[0]
        queue = "batch" if i % 2 else "interactive"
        assert (str(row[0]), str(row[1]), row[2]) == (doc, agent, queue) and row[3].startswith(queue)


def test_enqueue_on_the_callers_connection_adds_one_statement_and_commits_nothing(db, seeded, wire):
    doc, agent = _pair(seeded)
    app = psycopg2.connect(wire.url)
    try:
        with app.cursor() as cur:
            cur.execute("SELECT 1")  # the caller's transaction has begun
        wire.clear()
        job_id = enqueue_evaluation(doc, agent, conn=app)
        sent = wire.taken()
        assert len(sent) == 1, sent
        assert not _is_transaction_control(sent[0])
        assert counts(db) == (0, 0)  # nothing committed
        app.commit()
    finally:
        app.close()
    assert one(db, "SELECT status FROM jobs WHERE id = %s", job_id) == "PENDING"
    assert counts(db) == (1, 1)


def _finish(db, job_id, status="COMPLETED"):
    with db.cursor() as cur:
        cur.execute("UPDATE jobs SET status = %s, completed_at = now() WHERE id = %s", (status, job_id))


def test_rerun_is_one_statement(db, seeded, wire):
    from roastq.api import rerun_job

    doc, agent = _pair(seeded)
    first, second = enqueue_evaluation(doc, agent), enqueue_evaluation(doc, agent, priority="batch")
    _finish(db, first)
    _finish(db, second, "FAILED")
    rerun_job(first)  # the pool's connection now exists
    wire.clear()
    new = rerun_job(second)
    sent = wire.taken()
    assert len(sent) == 1, sent
    assert not _is_transaction_control(sent[0])
    # the same pinned versions and queue, linked to the original, the batch default deadline
    same = (
        "SELECT n.evaluation_id = o.evaluation_id AND n.document_version_id = o.document_version_id "
        "AND n.agent_version_id = o.agent_version_id AND n.queue = o.queue, n.original_job_id::text, n.status, "
        "EXTRACT(EPOCH FROM n.deadline - now()) FROM jobs n JOIN jobs o ON o.id = n.original_job_id WHERE n.id = %s"
    )
    pinned, original, status, left = one(db, same, new)
    assert (pinned, original, status) == (True, second, "PENDING")
    assert 86400 - 60 < left <= 86400
    queue, carried = one(
        db,
        f"SELECT queue_name, message->'args'->>0 FROM {MESSAGES} m JOIN jobs j ON j.message_id = m.message_id "
        "WHERE j.id = %s",
        new,
    )
    assert (queue, carried) == ("batch", new)


def test_rerun_of_an_unknown_or_unfinished_job_is_refused_and_writes_nothing(db, seeded):
    from roastq.api import rerun_job

    doc, agent = _pair(seeded)
    job_id = enqueue_evaluation(doc, agent)
    with pytest.raises(EnqueueError, match="only a finished job"):
        rerun_job(job_id)
    with pytest.raises(EnqueueError, match="unknown job"):
        rerun_job("00000000-0000-0000-0000-000000000000")
    assert counts(db) == (1, 1)


@pytest.mark.parametrize("which", ["document", "agent"])
def test_unknown_document_or_agent_on_the_callers_connection_writes_nothing(db, seeded, database_url, which):
    doc, agent = _pair(seeded)
    unknown = "00000000-0000-0000-0000-000000000000"
    args = (unknown, agent) if which == "document" else (doc, unknown)
    app = psycopg2.connect(database_url)
    try:
        with pytest.raises(EnqueueError, match=f"unknown {which}"):
            enqueue_evaluation(*args, conn=app)
        app.commit()  # the caller's transaction is still usable, and holds nothing of ours
    finally:
        app.close()
    assert counts(db) == (0, 0)
    assert one(db, "SELECT count(*) FROM evaluations") == 0


def test_deadline_and_not_before_are_on_the_row_and_the_message_is_delayed(db, seeded):
    from datetime import UTC, datetime, timedelta

    doc, agent = _pair(seeded)
    due = datetime.now(UTC) + timedelta(hours=3)
    job_id = enqueue_evaluation(doc, agent, deadline=due, not_before=timedelta(minutes=5))
    deadline, start, next_at, queue, eta = one(
        db,
        "SELECT j.deadline, j.not_before, j.next_attempt_at, m.queue_name, (m.message->'options'->>'eta')::bigint "
        f"FROM jobs j JOIN {MESSAGES} m ON m.message_id = j.message_id WHERE j.id = %s",
        job_id,
    )
    assert abs((deadline - due).total_seconds()) < 0.01
    assert 280 < (start - datetime.now(UTC)).total_seconds() <= 300
    assert next_at == start
    assert queue == "interactive.DQ"  # the delay queue, due at not_before
    assert abs(eta / 1000 - start.timestamp()) < 2
    # the batch default deadline, counted from the start time
    job_id = enqueue_evaluation(doc, agent, priority="batch", not_before=600)
    left = one(db, "SELECT EXTRACT(EPOCH FROM deadline - not_before) FROM jobs WHERE id = %s", job_id)
    assert 86400 - 5 < left <= 86400 + 5
    # no delay, no deadline: a plain message on its queue
    job_id = enqueue_evaluation(doc, agent)
    assert (
        one(
            db,
            f"SELECT (j.deadline, j.not_before, m.queue_name, m.message->'options' ? 'eta') "
            f"FROM jobs j JOIN {MESSAGES} m ON m.message_id = j.message_id WHERE j.id = %s",
            job_id,
        )
        == "(,,interactive,f)"
    )


def test_a_rerun_job_runs(db, seeded, worker):
    from roastq.api import rerun_job

    doc, agent = _pair(seeded)
    job_id = enqueue_evaluation(doc, agent)
    assert wait_for_status(db, [job_id])[job_id] == "COMPLETED"
    new = rerun_job(job_id)
    assert wait_for_status(db, [new])[new] == "COMPLETED"


@pytest.mark.postgres_broker
def test_the_enqueue_notifies_the_brokers_channel_with_the_message(db, seeded):
    """The one statement sends dramatiq-pg's NOTIFY: channel dramatiq.<queue>.enqueue, the
    message as stored (what the consumers decode), at commit."""
    import select

    doc, agent = _pair(seeded)
    with db.cursor() as cur:
        cur.execute('LISTEN "dramatiq.batch.enqueue"')
    job_id = enqueue_evaluation(doc, agent, priority="batch")
    select.select([db], [], [], 5)
    db.poll()
    stored = one(db, "SELECT m.message::text FROM dramatiq.queue m JOIN jobs j ON j.message_id = m.message_id")
    assert [(n.channel, n.payload) for n in db.notifies] == [("dramatiq.batch.enqueue", stored)]
    assert job_id in stored


@pytest.mark.parametrize("batch", [False, True], ids=["one", "batch"])
def test_an_enqueue_of_an_existing_evaluation_reads_its_row_and_never_writes_it(db, seeded, batch):
    """An upsert's DO UPDATE leaves a dead version of the evaluation's row at every enqueue: where
    vacuum is held back, each later read of it (every enqueue, every start) walks them all."""
    from roastq.api import enqueue_evaluations

    doc, agent = _pair(seeded)
    first = enqueue_evaluation(doc, agent)
    version = one(db, "SELECT xmin::text FROM evaluations WHERE document_id = %s AND agent_id = %s", doc, agent)
    again = enqueue_evaluations([(doc, agent)] * 3) if batch else [enqueue_evaluation(doc, agent)]
    assert one(db, "SELECT xmin::text FROM evaluations WHERE document_id = %s AND agent_id = %s", doc, agent) == version
    assert one(db, "SELECT count(*) FROM evaluations") == 1
    assert len({one(db, "SELECT evaluation_id FROM jobs WHERE id = %s", j) for j in [first, *again]}) == 1


@pytest.mark.parametrize("batch", [False, True], ids=["one", "batch"])
def test_an_enqueue_racing_the_first_enqueue_of_its_evaluation_uses_that_evaluation(db, seeded, database_url, batch):
    """The evaluation is inserted by another transaction after the enqueue's statement began:
    the enqueue waits for it, finds nothing it may insert or read in that statement, and runs it
    again (a new snapshot): one job, on that evaluation."""
    import threading
    import time

    from roastq.api import enqueue_evaluations

    doc, agent = _pair(seeded)
    other = psycopg2.connect(database_url)
    try:
        with other.cursor() as cur:
            cur.execute("INSERT INTO evaluations (document_id, agent_id) VALUES (%s, %s) RETURNING id", (doc, agent))
            theirs = cur.fetchone()[0]
        result = {}

        def enqueue():
            try:
                result["jobs"] = enqueue_evaluations([(doc, agent)]) if batch else [enqueue_evaluation(doc, agent)]
            except Exception as exc:  # reported below
                result["error"] = exc

        thread = threading.Thread(target=enqueue)
        thread.start()
        time.sleep(0.5)  # the enqueue now waits on the uncommitted evaluation
        assert thread.is_alive() and not result
        other.commit()
        thread.join(10)
    finally:
        other.close()
    assert "error" not in result, result
    (job_id,) = result["jobs"]
    assert str(one(db, "SELECT evaluation_id FROM jobs WHERE id = %s", job_id)) == str(theirs)
    assert one(db, "SELECT count(*) FROM evaluations") == 1
