"""Failures end to end: each error class through real workers, the SDK and the simulator's faults."""

import signal
import time
from collections import defaultdict

import pytest
from helpers import (
    kill_all,
    kill_group,
    one,
    rows,
    running_worker,
    stack_options,
    start_workers,
    wait_for_status,
    wait_until,
)
from messages import wait_consumed, wait_rejected

from roastq.api import enqueue_evaluation, rerun_job

#: The class a simulator fault must end up as.
FAULT_CLASS = {
    "rate_limit": "RATE_LIMITED",
    "spend_limit": "SPEND_LIMIT",
    "overloaded": "OVERLOADED",
    "server_error": "UPSTREAM",
    "malformed": "UPSTREAM",
    "invalid_request": "INVALID_REQUEST",
    "auth": "AUTH",
    "permission": "AUTH",
    "hang": "NETWORK",
    "drop": "NETWORK",
    "bad_tool_input": "BAD_LLM_OUTPUT",
    "refusal": "REFUSAL",
}
PERMANENT = {"SPEND_LIMIT", "INVALID_REQUEST", "AUTH", "REFUSAL"}

# Retries in milliseconds; each test twice, with tidy and with sloppy answers (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("fast_backoff", "sloppiness")


@pytest.fixture
def short_calls():
    """LLM calls time out after 1 s (for the hang fault)."""
    from roastq.llm import client as llm

    claude = llm.default_claude()
    saved = claude.settings
    claude.settings = saved.replace(llm_call_timeout_s=1.0)
    yield
    claude.settings = saved


def simple_agent(seeded, db):
    """An agent without self-critique: one LLM call a job."""
    return one(db, "SELECT agent_id FROM agent_versions WHERE self_critique_instructions IS NULL ORDER BY name LIMIT 1")


def a_job(seeded, db, **kw):
    return enqueue_evaluation(next(iter(seeded.documents.values())), simple_agent(seeded, db), **kw)


def attempts_of(db, job_id):
    return rows(
        db,
        "SELECT attempt, outcome, error_class, delay_s, delay_reason FROM job_attempts "
        "WHERE job_id = %s ORDER BY attempt",
        job_id,
    )


@pytest.mark.parametrize("fault", ["rate_limit", "overloaded", "server_error", "malformed", "drop", "hang"])
def test_transient_fault_is_retried_then_completes(db, seeded, worker, sim, short_calls, fault):
    sim.configure(hang_s=3)
    sim.script(fault)
    job_id = a_job(seeded, db)
    assert wait_for_status(db, [job_id], timeout=30)[job_id] == "COMPLETED"
    attempts = attempts_of(db, job_id)
    assert [(a[0], a[1], a[2]) for a in attempts] == [(1, "retried", FAULT_CLASS[fault]), (2, "completed", None)]
    if fault == "rate_limit":
        assert attempts[0][4] == "server_requested" and attempts[0][3] >= sim.config.retry_after_s
    assert one(db, "SELECT count(*) FROM evaluation_versions WHERE job_id = %s", job_id) == 1


@pytest.mark.parametrize("fault", ["spend_limit", "invalid_request", "auth", "permission"])
def test_permanent_fault_fails_after_one_attempt_as_a_dead_letter(db, seeded, worker, sim, fault):
    sim.script(fault)
    job_id = a_job(seeded, db)
    assert wait_for_status(db, [job_id])[job_id] == "FAILED"
    error_class, error, attempts = one(db, "SELECT error_class, error, attempts FROM jobs WHERE id = %s", job_id)
    assert (error_class, attempts) == (FAULT_CLASS[fault], 1)
    assert error and len(error) <= 1000 and "sk-roastq" not in error
    message_id = one(db, "SELECT message_id FROM jobs WHERE id = %s", job_id)
    wait_rejected(db, message_id)
    assert len([r for r in sim.requests() if r["job_id"] == job_id]) == 1


