"""Results of actors declared with ``store_results=True`` (roastq/brokers/results.py), in Postgres.

Stock dramatiq-pg's backend is run beside ours where it has the defect (``xfail(strict=True)``):
it returns a failed result as a dict (DESIGN.md, defect 5) and serves results past their TTL.
"""

import time

import dramatiq
import pytest
from dramatiq.results import ResultFailure, ResultMissing
from dramatiq_pg.results import PostgresBackend
from helpers import one, running_worker, wait_until

from roastq import db as roastq_db
from roastq.exceptions import InputError

STOCK = pytest.mark.xfail(strict=True, reason="stock dramatiq-pg 0.12 has this defect")

pytestmark = pytest.mark.postgres_broker

QUEUE = "results_test"


@pytest.fixture(scope="module")
def result_actors(database_url):
    import actors

    def add(a, b):
        return a + b

    def refuse(why):
        raise InputError(why)  # a permanent failure: no retry, a dead letter

    return (
        dramatiq.actor(add, broker=actors.broker, queue_name=QUEUE, store_results=True),
        dramatiq.actor(refuse, broker=actors.broker, queue_name=QUEUE, store_results=True),
        dramatiq.actor(
            add, actor_name="add_briefly", broker=actors.broker, queue_name=QUEUE, store_results=True, result_ttl=300
        ),
    )


def backend_of(kind):
    import actors

    return actors.broker.backend if kind == "ours" else PostgresBackend(pool=roastq_db.pool())


def test_a_result_is_stored_in_postgres_and_fetched(db, broker, result_actors):
    add, _, _ = result_actors
    message = add.send(2, 3)
    with running_worker(broker, threads=2):
        assert message.get_result(block=True, timeout=15_000) == 5
    assert one(db, "SELECT result FROM dramatiq.queue WHERE message_id = %s", message.message_id) == 5
    assert message.get_result() == 5  # and again, without waiting


def test_a_missing_result_is_missing(db, result_actors):
    add, _, _ = result_actors
    message = add.message(1, 1)  # never sent
    with pytest.raises(ResultMissing):
        message.get_result()


@pytest.mark.parametrize("kind", ["ours", pytest.param("stock", marks=STOCK)])
def test_a_failed_result_raises_result_failure(db, broker, result_actors, kind):
    _, refuse, _ = result_actors
    message = refuse.send("no such document")
    with running_worker(broker, threads=2):
        wait_until(
            lambda: one(db, "SELECT result IS NOT NULL FROM dramatiq.queue WHERE message_id = %s", message.message_id),
            timeout=15,
            what="the failure to be stored",
        )
    with pytest.raises(ResultFailure) as failure:
        backend_of(kind).get_result(message)
    assert failure.value.orig_exc_type == "InputError"
    assert failure.value.orig_exc_msg == "no such document"
    assert one(db, "SELECT state::text FROM dramatiq.queue WHERE message_id = %s", message.message_id) == "rejected"


@pytest.mark.parametrize("kind", ["ours", pytest.param("stock", marks=STOCK)])
def test_a_result_expires(db, broker, result_actors, kind):
    from roastq.brokers.results import clear_expired

    _, _, add_briefly = result_actors  # result_ttl: 300 ms
    message = add_briefly.send(20, 22)
    with running_worker(broker, threads=2):
        assert message.get_result(block=True, timeout=15_000) == 42
    time.sleep(0.5)
    with pytest.raises(ResultMissing):
        backend_of(kind).get_result(message)
    if kind == "ours":
        assert clear_expired() == 1
        assert one(db, "SELECT result FROM dramatiq.queue WHERE message_id = %s", message.message_id) is None
