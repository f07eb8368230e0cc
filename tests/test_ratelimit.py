"""Rate limits shared by every worker process: enforced in Postgres, a 429 or exhausted headers
close the gate for everyone, and waiting for the limiter is never a failure."""

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from helpers import kill_group, one, rows, start_workers, wait_for_status, wait_until

from roastq import events
from roastq.api import enqueue_evaluation
from roastq.llm import ratelimit
from roastq.settings import get_settings

MODEL = "claude-ratelimit-test"


pytestmark = pytest.mark.usefixtures("fast_backoff")  # retries in milliseconds (tests/conftest.py)


@pytest.fixture
def gate_events():
    seen = []

    def listener(**e):
        seen.append(e)

    events.subscribe("llm_rate_limit_gate", listener)
    yield seen
    events.unsubscribe("llm_rate_limit_gate", listener)


def simple_agent(db):
    return one(db, "SELECT agent_id FROM agent_versions WHERE self_critique_instructions IS NULL ORDER BY name LIMIT 1")


def a_job(seeded, db):
    return enqueue_evaluation(next(iter(seeded.documents.values())), simple_agent(db))


def requests_of(sim, job_id):
    return sorted((r for r in sim.requests() if r["job_id"] == job_id), key=lambda r: r["seq"])


def attempts_of(db, job_id):
    return rows(
        db, "SELECT outcome, error_class, delay_reason FROM job_attempts WHERE job_id = %s ORDER BY attempt", job_id
    )


RESERVE_SCRIPT = """
import json, os, sys, threading
from roastq.llm import ratelimit
from roastq.settings import get_settings
settings = get_settings().replace(llm_rpm_limit=600, llm_rate_headroom=1.0, llm_rate_max_wait_s=60)
out, lock = [], threading.Lock()
def work():
    for _ in range(4):
        r = ratelimit.acquire(settings, sys.argv[1], 1)
        with lock:
            out.append(r.start_at.isoformat())
threads = [threading.Thread(target=work) for _ in range(3)]
[t.start() for t in threads]
[t.join() for t in threads]
print(json.dumps({"pid": os.getpid(), "starts": out}))
"""