def test_bad_output_is_sent_back_to_the_model_within_the_attempt(db, seeded, worker, sim):
    """An answer without what the evaluation needs: the next request continues the conversation
    with the model's tool call and an is_error tool result naming what was wrong, in the same
    attempt; both requests are in the ledger."""
    sim.script("bad_tool_input")  # the summary is missing
    job_id = a_job(seeded, db)
    assert wait_for_status(db, [job_id])[job_id] == "COMPLETED"
    assert [(a[1], a[2]) for a in attempts_of(db, job_id)] == [("completed", None)]
    first, second = [r for r in sim.requests() if r["job_id"] == job_id]
    assert (first["turns"], first["error_results"]) == (1, 0)
    assert (second["turns"], second["error_results"]) == (3, 1)  # user, assistant tool_use, user tool_result
    billed = one(
        db,
        "SELECT input_tokens + output_tokens + cache_read_tokens + cache_write_tokens FROM tasks "
        "WHERE job_id = %s AND name = 'analysis'",
        job_id,
    )
    assert billed == sum(
        r["input_tokens"] + r["output_tokens"] + r["cache_read_input_tokens"] + r["cache_creation_input_tokens"]
        for r in (first, second)
    )


def test_bad_llm_output_retried_at_most_twice(db, seeded, worker, sim):
    """Only after the corrective request fails too does the class policy apply: three attempts of
    two requests each; each later attempt asks differently from the one before."""
    sim.script(*["bad_tool_input"] * 6)
    job_id = a_job(seeded, db)
    assert wait_for_status(db, [job_id])[job_id] == "FAILED"
    assert one(db, "SELECT error_class, attempts FROM jobs WHERE id = %s", job_id) == ("BAD_LLM_OUTPUT", 3)
    requests = [r for r in sim.requests() if r["job_id"] == job_id]
    assert [(r["attempt"], r["error_results"]) for r in requests] == [(str(a), e) for a in (1, 2, 3) for e in (0, 1)]
    # A later attempt's first request is not the first attempt's: it says an earlier answer was unusable.
    assert requests[2]["input_tokens"] > requests[0]["input_tokens"]


def test_refusal_fails_at_once_with_its_own_class(db, seeded, worker, sim):
    sim.script("refusal")
    job_id = a_job(seeded, db)
    assert wait_for_status(db, [job_id])[job_id] == "FAILED"
    error_class, error, attempts = one(db, "SELECT error_class, error, attempts FROM jobs WHERE id = %s", job_id)
    assert (error_class, attempts) == ("REFUSAL", 1) and "refusal" in error
    assert len([r for r in sim.requests() if r["job_id"] == job_id]) == 1  # never asked again
    assert one(db, "SELECT price_usd > 0 FROM job_steps WHERE job_id = %s AND step = 'analysis'", job_id)  # billed
    wait_rejected(db, one(db, "SELECT message_id FROM jobs WHERE id = %s", job_id))


def test_an_answer_cut_at_max_tokens_is_asked_again_with_more_room(db, seeded, worker, sim, llm_settings):
    llm_settings(llm_max_tokens=300)  # smaller than the answer
    job_id = a_job(seeded, db)
    assert wait_for_status(db, [job_id])[job_id] == "COMPLETED"
    assert [a[1] for a in attempts_of(db, job_id)] == ["completed"]
    requests = [r for r in sim.requests() if r["job_id"] == job_id]
    assert [r["stop_reason"] for r in requests][-1] == "tool_use"
    assert all(r["stop_reason"] == "max_tokens" for r in requests[:-1]) and len(requests) >= 2
    sizes = [r["max_tokens"] for r in requests]
    assert sizes == sorted(sizes) and len(set(sizes)) == len(sizes)  # never the same request again
    assert requests[0]["output_tokens"] == 300  # the cut answer was billed, and counted
    assert one(db, "SELECT output_tokens FROM tasks WHERE job_id = %s AND name = 'analysis'", job_id) == sum(
        r["output_tokens"] for r in requests
    )


