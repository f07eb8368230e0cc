"""Sentry: real envelopes from sentry-sdk, received on a local port, for jobs run by real workers."""

from __future__ import annotations

import json
import logging
import re
import signal
from pathlib import Path

import pytest
from helpers import one, start_workers, wait_for_status, wait_until
from sentry_receiver import SentryReceiver

from roastq.api import enqueue_evaluation

ROOT = Path(__file__).resolve().parent.parent
DSN_KEY = "0123456789abcdef0123456789abcdef"
TAGS = ("actor", "queue", "error_class", "agent_id", "attempt")


pytestmark = pytest.mark.usefixtures("fast_backoff")  # retries in milliseconds (tests/conftest.py)
BACKOFF_SCALE = "0.002"


@pytest.fixture
def sentry_rx():
    """sentry-sdk in this process, sending to a receiver on a free local port."""
    from observability.sentry import setup_sentry, shutdown_sentry

    rx = SentryReceiver().start()
    assert setup_sentry(dsn=rx.dsn(DSN_KEY))
    yield rx
    shutdown_sentry()
    rx.stop()


def simple_agent(db):
    """An agent without self-critique: one LLM call an attempt."""
    return one(db, "SELECT agent_id FROM agent_versions WHERE self_critique_instructions IS NULL ORDER BY name LIMIT 1")


def run_job(db, seeded, sim, faults, *, priority="interactive", expect="FAILED"):
    """Script the simulator's next answers, run one job to the end; return its id."""
    if faults:
        sim.script(*faults)
    job_id = enqueue_evaluation(next(iter(seeded.documents.values())), simple_agent(db), priority=priority)
    assert wait_for_status(db, [job_id], timeout=30)[job_id] == expect
    return job_id


def flushed_events(rx, n=0):
    import sentry_sdk

    sentry_sdk.flush(5)
    return rx.wait_for_events(n, timeout=5) if n else rx.events()


def test_a_job_retried_until_it_fails_is_one_event_with_its_attempts_as_breadcrumbs(db, seeded, worker, sim, sentry_rx):
    job_id = run_job(db, seeded, sim, ["server_error"] * 5)  # UPSTREAM: 5 attempts, then FAILED
    assert one(db, "SELECT attempts FROM jobs WHERE id = %s", job_id) == 5
    events = flushed_events(sentry_rx, 1)
    assert len(events) == 1, [e.get("tags") for e in events]
    event = events[0]
    tags = event["tags"]
    assert {k: tags[k] for k in ("actor", "queue", "error_class", "attempt")} == {
        "actor": "evaluate_document",
        "queue": "interactive",
        "error_class": "UPSTREAM",
        "attempt": "5",
    }
    assert tags["agent_id"] == str(simple_agent(db))
    assert event["fingerprint"] == ["roastq", "evaluate_document", "UPSTREAM"]
    assert event["level"] == "error"
    assert event["contexts"]["job"]["job_id"] == job_id
    assert event["exception"]["values"][-1]["type"] == "InternalServerError"
    assert event["release"].startswith("roastq@") and event["environment"] == "development"
    crumbs = [c for c in event["breadcrumbs"]["values"] if c.get("category") == "job.attempt"]
    assert [c["data"]["attempt"] for c in crumbs] == [1, 2, 3, 4]
    assert all(c["data"]["outcome"] == "retried" and c["data"]["error_class"] == "UPSTREAM" for c in crumbs)


def test_a_retried_job_that_completes_sends_no_event(db, seeded, worker, sim, sentry_rx):
    run_job(db, seeded, sim, ["server_error", "overloaded"], expect="COMPLETED")
    assert flushed_events(sentry_rx) == []


@pytest.mark.parametrize("fault,error_class", [("auth", "AUTH"), ("spend_limit", "SPEND_LIMIT")])
def test_auth_and_spend_limit_failures_are_fatal(db, seeded, worker, sim, sentry_rx, fault, error_class):
    run_job(db, seeded, sim, [fault])
    [event] = flushed_events(sentry_rx, 1)
    assert (event["level"], event["tags"]["error_class"], event["tags"]["attempt"]) == ("fatal", error_class, "1")


