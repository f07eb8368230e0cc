"""The broker's fixes for dramatiq-pg's measured defects (docs/architecture.md, "The broker"), each with a regression test.

Every test runs against our code and against stock dramatiq-pg 0.12; the stock run is expected to
fail (``xfail(strict=True)``): it shows the test really catches the defect, and it turns red the
day a dramatiq-pg release fixes it, so we can drop our override.
"""

import json
import random
import subprocess
import sys
import threading
import time

import dramatiq
import psycopg2
import pytest
from dramatiq_pg.broker import PostgresConsumer, message_lock
from helpers import one
from psycopg2.pool import ThreadedConnectionPool

from roastq import db as roastq_db
from roastq.brokers.postgres import RoastqConsumer

STOCK = pytest.mark.xfail(strict=True, reason="stock dramatiq-pg 0.12 has this defect")


def make_consumer(kind, queue="interactive", prefetch=1, recovery_interval_s=0.3):
    common = dict(pool=roastq_db.pool(), queue_name=queue, prefetch=prefetch, timeout=1000)
    if kind == "ours":
        return RoastqConsumer(recovery_interval_s=recovery_interval_s, **common)
    return PostgresConsumer(**common)


def put_message(conn, queue="interactive", state="queued", args=("x",), notify=False):
    message = dramatiq.Message(queue_name=queue, actor_name="evaluate_document", args=args, kwargs={}, options={})
    with conn.cursor() as cur:
        cur.execute(
            "INSERT INTO dramatiq.queue (queue_name, message_id, state, message) VALUES (%s, %s, %s, %s)",
            (queue, message.message_id, state, message.encode().decode()),
        )
        if notify:
            cur.execute("SELECT pg_notify(%s, %s)", (f"dramatiq.{queue}.enqueue", message.encode().decode()))
    return message


def drain(consumer, seconds):
    """Iterate the consumer for a while; return the messages it handed out."""
    got, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        message = next(consumer)
        if message is not None:
            got.append(message)
    return got


def take(consumer, n, within_s, each_turn=None):
    """Take and acknowledge messages until ``n`` are in or ``within_s`` has passed; return their
    ids and the seconds it took (``each_turn``: called after every turn of the consumer)."""
    started, got = time.monotonic(), set()
    while len(got) < n and time.monotonic() - started < within_s:
        message = next(consumer)
        if each_turn is not None:
            each_turn()
        if message is not None:
            got.add(message.message_id)
            consumer.ack(message)
    return got, time.monotonic() - started


@pytest.mark.parametrize("kind", ["ours", pytest.param("stock", marks=STOCK)])
def test_backoff_resets_as_soon_as_a_slot_frees(db, kind):
    """Defect 1: after the prefetch limit was hit, the wait kept growing (21 msg/s of 160)."""
    consumer = make_consumer(kind, prefetch=1)
    try:
        consumer.in_processing.add("busy")
        for _ in range(4):
            assert next(consumer) is None  # full: the consumer backs off
        assert consumer.misses > 0
        consumer.in_processing.clear()  # the worker finished: a slot is free
        next(consumer)
        assert consumer.misses == 0
    finally:
        consumer.close()


@pytest.mark.parametrize("kind", ["ours", pytest.param("stock", marks=STOCK)])
def test_notifications_that_arrive_while_the_consumer_is_busy_are_taken_at_once(db, kind):
    """Defect: stock's poll reads the listening connection (its liveness check polls it, which
    moves waiting notifications into psycopg2's list) and only then waits on its socket, which is
    now empty: messages notified while the consumer was busy waited a whole consumer timeout
    (1 s, dramatiq's worker_timeout) before anyone took them; a burst waited at each poll."""
    consumer = make_consumer(kind, prefetch=8)  # timeout: 1 s
    try:
        drain(consumer, 0.3)  # listening, idle
        for _ in range(2):
            sent = {put_message(db, notify=True).message_id for _ in range(5)}
            time.sleep(0.2)  # the consumer is busy elsewhere meanwhile
            got, waited = take(consumer, 5, 3)
            assert got == sent
            assert waited < 0.3, f"five waiting messages took {waited:.2f} s to be taken"
    finally:
        consumer.close()