def test_an_answer_cut_at_the_models_limit_asks_for_a_shorter_answer(db, seeded, sim, llm_settings, monkeypatch):
    """At the model's output limit, max_tokens cannot grow: the next request asks for less."""
    from roastq.evaluation import pipeline
    from roastq.llm import models

    monkeypatch.setitem(models.LIMITS, "claude-sonnet-5-5", models.ModelLimits(200_000, 100))
    claude = llm_settings(llm_max_tokens=100)
    with pytest.raises(Exception, match="cut at max_tokens"):
        claude.call_tool(
            step="analysis",
            system="Evaluate.",
            prompt="<document>\nLine 1: " + "word " * 50 + "\n</document>",
            tool=pipeline.analysis_tool(False),
        )
    requests = sim.requests()
    assert [r["max_tokens"] for r in requests] == [100, 100, 100]
    assert [r["turns"] for r in requests] == [1, 1, 1]  # the same turn, with the request for brevity added
    assert len({r["input_tokens"] for r in requests}) == 3


def test_exhausted_backoff_fails_with_the_class(db, seeded, worker, sim):
    sim.script(*["server_error"] * 5)
    job_id = a_job(seeded, db)
    assert wait_for_status(db, [job_id])[job_id] == "FAILED"
    assert one(db, "SELECT error_class, attempts FROM jobs WHERE id = %s", job_id) == ("UPSTREAM", 5)
    assert [a[1] for a in attempts_of(db, job_id)] == ["retried"] * 4 + ["failed"]


def test_unknown_error_is_retried_once(db, seeded, worker, sim, monkeypatch):
    from roastq.evaluation import pipeline

    real, calls = pipeline.locate_highlight, []

    def flaky(*args, **kwargs):  # a bug in our own code, the first time only
        calls.append(1)
        if len(calls) == 1:
            raise ZeroDivisionError("bug")
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "locate_highlight", flaky)
    job_id = a_job(seeded, db)
    assert wait_for_status(db, [job_id])[job_id] == "COMPLETED"
    assert [(a[1], a[2]) for a in attempts_of(db, job_id)] == [("retried", "UNKNOWN"), ("completed", None)]


def test_database_connection_lost_mid_job_is_retried(db, seeded, worker, sim, database_url):
    import psycopg2

    job_id = a_job(seeded, db)
    evaluation_id = one(db, "SELECT evaluation_id FROM jobs WHERE id = %s", job_id)
    blocker = psycopg2.connect(database_url)  # holds the evaluation row: the worker's save waits on it
    try:
        with blocker.cursor() as cur:
            cur.execute("SELECT id FROM evaluations WHERE id = %s FOR UPDATE", (evaluation_id,))
        waiting = "SELECT pid FROM pg_stat_activity WHERE application_name = 'roastq' AND wait_event_type = 'Lock'"
        wait_until(lambda: one(db, waiting) is not None, what="the save to wait on the lock")
        with db.cursor() as cur:  # the worker's connection dies mid-query, as in a database restart
            cur.execute(f"SELECT pg_terminate_backend(pid) FROM ({waiting}) w")
    finally:
        blocker.rollback()
        blocker.close()
    assert wait_for_status(db, [job_id], timeout=30)[job_id] == "COMPLETED"
    assert [(a[1], a[2]) for a in attempts_of(db, job_id)] == [("retried", "DATABASE"), ("completed", None)]
    assert one(db, "SELECT count(*) FROM evaluation_versions WHERE job_id = %s", job_id) == 1


def test_time_limit_fails_with_timeout_not_retried(db, seeded, worker, sim):
    agent = simple_agent(seeded, db)
    with db.cursor() as cur:
        cur.execute("UPDATE agent_versions SET time_limit_s = 2 WHERE agent_id = %s", (agent,))
    sim.configure(latency_ms=5000, jitter_ms=0)
    started = time.monotonic()
    job_id = a_job(seeded, db)
    assert wait_for_status(db, [job_id], timeout=20)[job_id] == "FAILED"
    assert time.monotonic() - started < 5  # the LLM call's timeout was the 2 s left, not the 120 s cap
    assert one(db, "SELECT error_class, attempts FROM jobs WHERE id = %s", job_id) == ("TIMEOUT", 1)