def test_events_carry_no_api_key_dsn_password_or_document_text(db, seeded, worker, sim, sentry_rx, monkeypatch):
    from observability.sentry import setup_sentry
    from roastq import events, settings
    from roastq.llm import client as llm

    api_key = "sk-ant-api03-" + "Zx9" * 12
    monkeypatch.setenv("ANTHROPIC_API_KEY", api_key)
    settings.reload_settings()
    llm._default = None  # a client with the key (the simulator accepts any)
    setup_sentry(dsn=sentry_rx.dsn(DSN_KEY))
    dsn = sentry_rx.dsn(DSN_KEY)
    leak = logging.getLogger("some.library")

    def leaky_listener(**_):  # a library logging what it should not: it becomes a breadcrumb
        leak.warning("calling with api_key=%s via %s, db postgresql://roastq:s3cret-pw@db:5432/roastq", api_key, dsn)

    events.subscribe("llm_call", leaky_listener)
    try:
        job_id = run_job(db, seeded, sim, ["invalid_request"])
    finally:
        events.unsubscribe("llm_call", leaky_listener)
        monkeypatch.delenv("ANTHROPIC_API_KEY")
        settings.reload_settings()
        llm._default = None
    [event] = flushed_events(sentry_rx, 1)
    raw = sentry_rx.raw().decode()
    for secret in (api_key, DSN_KEY, "s3cret-pw", dsn):
        assert secret not in raw
    leaked = [c for c in event["breadcrumbs"]["values"] if c.get("category") == "some.library"]
    assert leaked and "***" in leaked[0]["message"]  # the line arrived, scrubbed
    content = one(
        db,
        "SELECT dv.content FROM jobs j JOIN document_versions dv ON dv.id = j.document_version_id WHERE j.id = %s",
        job_id,
    )
    windows = {content[i : i + 40] for i in range(0, max(1, len(content) - 40), 20)}
    assert not [w for w in windows if w in raw], "document text in a Sentry event"
    frames = [f for exc in event["exception"]["values"] for f in exc.get("stacktrace", {}).get("frames", [])]
    assert frames and not [f for f in frames if "vars" in f]
    assert "request" not in event


def _alert_tag_filters() -> list[tuple[str, str, str]]:
    """(key, match, value) for every tag filter of sentry/alerts.json's issue and metric alerts."""
    alerts = json.loads((ROOT / "sentry" / "alerts.json").read_text())
    found = []
    for rule in alerts["issue_alerts"]:
        for f in rule["filters"]:
            if f["id"].endswith("TaggedEventFilter"):
                found.append((f["key"], f["match"], f["value"]))
    for rule in alerts["metric_alerts"]:
        for key, values in re.findall(r"(\w+):(\[[^\]]*\]|\S+)", rule["query"]):
            for value in values.strip("[]").split(","):
                found.append((key, "eq", value.strip()))
    return found


def _matches(tags: dict, key: str, match: str, value: str) -> bool:
    have = tags.get(key)
    return have is not None and {"eq": have == value, "sw": have.startswith(value), "co": value in have}[match]


def test_every_tag_an_alert_filters_on_is_sent(db, seeded, worker, sim, sentry_rx):
    filters = _alert_tag_filters()
    assert {k for k, _, _ in filters} >= {"error_class", "queue", "actor"}
    # One final failure of each class the alerts name, on both queues.
    run_job(db, seeded, sim, ["auth"])
    run_job(db, seeded, sim, ["spend_limit"])
    run_job(db, seeded, sim, ["server_error"] * 5, priority="batch")
    run_job(db, seeded, sim, ["drop"] * 5)
    run_job(db, seeded, sim, ["overloaded"] * 5, priority="batch")
    events = flushed_events(sentry_rx, 5)
    assert len(events) == 5
    for event in events:
        assert set(TAGS) <= set(event["tags"]), event["tags"]
    for key, match, value in filters:
        assert any(_matches(e["tags"], key, match, value) for e in events), (key, match, value)
    fatal = {e["tags"]["error_class"] for e in events if e["level"] == "fatal"}
    assert fatal == {"AUTH", "SPEND_LIMIT"}  # the LevelFilter (50 = fatal) of the two fatal alerts