def _notify_many(db, n, queue="interactive"):
    """``n`` distinct notifications of about 1 kB on the queue's channel, committed at once."""
    with db.cursor() as cur:
        cur.execute(
            "SELECT count(pg_notify(%s, json_build_object('message_id', gen_random_uuid(), 'pad', repeat('x', 1000))::text))"
            " FROM generate_series(1, %s)",
            (f"dramatiq.{queue}.enqueue", n),
        )


@pytest.mark.parametrize("kind", ["ours", pytest.param("stock", marks=STOCK)])
def test_a_full_consumer_keeps_reading_its_notifications(db, kind):
    """Defect: with every slot taken (the worker has fallen behind), stock never reads its
    listening connection. The socket fills, and once what the server sends has waited
    tcp_user_timeout (10 s) the server drops the connection: the notifications sent meanwhile are
    lost, and their messages
    waited for a rescan (the 300/s run beside an idle-in-transaction session, p99 95 s in its
    worst minute). 5 MB of notifications is more than the socket buffers hold."""
    consumer = make_consumer(kind, prefetch=1)
    try:
        drain(consumer, 0.3)  # listening, idle
        consumer.in_processing.add("busy")  # full from now on
        _notify_many(db, 5000)
        deadline = time.monotonic() + 5
        while len(consumer.notifies) < 5000 and time.monotonic() < deadline:
            assert next(consumer) is None
        assert len(consumer.notifies) == 5000, len(consumer.notifies)
    finally:
        consumer.close()


def test_notifications_beyond_what_a_consumer_keeps_are_left_to_a_rescan(db, monkeypatch):
    from roastq.brokers import postgres

    monkeypatch.setattr(postgres, "MAX_NOTIFIES", 1000)
    consumer = make_consumer("ours", prefetch=1, recovery_interval_s=60)
    try:
        drain(consumer, 0.3)
        consumer.in_processing.add("busy")
        _notify_many(db, 3000)
        deadline = time.monotonic() + 5
        while consumer._next_rescan != 0.0 and time.monotonic() < deadline:
            next(consumer)
        assert len(consumer.notifies) == 1000 and consumer._next_rescan == 0.0  # rescanned when free
    finally:
        consumer.close()


def test_messages_whose_notifications_were_dropped_are_taken_without_a_wait(db, monkeypatch):
    """Once the notifications kept run out, the messages of those dropped beyond MAX_NOTIFIES are
    fetched at once: the rescan is due, and the consumer does not first wait its whole timeout
    (1 s) on a listening socket that has nothing more to say about them."""
    from roastq.brokers import postgres

    monkeypatch.setattr(postgres, "MAX_NOTIFIES", 3)
    consumer = make_consumer("ours", prefetch=20, recovery_interval_s=60)
    try:
        drain(consumer, 0.3)  # listening, idle, and its first rescan done
        with db.cursor() as cur:  # ten messages and their notifications, committed at once
            sent = {put_message(cur.connection, notify=True).message_id for _ in range(10)}
        got, waited = take(consumer, 10, 5)
        assert got == sent
        assert waited < 0.5, f"the messages past the kept notifications took {waited:.2f} s"
    finally:
        consumer.close()


def test_a_rescan_reads_no_more_of_a_backlog_than_a_consumer_keeps(db, monkeypatch):
    """Defect: stock's rescan (at start, and every recovery interval) read the payload of every
    live message of the queue into memory, a backlog of a million messages included. Ours reads
    no more than MAX_NOTIFIES, and rescans again at once while there are more."""
    from roastq.brokers import postgres

    monkeypatch.setattr(postgres, "MAX_NOTIFIES", 3)
    with db.cursor() as cur:  # a backlog nobody was told of: no notifications
        sent = {put_message(cur.connection).message_id for _ in range(10)}
    consumer = make_consumer("ours", prefetch=20, recovery_interval_s=60)
    try:
        kept = []
        got, waited = take(consumer, 10, 5, lambda: kept.append(len(consumer.notifies) + len(consumer._ready)))
        assert got == sent
        assert max(kept) <= 3
        assert waited < 0.5
    finally:
        consumer.close()