def test_time_limit_retried_when_the_agent_allows_it(db, seeded, worker, sim):
    agent = simple_agent(seeded, db)
    with db.cursor() as cur:
        cur.execute("UPDATE agent_versions SET time_limit_s = 2, retry_on_timeout = true WHERE agent_id = %s", (agent,))
    sim.configure(latency_ms=5000, jitter_ms=0)
    job_id = a_job(seeded, db)
    wait_until(lambda: one(db, "SELECT attempts FROM jobs WHERE id = %s", job_id) == 2, timeout=20, what="retry")
    sim.configure(latency_ms=5)
    assert wait_for_status(db, [job_id], timeout=20)[job_id] in ("COMPLETED", "FAILED")
    assert attempts_of(db, job_id)[0][1:3] == ("retried", "TIMEOUT")


def test_retry_reruns_a_dead_letter_as_a_linked_job(db, seeded, worker, sim):
    sim.script("invalid_request")
    job_id = a_job(seeded, db)
    assert wait_for_status(db, [job_id])[job_id] == "FAILED"
    new_id = rerun_job(job_id)
    assert wait_for_status(db, [new_id])[new_id] == "COMPLETED"
    assert str(one(db, "SELECT original_job_id FROM jobs WHERE id = %s", new_id)) == job_id
    assert one(db, "SELECT status FROM jobs WHERE id = %s", job_id) == "FAILED"  # history kept


def test_cli_retry_failed_by_class(db, seeded, worker, sim):
    from roastq.cli.main import main

    sim.script("invalid_request", "auth")
    failed = [a_job(seeded, db), a_job(seeded, db)]
    wait_for_status(db, failed)
    invalid = one(db, "SELECT id::text FROM jobs WHERE error_class = 'INVALID_REQUEST'")
    assert main(["retry", "--failed", "--class", "INVALID_REQUEST"]) == 0
    reruns = rows(db, "SELECT id::text, original_job_id::text FROM jobs WHERE original_job_id IS NOT NULL")
    assert [r[1] for r in reruns] == [invalid]
    wait_for_status(db, [reruns[0][0]])


def test_cancel_pending_job_never_runs(db, seeded, sim, broker):
    from roastq.api import cancel_job

    job_id = a_job(seeded, db)
    assert cancel_job(job_id, reason="not needed") == "CANCELLED"
    with running_worker(broker, threads=2):
        message_id = one(db, "SELECT message_id FROM jobs WHERE id = %s", job_id)
        wait_consumed(db, message_id)
    assert one(db, "SELECT status, cancel_reason, attempts FROM jobs WHERE id = %s", job_id) == (
        "CANCELLED",
        "not needed",
        0,
    )
    assert [r for r in sim.requests() if r["job_id"] == job_id] == []


def test_cancel_running_job_stops_at_the_next_step(db, seeded, worker, sim):
    from roastq.api import cancel_job

    agent = one(
        db, "SELECT agent_id FROM agent_versions WHERE self_critique_instructions IS NOT NULL ORDER BY name LIMIT 1"
    )
    sim.configure(latency_ms=1000, jitter_ms=0)
    job_id = enqueue_evaluation(next(iter(seeded.documents.values())), agent)
    wait_until(lambda: one(db, "SELECT status FROM jobs WHERE id = %s", job_id) == "RUNNING", what="RUNNING")
    time.sleep(0.3)  # inside the 1 s analysis call
    assert cancel_job(job_id, reason="user deleted the document") == "RUNNING"
    assert wait_for_status(db, [job_id])[job_id] == "CANCELLED"
    assert one(db, "SELECT cancel_reason FROM jobs WHERE id = %s", job_id) == "user deleted the document"
    assert [r["step"] for r in sim.requests() if r["job_id"] == job_id] == ["analysis"]  # no self-critique
    assert one(db, "SELECT count(*) FROM evaluation_versions WHERE job_id = %s", job_id) == 0


