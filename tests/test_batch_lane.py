"""The batch lane: routing by deadline, durable submission, polling and collection of every result
type, fallback to real-time, cancellation. Real Postgres, the real SDK against the simulator's
Message Batches API, in-process workers (their driver thread drives the lane)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from datetime import timedelta
from decimal import Decimal

import pytest
from helpers import one, rows, running_worker, wait_for_status, wait_until

from roastq.api import enqueue_evaluation, enqueue_evaluations

pytestmark = pytest.mark.postgres_broker  # the lane parks messages in the Postgres broker

LANE_ENV = {
    "LLM_BATCH_LANE": "auto",
    "LLM_BATCH_MIN_SLACK": "60",
    "LLM_BATCH_FALLBACK_S": "5",
    "LLM_BATCH_MAX_WAIT_S": "0.2",
    "LLM_BATCH_POLL_S": "0.1",
    "LLM_BATCH_POLL_MAX_S": "0.3",
    "LLM_BATCH_TICK_S": "0.1",
    "BACKOFF_SCALE": "0.01",
}


@pytest.fixture
def lane(simulator, monkeypatch):
    """Lane settings scaled down to test times, and batches that end after 0.3 s."""
    from roastq.llm import client
    from roastq.settings import reload_settings

    for k, v in LANE_ENV.items():
        monkeypatch.setenv(k, v)
    reload_settings()
    with client._default_lock:  # not while a worker thread is making the old one
        client._default = None
    simulator.batches.reset()
    simulator.batches.configure(
        end_after_s=0.3,
        error_rate=0.0,
        fault_rate=0.0,
        expire_after_s=86400.0,
        stall_s=30.0,
        create_delay_s=30.0,
        max_processing=None,
    )
    yield simulator.batches
    simulator.batches.reset()
    monkeypatch.undo()
    reload_settings()
    with client._default_lock:  # not while a worker thread is making the old one
        client._default = None


def set_lane_env(monkeypatch, **env):
    """Change lane settings for the rest of a test: the driver reads the Claude client's settings."""
    from roastq.llm import client
    from roastq.settings import reload_settings

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    reload_settings()
    with client._default_lock:  # not while a worker thread is making the old one
        client._default = None


@pytest.fixture
def lane_worker(lane, broker, sim, monkeypatch):
    from middleware.batchlane import BatchLane

    for m in broker.middleware:  # the stack read the lane's settings when it was built
        if isinstance(m, BatchLane):
            monkeypatch.setattr(m, "enabled", True)
            monkeypatch.setattr(m, "tick_s", 0.1)
    with running_worker(broker, threads=4) as w:
        yield w


def _pair(seeded, db, critique: bool):
    cond = "IS NOT NULL" if critique else "IS NULL"
    agent = one(
        db, f"SELECT agent_id FROM agent_versions WHERE self_critique_instructions {cond} ORDER BY name LIMIT 1"
    )
    return next(iter(seeded.documents.values())), agent


def realtime_requests(sim, job_id):
    return [r["step"] for r in sim.requests() if r["job_id"] == job_id]


def lane_rows(db, job_id):
    return rows(
        db,
        "SELECT step, state, batch_id IS NOT NULL FROM llm_batch_requests WHERE job_id = %s ORDER BY created_at",
        job_id,
    )


def test_a_batch_job_with_time_to_spare_runs_both_steps_through_the_lane(db, seeded, lane_worker, lane, sim):
    doc, agent = _pair(seeded, db, critique=True)
    job_id = enqueue_evaluation(doc, agent, priority="batch", deadline=timedelta(hours=2))
    assert wait_for_status(db, [job_id], timeout=30)[job_id] == "COMPLETED"
    assert realtime_requests(sim, job_id) == []  # nothing went to /v1/messages
    assert lane_rows(db, job_id) == [("analysis", "succeeded", True), ("self_critique", "succeeded", True)]
    # Billed at batch prices: the tasks' price is half what the same tokens cost real-time.
    from roastq.llm.pricing import Usage, cost_usd

    for _name, model, i, o, cr, cw, price in rows(
        db,
        "SELECT name, model, input_tokens, output_tokens, "
        "cache_read_tokens, cache_write_tokens, price_usd FROM tasks "
        "WHERE job_id = %s AND model IS NOT NULL",
        job_id,
    ):
        assert price == cost_usd(model, Usage(i, o, cr, cw), batch=True) > 0
        assert price <= cost_usd(model, Usage(i, o, cr, cw)) / 2 + Decimal("0.000001")
    # No attempt was used up waiting: every delivery but the last snoozed.
    outcomes = [o for (o,) in rows(db, "SELECT outcome FROM job_attempts WHERE job_id = %s ORDER BY attempt", job_id)]
    assert outcomes == ["snoozed", "snoozed", "completed"]
    assert lane.stats()["batches"] == 2