def test_a_stopping_worker_pool_flushes_its_events(db, seeded, sim):
    rx = SentryReceiver(delay_s=1.0).start()  # a slow Sentry: events queue up in the worker
    try:
        sim.script("auth", "auth", "auth")
        agent, doc = simple_agent(db), next(iter(seeded.documents.values()))
        workers = start_workers(processes=1, threads=3, SENTRY_DSN=rx.dsn(DSN_KEY), ANTHROPIC_BASE_URL=sim.url)
        try:
            jobs = [enqueue_evaluation(doc, agent) for _ in range(3)]
            assert set(wait_for_status(db, jobs, timeout=30).values()) == {"FAILED"}
            workers.send_signal(signal.SIGTERM)  # at once: at most one event can have been sent
            assert workers.wait(30) == 0
        finally:
            if workers.poll() is None:
                workers.kill()
        events = rx.events()
        assert sorted(e["contexts"]["job"]["job_id"] for e in events) == sorted(jobs)
        assert all(e["tags"]["error_class"] == "AUTH" and e["level"] == "fatal" for e in events)
    finally:
        rx.stop()


def test_scrubbing_removes_secrets_locals_and_bodies_from_any_event():
    from observability import sentry as s

    event = {
        "request": {"data": "the whole document"},
        "message": "Authorization: Bearer abc.def.ghi and sk-ant-api03-secretsecret",
        "exception": {
            "values": [
                {
                    "value": "x-api-key: sk-live-123456789",
                    "stacktrace": {"frames": [{"function": "f", "vars": {"content": "doc"}}]},
                }
            ]
        },
        "extra": {"argv": ["dramatiq", "postgresql://u:pw123456@h/db"], "long": "x" * 5000},
    }
    out = s.before_send(event, {})
    text = json.dumps(out)
    for secret in ("abc.def.ghi", "sk-ant-api03-secretsecret", "sk-live-123456789", "pw123456", "the whole document"):
        assert secret not in text
    assert "vars" not in out["exception"]["values"][0]["stacktrace"]["frames"][0]
    assert len(out["extra"]["long"]) <= s.MAX_STRING_CHARS
    crumb = s.before_breadcrumb({"category": "httplib", "data": {"url": "http://h/?q=1"}, "message": "GET"}, {})
    assert "data" not in crumb


def test_a_cancelled_job_sends_nothing_and_a_rejected_message_one_event(db, seeded, worker, sim, sentry_rx):
    import actors
    from roastq.api import cancel_job

    sim.configure(latency_ms=1500, jitter_ms=0)
    job_id = enqueue_evaluation(next(iter(seeded.documents.values())), simple_agent(db))
    wait_until(lambda: one(db, "SELECT status FROM jobs WHERE id = %s", job_id) == "RUNNING", timeout=10)
    cancel_job(job_id)
    assert wait_for_status(db, [job_id], timeout=20)[job_id] == "CANCELLED"
    assert flushed_events(sentry_rx) == []

    message = actors.evaluate_document.send("not-a-job-id")
    wait_until(
        lambda: (
            one(db, "SELECT state::text FROM dramatiq.queue WHERE message_id = %s", message.message_id) == "rejected"
        ),
        timeout=10,
        what="the message rejected",
    )
    [event] = flushed_events(sentry_rx, 1)
    assert (event["tags"]["error_class"], event["tags"]["actor"], event["level"]) == (
        "INPUT",
        "evaluate_document",
        "error",
    )
    assert event["contexts"]["job"]["message_id"] == message.message_id