def test_cancel_finished_or_unknown_job_is_a_clear_error(db, seeded):
    from roastq.api import EnqueueError, cancel_job

    with pytest.raises(EnqueueError, match="unknown job"):
        cancel_job("00000000-0000-0000-0000-000000000000")
    job_id = a_job(seeded, db)
    cancel_job(job_id)
    with pytest.raises(EnqueueError, match="already CANCELLED"):
        cancel_job(job_id)


def test_fault_storm(db, seeded, sim, broker, short_calls):
    """200 jobs, 25% random faults of every kind: each ends COMPLETED or FAILED with the right
    class, permanent classes after one attempt, no duplicate results, every retry-after respected."""
    sim.configure(fault_rate=0.25, seed=42, hang_s=2, retry_after_s=0.5, latency_ms=5, jitter_ms=3)
    with running_worker(broker, threads=16):
        docs, agents = list(seeded.documents.values()), list(seeded.agents.values())
        job_ids = [
            enqueue_evaluation(docs[i % len(docs)], agents[i % len(agents)], priority="batch") for i in range(200)
        ]
        statuses = wait_for_status(db, job_ids, timeout=240)

    by_job = defaultdict(list)
    for r in sorted(sim.requests(), key=lambda r: r["time"]):
        by_job[r["job_id"]].append(r)
    for job_id in job_ids:
        status, error_class, attempts = one(db, "SELECT status, error_class, attempts FROM jobs WHERE id = %s", job_id)
        requests = by_job[job_id]
        assert status in ("COMPLETED", "FAILED")
        if status == "FAILED":
            assert error_class == FAULT_CLASS[requests[-1]["kind"]], (job_id, requests[-1])
        # A permanent fault is never retried: it is the last request the job ever made.
        for r in requests[:-1]:
            assert FAULT_CLASS.get(r["kind"]) not in PERMANENT, (job_id, r, requests)
        # Retry-After: the next request of a job never comes before the server said.
        for earlier, later in zip(requests, requests[1:]):
            if earlier["kind"] == "rate_limit":
                assert later["time"] - earlier["time"] >= earlier["retry_after_s"] - 0.01, (job_id, earlier, later)
    assert rows(db, "SELECT job_id FROM evaluation_versions GROUP BY job_id HAVING count(*) > 1") == []
    completed = sum(1 for s in statuses.values() if s == "COMPLETED")
    assert one(db, "SELECT count(*) FROM evaluation_versions") == completed
    assert completed > 100
    kinds = {r["kind"] for rs in by_job.values() for r in rs}
    assert set(FAULT_CLASS) <= kinds  # every kind of fault really happened


def test_permanent_failures_take_exactly_one_attempt_in_a_storm(db, seeded, sim, broker):
    """Separately from the storm above: a permanent fault never gets a second attempt."""
    sim.configure(fault_rate=1.0, faults=("auth", "invalid_request", "spend_limit", "permission"), seed=3)
    with running_worker(broker, threads=8):
        job_ids = [a_job(seeded, db) for _ in range(20)]
        wait_for_status(db, job_ids)
    assert rows(db, "SELECT DISTINCT status, attempts FROM jobs") == [("FAILED", 1)]


# -- crashes and shutdown: real worker processes --------------------------------------------


def test_worker_killed_mid_job_is_recovered_by_the_survivors(db, seeded, sim):
    sim.configure(latency_ms=3000, jitter_ms=0)
    victim = start_workers(threads=2, RECOVERY_INTERVAL_S=2, ANTHROPIC_BASE_URL=sim.url)
    survivor = None
    try:
        job_id = a_job(seeded, db)
        wait_until(
            lambda: one(db, "SELECT status FROM jobs WHERE id = %s", job_id) == "RUNNING", timeout=30, what="RUNNING"
        )
        survivor = start_workers(threads=2, RECOVERY_INTERVAL_S=2, ANTHROPIC_BASE_URL=sim.url)
        time.sleep(1.5)  # the survivor is up and idle
        kill_group(victim, signal.SIGKILL)
        victim.wait()
        killed_at = time.monotonic()
        sim.configure(latency_ms=5)
        assert wait_for_status(db, [job_id], timeout=60)[job_id] == "COMPLETED"
        assert time.monotonic() - killed_at < 60
        assert one(db, "SELECT count(*) FROM evaluation_versions WHERE job_id = %s", job_id) == 1
        assert [a[1] for a in attempts_of(db, job_id)] == ["crashed", "completed"]
    finally:
        kill_all(victim, survivor)