def test_interactive_jobs_and_jobs_without_slack_run_real_time(db, seeded, lane_worker, lane, sim):
    doc, agent = _pair(seeded, db, critique=False)
    interactive = enqueue_evaluation(doc, agent, priority="interactive", deadline=timedelta(hours=5))
    short = enqueue_evaluation(doc, agent, priority="batch", deadline=timedelta(seconds=30))  # < MIN_SLACK 60 s
    statuses = wait_for_status(db, [interactive, short], timeout=30)
    assert set(statuses.values()) == {"COMPLETED"}
    for job_id in (interactive, short):
        assert realtime_requests(sim, job_id) == ["analysis"]
        assert lane_rows(db, job_id) == []
    assert lane.stats().get("batches", 0) == 0


def test_batch_jobs_get_the_default_deadline(db, seeded, lane):
    doc, agent = _pair(seeded, db, critique=False)
    job_id = enqueue_evaluation(doc, agent, priority="batch")
    left = one(db, "SELECT EXTRACT(EPOCH FROM deadline - now()) FROM jobs WHERE id = %s", job_id)
    assert 86400 - 60 < left <= 86400
    assert (
        one(db, "SELECT deadline FROM jobs WHERE id = %s", enqueue_evaluation(doc, agent, priority="interactive"))
        is None
    )


def test_not_before_delays_the_start(db, seeded, worker, sim):
    doc, agent = _pair(seeded, db, critique=False)
    job_id = enqueue_evaluation(doc, agent, not_before=2.0)
    assert one(db, "SELECT not_before > now() + interval '1 second' FROM jobs WHERE id = %s", job_id)
    import time

    time.sleep(1.0)
    assert one(db, "SELECT status FROM jobs WHERE id = %s", job_id) == "PENDING"
    assert wait_for_status(db, [job_id], timeout=30)[job_id] == "COMPLETED"
    assert one(db, "SELECT started_at >= not_before FROM jobs WHERE id = %s", job_id)
    bulk = enqueue_evaluations([(doc, agent)] * 2, not_before=timedelta(seconds=1.5), deadline=timedelta(hours=2))
    assert rows(
        db,
        "SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[]) AND not_before > now() "
        "AND deadline > now() + interval '1 hour'",
        bulk,
    ) == [(2,)]
    assert set(wait_for_status(db, bulk, timeout=30).values()) == {"COMPLETED"}


def test_many_jobs_share_one_batch(db, seeded, lane_worker, lane, sim, monkeypatch):
    lane.configure(end_after_s=0.5)
    doc, agent = _pair(seeded, db, critique=False)
    set_lane_env(monkeypatch, LLM_BATCH_MAX_WAIT_S="3")  # the lane gathers 3 s of requests into one batch
    job_ids = enqueue_evaluations([(doc, agent)] * 12, deadline=timedelta(hours=3))
    assert set(wait_for_status(db, job_ids, timeout=40).values()) == {"COMPLETED"}
    assert (
        one(db, "SELECT count(DISTINCT batch_id) FROM llm_batch_requests WHERE job_id = ANY(%s::uuid[])", job_ids) == 1
    )
    assert lane.stats()["requests"] == 12
    assert not [r for r in sim.requests() if r["job_id"] in job_ids]


@pytest.mark.parametrize(
    "outcome, error_class, final",
    [
        ("errored:invalid_request", "INVALID_REQUEST", "FAILED"),
        ("errored:auth", "AUTH", "FAILED"),
        ("errored:spend_limit", "SPEND_LIMIT", "FAILED"),
        ("errored:overloaded", "OVERLOADED", "COMPLETED"),
        ("errored:server_error", "UPSTREAM", "COMPLETED"),
        ("errored:rate_limit", "RATE_LIMITED", "COMPLETED"),
    ],
)
def test_an_errored_result_is_classified_like_the_same_error_real_time(
    db, seeded, lane_worker, lane, sim, outcome, error_class, final
):
    lane.script_outcomes(outcome)
    doc, agent = _pair(seeded, db, critique=False)
    job_id = enqueue_evaluation(doc, agent, priority="batch", deadline=timedelta(hours=2))
    assert wait_for_status(db, [job_id], timeout=40)[job_id] == final
    classes = [
        c
        for (c,) in rows(
            db,
            "SELECT error_class FROM job_attempts WHERE job_id = %s AND error_class "
            "IS NOT NULL AND error_class <> 'SNOOZED' ORDER BY attempt",
            job_id,
        )
    ]
    assert classes == [error_class]
    states = [s for _, s, _ in lane_rows(db, job_id)]
    if final == "COMPLETED":  # retried: the step went to the lane again, and succeeded
        assert states == ["errored", "succeeded"]
    else:
        assert states == ["errored"]
        assert one(db, "SELECT error_class FROM jobs WHERE id = %s", job_id) == error_class


