"""The batch lane's crash points: a driver SIGKILLed after the API created its batch but before it
recorded it, and one SIGKILLed halfway through collecting a batch's results. Neither loses a
request nor submits one twice; every job completes, each answer billed once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from datetime import timedelta
from decimal import Decimal

import pytest
from helpers import one, rows, running_worker, wait_until
from test_batch_lane import LANE_ENV, _pair, lane  # noqa: F401  (the fixture)

from roastq.api import enqueue_evaluations

pytestmark = pytest.mark.postgres_broker

DRIVE = "from roastq.llm import batch_driver; print(batch_driver.drive(), flush=True)"


@pytest.fixture
def parked(lane, broker, sim, monkeypatch, db, seeded):  # noqa: F811
    """Four batch jobs parked in the lane, their requests waiting and due; no worker drives the
    lane (the test does, in this process or in a driver process it kills)."""
    from middleware.batchlane import BatchLane
    from roastq.llm import client
    from roastq.settings import reload_settings

    monkeypatch.setenv("LLM_BATCH_TICK_S", "0")
    for m in broker.middleware:  # the stack read LLM_BATCH_TICK_S when it was built
        if isinstance(m, BatchLane):
            monkeypatch.setattr(m, "tick_s", 0.0)
    reload_settings()
    with client._default_lock:
        client._default = None
    doc, agent = _pair(seeded, db, critique=False)
    with running_worker(broker, threads=4) as w:
        job_ids = enqueue_evaluations([(doc, agent)] * 4, deadline=timedelta(hours=2))
        wait_until(
            lambda: one(db, "SELECT count(*) FROM dramatiq.queue WHERE queue_name = 'batch.lane'") == 4,
            timeout=20,
            what="four parked jobs",
        )
        # and due: a driver submits once the oldest request has waited LLM_BATCH_MAX_WAIT_S (a
        # driver process that looked sooner drove once, found nothing due, and ended)
        wait_until(
            lambda: one(
                db,
                "SELECT EXTRACT(EPOCH FROM now() - min(created_at)) > %s FROM llm_batch_requests WHERE state = 'waiting'",
                float(LANE_ENV["LLM_BATCH_MAX_WAIT_S"]),
            ),
            timeout=5,
            what="the requests due",
        )
        yield job_ids, w


def driver_process():
    return subprocess.Popen([sys.executable, "-c", DRIVE], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)


def drive_until_done(db, job_ids, timeout=40):
    from roastq.llm import batch_driver

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch_driver.drive()
        if one(db, "SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[]) AND status = 'COMPLETED'", job_ids) == 4:
            return
        time.sleep(0.1)
    raise AssertionError(f"jobs not done: {rows(db, 'SELECT status FROM jobs WHERE id = ANY(%s::uuid[])', job_ids)}")


def assert_each_answer_billed_once(db, lane, job_ids):
    assert rows(
        db, "SELECT DISTINCT billed_calls FROM job_steps WHERE job_id = ANY(%s::uuid[]) AND step = 'analysis'", job_ids
    ) == [(1,)]
    assert one(db, "SELECT sum(price_usd) FROM tasks WHERE job_id = ANY(%s::uuid[])", job_ids) == Decimal(
        lane.stats()["billed_usd"]
    )


def test_a_driver_killed_between_create_and_record_finds_its_batch_again(db, parked, lane, sim):
    job_ids, _ = parked
    lane.script_faults("slow_create")  # the batch is made, the answer comes 30 s later
    proc = driver_process()
    try:
        wait_until(lambda: lane.stats().get("batches", 0) == 1, timeout=20, what="the batch created")
        wait_until(
            lambda: one(db, "SELECT count(*) FROM llm_batch_requests WHERE state = 'submitting'") == 4,
            timeout=5,
            what="the requests marked submitting",
        )
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert one(db, "SELECT count(*) FROM llm_batches") == 0  # it died before recording the batch
    created = lane.batch_ids()[0]

    drive_until_done(db, job_ids)
    assert lane.stats()["batches"] == 1  # nothing submitted twice
    assert rows(db, "SELECT id, adopted FROM llm_batches") == [(created, True)]
    assert rows(db, "SELECT DISTINCT state, batch_id, submissions FROM llm_batch_requests") == [
        ("succeeded", created, 1)
    ]
    assert_each_answer_billed_once(db, lane, job_ids)
    assert not [r for r in sim.requests() if r["job_id"] in job_ids]  # and nothing went real-time


def test_a_driver_killed_before_its_create_call_leaves_the_requests_waiting(db, parked, lane, sim):
    """A submission that made no batch (the driver died first, or the API never got the call) is
    found stale, no batch in the API's list matches it, and its requests wait again."""
    job_ids, _ = parked
    with db.cursor() as cur:  # the state a driver leaves when it dies just before the create call
        cur.execute(
            "UPDATE llm_batch_requests SET state = 'submitting', submission_id = gen_random_uuid(), "
            "submitting_at = now()"
        )
    drive_until_done(db, job_ids)
    assert lane.stats()["batches"] == 1
    assert_each_answer_billed_once(db, lane, job_ids)


def test_a_driver_killed_halfway_through_the_results_loses_nothing_and_bills_nothing_twice(db, parked, lane, sim):
    from roastq.llm import batch_driver

    job_ids, _ = parked
    time.sleep(0.3)  # LLM_BATCH_MAX_WAIT_S
    batch_driver.drive()  # submits
    assert one(db, "SELECT count(*) FROM llm_batches") == 1
    time.sleep(0.4)  # the batch ends (0.3 s)
    lane.script_faults("stall_results")  # half the results, then silence
    proc = driver_process()
    try:
        wait_until(
            lambda: one(db, "SELECT count(*) FROM llm_batch_requests WHERE state = 'succeeded'") >= 1,
            timeout=20,
            what="the first results recorded",
        )
        time.sleep(0.5)  # the rest of the first half, then it hangs in the stream
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    done = one(db, "SELECT count(*) FROM llm_batch_requests WHERE state = 'succeeded'")
    assert 1 <= done < 4
    assert one(db, "SELECT collected_at FROM llm_batches") is None

    drive_until_done(db, job_ids)
    assert lane.stats()["batches"] == 1
    assert lane.stats()["faults_stall_results"] == 1
    assert one(db, "SELECT collected_at IS NOT NULL FROM llm_batches")
    assert_each_answer_billed_once(db, lane, job_ids)
