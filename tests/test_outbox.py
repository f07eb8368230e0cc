"""The outbox (BROKER_URL=amqp://...): a job row and its message commit together, and the relay
delivers every committed message to RabbitMQ at least once. Real Postgres, real RabbitMQ; runs in
the RabbitMQ pass (``ROASTQ_TEST_BROKER=rabbitmq``)."""

import json
import os
import subprocess
import sys
import threading
import time

import dramatiq.errors
import pika.exceptions
import psycopg2
import pytest
from helpers import one, running_worker, wait_for_status, wait_until

from roastq.api import enqueue_evaluation, enqueue_evaluations
from roastq.brokers import outbox

pytestmark = pytest.mark.rabbitmq


def _pair(seeded):
    return next(iter(seeded.documents.values())), next(iter(seeded.agents.values()))


def ready(broker, queue="interactive") -> int:
    return broker.queue_counts(queue)["queued"]


def bodies(broker, queue="interactive") -> list[dict]:
    """The messages waiting in a RabbitMQ queue (read and left there)."""
    import pika

    connection = pika.BlockingConnection(broker.parameters)
    try:
        channel, found = connection.channel(), []
        while True:
            method, _, body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                return found
            found.append(json.loads(body))
    finally:
        connection.close()


def test_committed_job_is_relayed_and_a_rolled_back_one_never_is(db, seeded, database_url, broker):
    doc, agent = _pair(seeded)
    app = psycopg2.connect(database_url)
    try:
        enqueue_evaluation(doc, agent, conn=app)
        app.rollback()  # the app changed its mind: no job, no message, ever
        job_id = enqueue_evaluation(doc, agent, conn=app)
        assert one(db, "SELECT count(*) FROM outbox") == 0  # not before the commit
        app.commit()
    finally:
        app.close()
    assert one(db, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 1
    assert broker.relay().drain() == 1
    assert one(db, "SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL") == 1
    (message,) = bodies(broker)
    assert message["args"] == [job_id] and message["actor_name"] == "evaluate_document"
    assert message["message_id"] == str(one(db, "SELECT message_id FROM jobs WHERE id = %s", job_id))
    assert broker.relay().drain() == 0  # sent once: nothing left to relay


def test_relay_is_woken_by_notify_not_by_its_poll(db, seeded, broker):
    relay = outbox.Relay(broker.publish_many, idle=broker.service_connection, poll_s=30.0).start()
    try:
        time.sleep(0.5)  # listening
        started = time.monotonic()
        enqueue_evaluation(*_pair(seeded))
        wait_until(lambda: ready(broker) == 1, timeout=5, what="the message in RabbitMQ")
        assert time.monotonic() - started < 2.0  # far sooner than the 30 s poll
    finally:
        relay.stop()


def test_relays_in_parallel_send_each_row_once(db, seeded, broker):
    doc, agent = _pair(seeded)
    job_ids = enqueue_evaluations([(doc, agent)] * 1500, priority="batch")
    relays = [outbox.Relay(broker.publish_many, batch=100) for _ in range(3)]
    threads = [threading.Thread(target=r.drain) for r in relays]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sum(r.sent for r in relays) == 1500
    assert min(r.sent for r in relays) > 0  # SKIP LOCKED: they shared the work
    assert one(db, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0
    messages = bodies(broker, "batch")
    assert len(messages) == 1500 and {m["args"][0] for m in messages} == set(job_ids)


def test_unreachable_rabbitmq_loses_nothing(db, seeded, broker):
    """RabbitMQ refuses the relay: rows stay unsent, and go out once a relay gets through."""
    from roastq.brokers.rabbitmq import RoastqRabbitmqBroker

    enqueue_evaluations([_pair(seeded)] * 5, priority="batch")
    refused = RoastqRabbitmqBroker(url=os.environ["BROKER_URL"].replace("guest:guest@", "guest:wrong@"))
    with pytest.raises((pika.exceptions.AMQPError, dramatiq.errors.ConnectionError)):  # refused: bad credentials
        refused.relay().relay_once()
    assert one(db, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 5
    assert broker.relay().drain() == 5
    assert ready(broker, "batch") == 5


def test_relay_dying_after_publishing_sends_again_and_jobs_still_run_once(db, seeded, broker, sim, monkeypatch):
    from roastq.settings import reload_settings

    monkeypatch.setenv("HEARTBEAT_INTERVAL_S", "1")  # a duplicate that backs off comes back soon (issue 13)
    reload_settings()
    """At least once: a relay that published but did not commit publishes again; the job
    middleware runs each job once to completion all the same."""
    doc, agent = _pair(seeded)
    job_ids = enqueue_evaluations([(doc, agent)] * 4, priority="batch")

    def publish_then_die(items):
        broker.publish_many(items[:3])  # three really sent...
        raise ConnectionError("relay died before its commit")  # ...and none marked sent

    with pytest.raises(ConnectionError):
        outbox.Relay(publish_then_die).relay_once()
    assert one(db, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 4
    assert broker.relay().drain() == 4
    assert ready(broker, "batch") == 7  # three messages twice
    with running_worker(broker, threads=4) as worker:
        assert set(wait_for_status(db, job_ids).values()) == {"COMPLETED"}
        wait_until(  # a delayed message the worker holds is not in RabbitMQ's counts: its delay queue too
            lambda: (
                broker.queue_counts("batch") == {"queued": 0, "delayed": 0, "dead": 0}
                and not any(c.delay_queue.unfinished_tasks for c in worker.consumers.values())
            ),
            timeout=30,
            what="the duplicates consumed (those that backed off from a running attempt included)",
        )
    assert one(db, "SELECT count(*) FROM evaluation_versions WHERE job_id = ANY(%s::uuid[])", job_ids) == 4
    assert one(db, "SELECT sum(attempts) FROM jobs WHERE id = ANY(%s::uuid[])", job_ids) <= 7
    assert broker.queue_counts("batch") == {"queued": 0, "delayed": 0, "dead": 0}


def test_roastq_relay_once_publishes_what_waits(db, seeded, broker, database_url):
    enqueue_evaluations([_pair(seeded)] * 3, priority="batch")
    done = subprocess.run(
        [sys.executable, "-m", "roastq.cli.main", "relay", "--once"],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, LOG_FORMAT="json"),
    )
    assert done.returncode == 0, done.stderr
    assert "relayed 3 message(s)" in done.stdout
    assert ready(broker, "batch") == 3


def test_sent_rows_are_purged_after_the_retention(db, seeded, broker):
    enqueue_evaluations([_pair(seeded)] * 3, priority="batch")
    broker.relay().drain()
    enqueue_evaluation(*_pair(seeded))  # not sent yet: never purged
    with db.cursor() as cur:
        cur.execute("UPDATE outbox SET sent_at = now() - interval '8 days' WHERE sent_at IS NOT NULL")
    assert outbox.purge_sent(7 * 86400.0, batch=2) == 3
    assert one(db, "SELECT count(*) FROM outbox") == 1