@pytest.mark.parametrize("outcome", ["expired", "canceled"])
def test_expired_and_canceled_results_wait_for_another_batch(db, seeded, lane_worker, lane, sim, outcome):
    lane.script_outcomes(outcome)
    doc, agent = _pair(seeded, db, critique=False)
    job_id = enqueue_evaluation(doc, agent, priority="batch", deadline=timedelta(hours=2))
    assert wait_for_status(db, [job_id], timeout=40)[job_id] == "COMPLETED"
    ((state, submissions, history),) = rows(
        db, "SELECT state, submissions, history FROM llm_batch_requests WHERE job_id = %s", job_id
    )
    assert (state, submissions) == ("succeeded", 2)
    assert [h["result"] for h in history] == [outcome]
    assert lane.stats()["batches"] == 2
    # The attempts: none was counted as a failure.
    assert (
        one(
            db,
            "SELECT count(*) FROM job_attempts WHERE job_id = %s AND outcome NOT IN ('snoozed', 'completed')",
            job_id,
        )
        == 0
    )


def test_a_whole_batch_that_expires_sends_its_requests_again(db, seeded, lane_worker, lane, sim):
    lane.configure(end_after_s=0.4, expire_after_s=0.2)  # the first batch expires before it ends
    doc, agent = _pair(seeded, db, critique=False)
    job_ids = enqueue_evaluations([(doc, agent)] * 3, deadline=timedelta(hours=2))
    wait_until(lambda: lane.stats().get("results_expired", 0) >= 3, timeout=20, what="an expired batch")
    lane.configure(expire_after_s=86400.0)
    assert set(wait_for_status(db, job_ids, timeout=40).values()) == {"COMPLETED"}
    assert rows(
        db, "SELECT DISTINCT state, submissions FROM llm_batch_requests WHERE job_id = ANY(%s::uuid[])", job_ids
    ) == [("succeeded", 2)]


def test_invalid_tool_input_from_a_batch_is_bad_llm_output(db, seeded, lane, sim):
    """A batch answer that is not the tool call asked for (unusable whatever the tiers of checks)
    is billed, not memoised, and the job's next delivery raises BadLLMOutput (retried with the
    cache bypassed, as real-time). Soft violations are not this: the pipeline repairs them."""
    from roastq.llm import batch_driver
    from roastq.settings import get_settings

    doc, agent = _pair(seeded, db, critique=False)
    job_id = enqueue_evaluation(doc, agent, priority="batch", deadline=timedelta(hours=2))
    with db.cursor() as cur:  # a request as the job writes it, whose answer calls another tool than it expects
        cur.execute(
            """INSERT INTO llm_batch_requests (job_id, step, queue, model, params, tool_name, tool_schema)
                       VALUES (%s, 'analysis', 'batch', 'claude-sonnet-5-5', %s, 'u', %s)""",
            (
                job_id,
                '{"model": "claude-sonnet-5-5", "max_tokens": 50, "messages": [{"role": "user", '
                '"content": "hi"}], "tools": [{"name": "t", "input_schema": {"type": "object"}}], '
                '"tool_choice": {"type": "tool", "name": "t"}}',
                '{"type": "object", "required": ["never_there"]}',
            ),
        )
    settings = get_settings().replace(llm_batch_max_wait_s=0.0)
    assert batch_driver.submit(settings) == 1
    import time

    time.sleep(0.4)
    batch_driver.poll(settings)
    state, billed, price = rows(
        db, "SELECT state, billed, price_usd FROM llm_batch_requests WHERE job_id = %s", job_id
    )[0]
    assert (state, billed) == ("invalid", True) and price > 0
    assert one(db, "SELECT output FROM job_steps WHERE job_id = %s AND step = 'analysis'", job_id) is None
    assert one(db, "SELECT billed_calls FROM job_steps WHERE job_id = %s AND step = 'analysis'", job_id) == 1