def test_a_rescan_finds_queued_messages_behind_more_held_ones_than_it_reads(db, database_url, monkeypatch):
    """Messages other workers hold (consumed, their locks taken) come after the queued ones in a
    rescan: however many there are, a rescan of MAX_NOTIFIES still brings the queued ones."""
    from dramatiq_pg.broker import message_lock

    from roastq.brokers import postgres

    monkeypatch.setattr(postgres, "MAX_NOTIFIES", 3)
    other = psycopg2.connect(database_url)  # another worker, holding its messages' locks
    other.autocommit = True
    try:
        with db.cursor() as cur:
            held = [put_message(cur.connection, state="consumed") for _ in range(5)]
            queued = {put_message(cur.connection).message_id for _ in range(2)}
        with other.cursor() as cur:
            for message in held:
                cur.execute("SELECT pg_advisory_lock(%s)", (message_lock(message),))
        consumer = make_consumer("ours", prefetch=20, recovery_interval_s=60)
        try:
            got = {m.message_id for m in drain(consumer, 0.5)}
        finally:
            consumer.close()
        assert got == queued
    finally:
        other.close()


@pytest.mark.parametrize("pool_kind", ["ours", pytest.param("stock", marks=STOCK)])
def test_pool_exhaustion_waits_instead_of_failing(database_url, pool_kind):
    """Defect 2: with every connection taken, an ack raised "connection pool exhausted" and was lost."""
    if pool_kind == "ours":
        pool = roastq_db.BlockingPool(2, database_url, wait_s=10)
    else:
        pool = ThreadedConnectionPool(0, 2, database_url)
    errors, done = [], []

    def ack_like():
        try:
            conn = pool.getconn()
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT pg_sleep(0.05)")
                conn.commit()
            finally:
                pool.putconn(conn)
            done.append(1)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=ack_like) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pool.closeall()
    assert errors == [] and len(done) == 12


def test_worker_pool_is_sized_from_threads_and_queues_within_the_limit(broker):
    from roastq.settings import get_settings

    broker.size_pool(8)
    assert roastq_db.pool().maxconn >= 8 + 2 * 2 * 2  # threads + two connections a (delay) queue
    broker.size_pool(500)
    assert roastq_db.pool().maxconn == get_settings().db_pool_max  # bounded: threads share


@pytest.mark.parametrize("kind", ["ours", pytest.param("stock", marks=STOCK)])
def test_requeued_messages_are_notified(db, database_url, kind):
    """Defect 3: messages requeued on shutdown were found only by a random poll, minutes later."""
    message = put_message(db, state="consumed")
    listener = psycopg2.connect(database_url)
    listener.autocommit = True
    with listener.cursor() as cur:
        cur.execute('LISTEN "dramatiq.interactive.enqueue"')
    consumer = make_consumer(kind)
    try:
        consumer.requeue([message])
        deadline = time.monotonic() + 2
        while not listener.notifies and time.monotonic() < deadline:
            listener.poll()
            time.sleep(0.02)
        assert one(db, "SELECT state FROM dramatiq.queue WHERE message_id = %s", message.message_id) == "queued"
        assert [json.loads(n.payload)["message_id"] for n in listener.notifies] == [message.message_id]
    finally:
        consumer.close()
        listener.close()


@pytest.mark.parametrize("kind", ["ours", pytest.param("stock", marks=STOCK)])
def test_orphaned_messages_are_found_within_the_recovery_interval(db, kind):
    """Defect 3: a message left 'consumed' by a dead worker (its lock died with it) waited for a
    1-in-300 random poll a second: about 5 minutes."""
    random.seed(1)  # the stock consumer's poll is random: make its (absent) luck repeatable
    consumer = make_consumer(kind, recovery_interval_s=0.3)
    try:
        drain(consumer, 0.2)  # started and listening
        orphan = put_message(db, state="consumed")  # no NOTIFY, no lock: its worker died
        got = drain(consumer, 1.5)
        assert [m.message_id for m in got] == [orphan.message_id]
    finally:
        consumer.close()