def test_processes_share_one_schedule(db):
    """Two processes, three threads each, 600 requests a minute between them: every booked start,
    whichever process booked it, is at least 0.1 s after the one before."""
    procs = [
        subprocess.Popen([sys.executable, "-c", RESERVE_SCRIPT, MODEL], stdout=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    starts = sorted(datetime.fromisoformat(s) for r in results for s in r["starts"])
    assert len(starts) == 24 and len({r["pid"] for r in results}) == 2
    gaps = [(b - a).total_seconds() for a, b in zip(starts, starts[1:])]
    assert min(gaps) >= 0.1 - 1e-6
    assert (starts[-1] - starts[0]).total_seconds() == pytest.approx(2.3, abs=0.01)  # no slot skipped either


def test_tokens_are_booked_and_settled(db):
    """Input tokens are booked from the estimate and corrected with the real count; output tokens
    are charged when the answer tells them."""
    settings = get_settings().replace(llm_input_tpm_limit=60_000, llm_output_tpm_limit=60_000, llm_rate_headroom=1.0)
    first = ratelimit.acquire(settings, MODEL, 500)  # 1,000 tokens a second: 0.5 s of input
    second = ratelimit.acquire(settings, MODEL, 500)
    assert (second.start_at - first.start_at).total_seconds() == pytest.approx(0.5, abs=0.001)
    assert second.reason == "input_tokens"
    # The first call really used 1,000 input tokens and wrote 600: 0.5 s more input, 0.6 s of output.
    ratelimit.settle(settings, MODEL, input_estimate=500, input_tokens=1000, output_tokens=600)
    third = ratelimit.acquire(settings, MODEL, 1)
    assert (third.start_at - second.start_at).total_seconds() == pytest.approx(1.0, abs=0.001)


def test_a_long_wait_is_not_booked(db):
    settings = get_settings().replace(llm_rpm_limit=6, llm_rate_headroom=1.0, llm_rate_max_wait_s=5)
    ratelimit.acquire(settings, MODEL, 1)  # the next slot is 10 s away: more than 5 s
    with pytest.raises(ratelimit.Snooze) as raised:
        ratelimit.acquire(settings, MODEL, 1, sleep=lambda s: None)
    assert raised.value.reason == "rate_limit" and 9 < raised.value.delay_s < 12.5
    # Nothing was booked by the refusal: the next slot is still 10 s after the first.
    ok = ratelimit.acquire(settings.replace(llm_rate_max_wait_s=60), MODEL, 1, sleep=lambda s: None)
    assert 9 < ok.wait_s <= 10


def test_a_429_closes_the_gate_for_everyone_until_its_retry_after(db, seeded, worker, sim, gate_events):
    sim.configure(retry_after_s=2.0)
    sim.script("rate_limit")
    first = a_job(seeded, db)
    wait_until(lambda: any(r["status"] == 429 for r in requests_of(sim, first)), what="the 429")
    limited_at = requests_of(sim, first)[0]["time"]
    second = a_job(seeded, db)
    assert wait_for_status(db, [first, second], timeout=30) == {first: "COMPLETED", second: "COMPLETED"}
    # The second job waited at the gate, in its thread: its one request came after the reset,
    # and waiting was not a failure.
    (request,) = requests_of(sim, second)
    assert request["time"] >= limited_at + 2.0
    assert [a[0] for a in attempts_of(db, second)] == ["completed"]
    assert attempts_of(db, first)[0][:2] == ("retried", "RATE_LIMITED")
    assert gate_events[0]["model"] == get_settings().analysis_model and gate_events[0]["reason"] == "429"
    assert 2.0 <= gate_events[0]["closed_for_s"] < 2.2


def test_a_wait_longer_than_the_thread_should_block_snoozes_without_using_an_attempt(
    db, seeded, worker, sim, llm_settings
):
    llm_settings(llm_rate_max_wait_s=0.5)
    sim.configure(retry_after_s=3.0)
    sim.script("rate_limit")
    first = a_job(seeded, db)
    wait_until(lambda: any(r["status"] == 429 for r in requests_of(sim, first)), what="the 429")
    limited_at = requests_of(sim, first)[0]["time"]
    second = a_job(seeded, db)
    assert wait_for_status(db, [second], timeout=30)[second] == "COMPLETED"
    assert attempts_of(db, second) == [("snoozed", "SNOOZED", "rate_limit"), ("completed", None, None)]
    (request,) = requests_of(sim, second)
    assert request["time"] >= limited_at + 3.0
    message = one(
        db, "SELECT message FROM dramatiq.queue WHERE message_id = (SELECT message_id FROM jobs WHERE id = %s)", second
    )
    options = (message if isinstance(message, dict) else json.loads(message))["options"]
    assert options.get("retries", 0) == 0 and options.get("waits", 0) == 0  # no attempt, no 429-wait used


def test_limits_are_learned_from_the_headers(db, seeded, worker, sim):
    sim.configure(rpm_limit=30)
    job_id = a_job(seeded, db)
    wait_for_status(db, [job_id])
    learned = {r["model"]: r for r in ratelimit.state()}[get_settings().analysis_model]
    assert (learned["learned_rpm"], learned["learned_input_tpm"], learned["learned_output_tpm"]) == (
        30,
        2_000_000,
        400_000,
    )
    # From now on requests are paced at 95% of the learned limit: one per 60 / 28.5 s.
    model = get_settings().analysis_model
    first = ratelimit.acquire(get_settings(), model, 1, sleep=lambda s: None)
    second = ratelimit.acquire(get_settings(), model, 1, sleep=lambda s: None)
    assert second.reason == "requests"
    assert (second.start_at - first.start_at).total_seconds() == pytest.approx(60 / 28.5, abs=0.001)


def test_a_response_with_nothing_left_closes_the_gate_without_a_429(db, seeded, worker, sim, llm_settings, gate_events):
    llm_settings(llm_rate_limits_from_headers=False)  # no pacing: the headers alone must stop us
    sim.configure(rpm_limit=1)
    first = a_job(seeded, db)
    assert wait_for_status(db, [first])[first] == "COMPLETED"
    second = a_job(seeded, db)
    wait_until(lambda: attempts_of(db, second)[:1] == [("snoozed", "SNOOZED", "rate_limit")], what="the snooze")
    status, next_at = one(db, "SELECT status, next_attempt_at FROM jobs WHERE id = %s", second)
    assert status == "PENDING" and next_at > datetime.now(UTC) + timedelta(seconds=45)
    assert [r["status"] for r in sim.requests()] == [200]  # no 429: the second never went
    assert gate_events[0]["reason"] == "requests exhausted" and gate_events[0]["closed_for_s"] > 55


def test_a_spend_limit_429_does_not_close_the_gate(db, seeded, worker, sim):
    sim.script("spend_limit")
    job_id = a_job(seeded, db)
    assert wait_for_status(db, [job_id])[job_id] == "FAILED"
    assert one(db, "SELECT gate_until FROM llm_rate_limits") is None  # waiting would not lift it


@pytest.mark.parametrize(
    "headers,status,expected",
    [
        ({"retry-after": "7", "retry-after-ms": "6500"}, 429, (6.55, "429")),
        ({"retry-after": "3"}, 429, (3.05, "429")),
        ({"anthropic-ratelimit-requests-remaining": "5"}, 200, (None, None)),
        ({}, 429, (None, None)),
    ],
)
def test_gate_delay_from_headers(headers, status, expected):
    assert ratelimit.gate_delay(headers, status) == (pytest.approx(expected[0]) if expected[0] else None, expected[1])


def test_gate_delay_from_an_exhausted_limit_uses_its_reset_time():
    reset = (datetime.now(UTC) + timedelta(seconds=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    delay, reason = ratelimit.gate_delay(
        {"anthropic-ratelimit-input-tokens-remaining": "0", "anthropic-ratelimit-input-tokens-reset": reset}, 200
    )
    assert reason == "input-tokens exhausted" and 9 <= delay <= 11.01


def test_two_worker_processes_share_one_request_rate(db, seeded, sim):
    """Real `dramatiq actors` processes, 120 requests a minute between them: the simulator sees
    the requests spaced by half a second, not two processes each at full speed."""
    workers = start_workers(
        processes=2,
        threads=4,
        ANTHROPIC_BASE_URL=sim.url,
        LLM_RPM_LIMIT=120,
        LLM_RATE_HEADROOM=1.0,
        LLM_CACHE_ENABLED=0,
    )
    try:
        job_ids = [a_job(seeded, db) for _ in range(10)]
        assert set(wait_for_status(db, job_ids, timeout=60).values()) == {"COMPLETED"}
    finally:
        kill_group(workers, 9)
        workers.wait()
    times = sorted(r["time"] for r in sim.requests())
    assert len(times) == 10
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert min(gaps) > 0.35  # 0.5 s booked apart, less the jitter of waking threads and of HTTP
    assert times[-1] - times[0] >= 9 * 0.5 - 0.1