def test_a_job_near_its_deadline_falls_back_to_real_time(db, seeded, lane_worker, lane, sim):
    lane.configure(end_after_s=3600)  # the batch will not end in time
    doc, agent = _pair(seeded, db, critique=False)
    # 70 s of deadline: enough slack (60) to enter the lane; FALLBACK_S is 5 s: so we move the
    # deadline near by hand rather than wait 65 s.
    job_id = enqueue_evaluation(doc, agent, priority="batch", deadline=timedelta(seconds=70))
    wait_until(
        lambda: one(db, "SELECT state FROM llm_batch_requests WHERE job_id = %s", job_id) == "submitted",
        timeout=20,
        what="the request in a batch",
    )
    with db.cursor() as cur:
        cur.execute("UPDATE jobs SET deadline = now() + interval '4 seconds' WHERE id = %s", (job_id,))
    assert wait_for_status(db, [job_id], timeout=30)[job_id] == "COMPLETED"
    assert one(db, "SELECT completed_at < deadline FROM jobs WHERE id = %s", job_id)
    assert realtime_requests(sim, job_id) == ["analysis"]
    assert [s for _, s, _ in lane_rows(db, job_id)] == ["fallback"]
    # No one waits for the batch any more: it was cancelled in the API.
    wait_until(lambda: lane.stats().get("cancels", 0) == 1, timeout=10, what="the batch cancelled")


def test_cancelling_a_waiting_job_removes_its_request_and_cancels_its_batch(db, seeded, lane_worker, lane, sim):
    from roastq.api import cancel_job

    lane.configure(end_after_s=3600)
    doc, agent = _pair(seeded, db, critique=False)
    job_id = enqueue_evaluation(doc, agent, priority="batch", deadline=timedelta(hours=2))
    wait_until(
        lambda: one(db, "SELECT state FROM llm_batch_requests WHERE job_id = %s", job_id) == "submitted",
        timeout=20,
        what="the request in a batch",
    )
    assert cancel_job(job_id) == "CANCELLED"
    wait_until(lambda: lane.stats().get("cancels", 0) == 1, timeout=10, what="the batch cancelled")
    assert [s for _, s, _ in lane_rows(db, job_id)] == ["cancelled"]
    assert one(db, "SELECT status FROM jobs WHERE id = %s", job_id) == "CANCELLED"
    assert realtime_requests(sim, job_id) == []
    # Its parked message does not linger as waiting work.
    wait_until(
        lambda: (
            one(db, "SELECT count(*) FROM dramatiq.queue WHERE queue_name LIKE '%%.lane' AND state = 'queued'") == 0
        ),
        timeout=10,
        what="the parked message gone",
    )


def test_a_cached_answer_never_waits_for_a_batch(db, seeded, lane_worker, lane, sim, llm_settings):
    llm_settings(llm_cache_enabled=True)
    doc, agent = _pair(seeded, db, critique=False)
    first = enqueue_evaluation(doc, agent, priority="batch", deadline=timedelta(hours=2))
    assert wait_for_status(db, [first], timeout=30)[first] == "COMPLETED"
    # The lane's answer went into the response cache: the same evaluation again is served from it.
    second = enqueue_evaluation(doc, agent, priority="batch", deadline=timedelta(hours=2))
    assert wait_for_status(db, [second], timeout=30)[second] == "COMPLETED"
    assert lane_rows(db, second) == []
    assert one(db, "SELECT cached FROM tasks WHERE job_id = %s AND name = 'analysis'", second) is True
    assert lane.stats()["batches"] == 1


def test_a_batch_endpoint_500_is_retried_without_losing_requests(db, seeded, lane_worker, lane, sim):
    lane.script_faults("server_error", "ok", "server_error")  # the create, then a poll
    doc, agent = _pair(seeded, db, critique=False)
    job_ids = enqueue_evaluations([(doc, agent)] * 3, deadline=timedelta(hours=2))
    assert set(wait_for_status(db, job_ids, timeout=40).values()) == {"COMPLETED"}
    assert lane.stats()["faults_server_error"] == 2
    assert one(db, "SELECT count(*) FROM llm_batches") == lane.stats()["batches"]


def test_a_results_stream_cut_halfway_is_resumed_and_nothing_is_billed_twice(
    db, seeded, lane_worker, lane, sim, monkeypatch
):
    lane.script_faults("cut_results")
    doc, agent = _pair(seeded, db, critique=False)
    set_lane_env(monkeypatch, LLM_BATCH_MAX_WAIT_S="3")
    job_ids = enqueue_evaluations([(doc, agent)] * 8, deadline=timedelta(hours=2))
    assert set(wait_for_status(db, job_ids, timeout=40).values()) == {"COMPLETED"}
    assert lane.stats()["faults_cut_results"] == 1
    assert (
        one(db, "SELECT count(DISTINCT batch_id) FROM llm_batch_requests WHERE job_id = ANY(%s::uuid[])", job_ids) == 1
    )
    # Each answer billed once: the ledger's calls are the lane's answers, and the dollars agree
    # with what the simulator billed.
    assert one(db, "SELECT sum(billed_calls) FROM job_steps WHERE job_id = ANY(%s::uuid[])", job_ids) == 8
    assert one(db, "SELECT sum(price_usd) FROM tasks WHERE job_id = ANY(%s::uuid[])", job_ids) == Decimal(
        lane.stats()["billed_usd"]
    )