@pytest.mark.parametrize("kind", ["ours", pytest.param("stock", marks=STOCK)])
def test_recovery_never_takes_a_message_whose_worker_is_alive(db, database_url, kind):
    """Defect 4: dramatiq-pg's `recover` requeued messages that were still running."""
    from dramatiq_pg.cli import QUERIES as CLI_QUERIES

    running = put_message(db, state="consumed")
    worker_session = psycopg2.connect(database_url)  # the live worker holds the message's lock
    with worker_session.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (message_lock(running),))
    try:
        if kind == "ours":
            consumer = make_consumer(kind, recovery_interval_s=0.2)
            try:
                got = drain(consumer, 1.0)
            finally:
                consumer.close()
            assert got == []
        else:
            CLI_QUERIES.build_queries("dramatiq", "")
            with db.cursor() as cur:
                cur.execute(CLI_QUERIES.RECOVER, ("0 seconds",))
        assert one(db, "SELECT state FROM dramatiq.queue WHERE message_id = %s", running.message_id) == "consumed"
    finally:
        worker_session.close()


@pytest.mark.parametrize("kind", ["ours", pytest.param("stock", marks=STOCK)])
def test_schema_init_is_idempotent(db, kind):
    """Defect 6: `dramatiq-pg init` failed when run twice."""
    if kind == "ours":
        roastq_db.migrate()
        roastq_db.migrate()
    else:
        from dramatiq_pg.schema import generate_init_sql

        with db.cursor() as cur:
            cur.execute(generate_init_sql())  # the schema exists already (our migration made it)


@pytest.mark.parametrize("module", ["actors", pytest.param("dramatiq_pg.cli", marks=STOCK)])
def test_nothing_imports_pkg_resources(module):
    """Defect 6: dramatiq-pg's CLI imports pkg_resources (deprecated, slow, gone from new setuptools)."""
    code = f"import sys, {module}, roastq.cli.main, roastq.api; assert 'pkg_resources' not in sys.modules"
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-500:]


def test_large_messages_travel_by_id(db, database_url):
    """NOTIFY payloads must stay under 8,000 bytes: larger messages are announced by id only,
    and the consumer fetches them in full."""

    listener = psycopg2.connect(database_url)
    listener.autocommit = True
    with listener.cursor() as cur:
        cur.execute('LISTEN "dramatiq.interactive.enqueue"')
    consumer = make_consumer("ours", recovery_interval_s=60)
    try:
        drain(consumer, 0.2)  # listening, nothing pending
        big = put_message(db, state="consumed", args=("x" * 9000,))
        consumer.requeue([big])
        deadline = time.monotonic() + 2
        while not listener.notifies and time.monotonic() < deadline:
            listener.poll()
            time.sleep(0.02)
        payload = listener.notifies[0].payload
        assert len(payload) < 8000 and json.loads(payload) == {"message_id": big.message_id}
        got = drain(consumer, 0.5)  # it receives the same id-only notification on its own channel
        assert [m.args[0] for m in got] == ["x" * 9000]  # fetched in full by id
    finally:
        consumer.close()
        listener.close()


def test_delayed_messages_forgotten_by_a_failed_consumer_are_taken_by_the_next(db):
    """dramatiq's consumer thread, on a ConnectionError (a terminated backend), throws away its
    in-memory delay queue without requeueing it and closes the consumer. The delayed messages
    it had taken stayed held by this process: no consumer of the same worker took them again
    until the worker restarted (the stress test: "message never succeeded")."""
    queue = "interactive.DQ"
    message = dramatiq.Message(
        queue_name=queue,
        actor_name="evaluate_document",
        args=("x",),
        kwargs={},
        options={"eta": int(time.time() * 1000) + 200},
    )
    with db.cursor() as cur:
        cur.execute(
            "INSERT INTO dramatiq.queue (queue_name, message_id, state, message) VALUES (%s, %s, 'queued', %s)",
            (queue, message.message_id, message.encode().decode()),
        )
        cur.execute("SELECT pg_notify(%s, %s)", (f"dramatiq.{queue}.enqueue", message.encode().decode()))
    a = make_consumer("ours", queue=queue, prefetch=8, recovery_interval_s=60)
    b = None
    try:
        assert [m.message_id for m in drain(a, 0.5)] == [message.message_id]  # into the delay queue
        a.close()  # what dramatiq does after a ConnectionError, the delay queue already dropped
        b = make_consumer("ours", queue=queue, prefetch=8, recovery_interval_s=0.1)
        assert [m.message_id for m in drain(b, 1.0)] == [message.message_id]
    finally:
        a.close()
        if b is not None:
            b.close()