def test_graceful_sigterm_loses_nothing(db, seeded, sim):
    sim.configure(latency_ms=400, jitter_ms=0)
    first = start_workers(threads=2, RECOVERY_INTERVAL_S=2, ANTHROPIC_BASE_URL=sim.url)
    second = None
    try:
        job_ids = [a_job(seeded, db) for _ in range(12)]
        wait_until(
            lambda: one(db, "SELECT count(*) FROM jobs WHERE status <> 'PENDING'") >= 2,
            timeout=30,
            what="work to start",
        )
        first.send_signal(signal.SIGTERM)  # to the main process only: it forwards the signal once
        code = first.wait(timeout=30)
        assert code == 0, first.stderr.read().decode()[-3000:]
        second = start_workers(threads=4, RECOVERY_INTERVAL_S=2, ANTHROPIC_BASE_URL=sim.url)
        statuses = wait_for_status(db, job_ids, timeout=60)
        assert set(statuses.values()) == {"COMPLETED"}
        assert one(db, "SELECT count(*) FROM evaluation_versions") == 12
        assert one(db, "SELECT count(*) FROM job_attempts WHERE outcome <> 'completed'") == 0
    finally:
        kill_all(first, second)


def test_recovery_never_takes_a_message_whose_worker_is_alive(db, seeded, sim):
    """dramatiq-pg's `recover` requeues running messages; our rescans must not."""
    sim.configure(latency_ms=4000, jitter_ms=0)
    a = start_workers(threads=1, RECOVERY_INTERVAL_S=0.5, ANTHROPIC_BASE_URL=sim.url)
    b = None
    try:
        job_id = a_job(seeded, db)
        wait_until(
            lambda: one(db, "SELECT status FROM jobs WHERE id = %s", job_id) == "RUNNING", timeout=30, what="RUNNING"
        )
        b = start_workers(threads=1, RECOVERY_INTERVAL_S=0.5, ANTHROPIC_BASE_URL=sim.url)  # rescans often
        assert wait_for_status(db, [job_id], timeout=30)[job_id] == "COMPLETED"
        assert one(db, "SELECT attempts FROM jobs WHERE id = %s", job_id) == 1
        assert len([r for r in sim.requests() if r["job_id"] == job_id]) == 1
    finally:
        kill_all(a, b)


def test_a_job_whose_workers_keep_dying_fails_as_worker_lost(db, seeded, sim, broker, monkeypatch):
    """A poison message: after JOB_CRASH_LIMIT deliveries died with their worker, the next
    delivery fails the job instead of running it (and killing another worker)."""
    job_id = a_job(seeded, db)
    with db.cursor() as cur:  # the state after three workers died mid-job: two closed, one still open
        cur.execute("UPDATE jobs SET status = 'RUNNING', attempts = 3, worker_id = 'gone:1' WHERE id = %s", (job_id,))
        cur.execute(
            "INSERT INTO job_attempts (job_id, attempt, outcome, ended_at) VALUES "
            "(%s, 1, 'crashed', now()), (%s, 2, 'crashed', now())",
            (job_id, job_id),
        )
        cur.execute("INSERT INTO job_attempts (job_id, attempt) VALUES (%s, 3)", (job_id,))
    with stack_options(broker, job_crash_limit=3), running_worker(broker, threads=2):
        assert wait_for_status(db, [job_id])[job_id] == "FAILED"
    assert one(db, "SELECT error_class FROM jobs WHERE id = %s", job_id) == "WORKER_LOST"
    assert [a[1] for a in attempts_of(db, job_id)] == ["crashed", "crashed", "crashed", "failed"]
    assert [r for r in sim.requests() if r["job_id"] == job_id] == []  # it never ran again