def test_the_cli_enqueues_with_a_deadline_and_a_delay(db, seeded, capsys):
    from roastq.cli.main import main

    doc, agent = _pair(seeded, db, critique=False)
    doc, agent = str(doc), str(agent)
    assert (
        main(
            [
                "enqueue",
                "--document-id",
                doc,
                "--agent-id",
                agent,
                "--priority",
                "batch",
                "--deadline",
                "6h",
                "--delay",
                "10m",
            ]
        )
        == 0
    )
    job_id = capsys.readouterr().out.strip()
    start, due = rows(
        db,
        "SELECT EXTRACT(EPOCH FROM not_before - now()), EXTRACT(EPOCH FROM deadline - now()) FROM jobs WHERE id = %s",
        job_id,
    )[0]
    assert 590 < start <= 600 and 6 * 3600 - 60 < due <= 6 * 3600
    assert one(db, "SELECT queue_name FROM dramatiq.queue WHERE message->'args'->>0 = %s", job_id) == "batch.DQ"
    with pytest.raises(SystemExit):
        main(["enqueue", "--document-id", doc, "--agent-id", agent, "--deadline", "soon"])


def test_durations():
    from roastq.settings import parse_duration

    assert [parse_duration(x) for x in ("90", "90s", "10m", "6h", "2d", "1.5h")] == [90, 90, 600, 21600, 172800, 5400]
    for bad in ("", "soon", "-5m", "6x"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_a_deadline_before_the_start_time_is_refused(db, seeded):
    from roastq.api import EnqueueError

    doc, agent = _pair(seeded, db, critique=False)
    with pytest.raises(EnqueueError):
        enqueue_evaluation(doc, agent, priority="batch", deadline=60, not_before=120)


def test_a_woken_job_runs_even_while_its_old_message_lock_is_held(db, seeded, lane_worker, lane, sim, database_url):
    """The consumer that parked a job may hold its message's advisory lock for a while (until it
    purges its locks): the wake must not leave the job queued behind it."""
    import psycopg2

    lane.configure(end_after_s=1.0)
    doc, agent = _pair(seeded, db, critique=False)
    job_id = enqueue_evaluation(doc, agent, priority="batch", deadline=timedelta(hours=2))
    wait_until(
        lambda: one(db, "SELECT count(*) FROM dramatiq.queue WHERE queue_name = 'batch.lane'") == 1,
        timeout=20,
        what="the job parked",
    )
    parked_id = one(db, "SELECT message_id FROM jobs WHERE id = %s", job_id)
    holder = psycopg2.connect(database_url)
    holder.autocommit = True
    try:
        with holder.cursor() as cur:  # as a consumer that has not purged the lock of the parked delivery
            cur.execute("SELECT pg_advisory_lock(roastq_message_lock('batch', %s))", (parked_id,))
        assert wait_for_status(db, [job_id], timeout=30)[job_id] == "COMPLETED"
    finally:
        holder.close()
    assert one(db, "SELECT message_id FROM jobs WHERE id = %s", job_id) != parked_id
    assert one(db, "SELECT state FROM dramatiq.queue WHERE message_id = %s", parked_id) == "done"


def test_a_lane_with_nothing_to_do_does_not_load_the_sdk(db, database_url):
    """Every worker drives the lane; a tick that finds nothing to send or poll must not import
    the LLM client and the anthropic SDK (2 s of a worker's CPU and 50 MiB, paid during its first
    jobs: the first tick came 0.1 s after boot)."""
    code = textwrap.dedent("""
        import json, sys
        from roastq.llm import batch_driver
        out = batch_driver.drive()
        print(json.dumps({"out": out, "sdk": "anthropic" in sys.modules, "client": "roastq.llm.client" in sys.modules}))
    """)
    env = dict(os.environ, DATABASE_URL=database_url, LLM_BATCH_LANE="auto")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["out"]["submitted"] == 0 and report["out"]["polled"] == 0, report
    assert not report["sdk"] and not report["client"], report
