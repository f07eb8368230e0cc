"""Metrics: what jobs, LLM calls, queues and workers export, read back as an exporter serves it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from decimal import Decimal

import pytest
from helpers import one, running_worker, wait_for_status, wait_until
from promtext import families, local, value

from roastq.api import enqueue_evaluation

UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ALLOWED_LABELS = {
    "queue",
    "actor",
    "error_class",
    "outcome",
    "delayed",
    "model",
    "step",
    "kind",
    "state",
    "le",
    "reason",
}


pytestmark = pytest.mark.usefixtures("fast_backoff")  # retries in milliseconds (tests/conftest.py)


def simple_agent(db):
    return one(db, "SELECT agent_id FROM agent_versions WHERE self_critique_instructions IS NULL ORDER BY name LIMIT 1")


def delta(before, after, name, **labels):
    return value(after, name, **labels) - value(before, name, **labels)


def test_job_outcomes_llm_calls_tokens_and_dollars_are_counted(db, seeded, worker, sim):
    from roastq.llm.pricing import Usage, cost_usd

    agent, docs = simple_agent(db), list(seeded.documents.values())
    before = local()
    # One job each: completes; retried once (UPSTREAM); fails (INVALID_REQUEST); waits on a 429.
    for doc, faults, status in zip(
        docs,
        (["ok"], ["server_error"], ["invalid_request"], ["rate_limit"]),
        ("COMPLETED", "COMPLETED", "FAILED", "COMPLETED"),
    ):
        sim.script(*faults)
        job = enqueue_evaluation(doc, agent)
        assert wait_for_status(db, [job], timeout=30)[job] == status
    after = local()
    q = {"queue": "interactive", "actor": "evaluate_document"}
    assert delta(before, after, "roastq_messages_enqueued_total", delayed="false", **q) == 4
    assert delta(before, after, "roastq_messages_enqueued_total", delayed="true", **q) == 2  # the retries
    assert delta(before, after, "roastq_messages_started_total", **q) == 6
    assert delta(before, after, "roastq_messages_succeeded_total", **q) == 3
    assert delta(before, after, "roastq_messages_failed_total", error_class="INVALID_REQUEST", **q) == 1
    assert delta(before, after, "roastq_messages_failed_total", **q) == 1
    assert delta(before, after, "roastq_messages_retried_total", error_class="UPSTREAM", **q) == 1
    assert delta(before, after, "roastq_messages_retried_total", error_class="RATE_LIMITED", **q) == 1
    for outcome, n in (("succeeded", 3), ("failed", 1), ("retried", 2)):
        assert delta(before, after, "roastq_job_duration_seconds_count", outcome=outcome, **q) == n
    assert value(after, "roastq_messages_in_progress", **q) == 0

    model = sim.requests()[0]["model"]
    llm = {"model": model, "step": "analysis"}
    sent_ok = delta(before, after, "roastq_llm_requests_total", outcome="ok", **llm)
    assert sent_ok + delta(before, after, "roastq_llm_requests_total", outcome="cached", **llm) == 3
    for outcome in ("UPSTREAM", "INVALID_REQUEST", "RATE_LIMITED"):
        assert delta(before, after, "roastq_llm_requests_total", outcome=outcome, **llm) == 1
    assert delta(before, after, "roastq_llm_request_duration_seconds_count", **llm) == sent_ok + 3
    # Tokens and dollars: exactly what the API (the simulator) billed for.
    served = [r for r in sim.requests() if r["status"] == 200]
    for kind, field in (
        ("input", "input_tokens"),
        ("output", "output_tokens"),
        ("cache_read", "cache_read_input_tokens"),
        ("cache_write", "cache_creation_input_tokens"),
    ):
        assert delta(before, after, "roastq_llm_tokens_total", model=model, kind=kind) == sum(r[field] for r in served)
    dollars = sum(
        (
            cost_usd(
                model,
                Usage(
                    r["input_tokens"],
                    r["output_tokens"],
                    r["cache_read_input_tokens"],
                    r["cache_creation_input_tokens"],
                ),
            )
            for r in served
        ),
        Decimal(0),
    )
    assert dollars > 0
    assert delta(before, after, "roastq_llm_cost_dollars_total", model=model) == pytest.approx(float(dollars), abs=1e-9)


def test_running_attempts_are_in_progress(db, seeded, worker, sim):
    sim.configure(latency_ms=1500, jitter_ms=0)
    q = {"queue": "interactive", "actor": "evaluate_document"}
    job = enqueue_evaluation(next(iter(seeded.documents.values())), simple_agent(db))
    wait_until(lambda: value(local(), "roastq_messages_in_progress", **q) == 1, timeout=10, what="in progress 1")
    assert wait_for_status(db, [job])[job] == "COMPLETED"
    assert value(local(), "roastq_messages_in_progress", **q) == 0


def test_a_retry_wait_is_a_delayed_message_counted_once(db, seeded, worker, sim):
    sim.configure(retry_after_s=8.0)  # long enough to read the delayed message back from Postgres under load
    sim.script("rate_limit")
    q = {"queue": "interactive", "actor": "evaluate_document"}
    before = local()
    job = enqueue_evaluation(next(iter(seeded.documents.values())), simple_agent(db))
    wait_until(lambda: value(local(), "roastq_messages_delayed", **q) == 1, timeout=10, what="delayed in a worker")
    now = local()
    assert value(now, "roastq_queue_messages", queue="interactive", state="delayed") == 1  # from Postgres
    assert value(now, "roastq_queue_delayed_messages", queue="interactive") == 1
    assert wait_for_status(db, [job], timeout=30)[job] == "COMPLETED"
    # The delay queue's message is acknowledged by the worker's consumer thread after it moved the
    # message back, and may commit a moment after the job itself: both read 0 once it has.
    wait_until(
        lambda: (
            value(local(), "roastq_messages_delayed", **q) == 0
            and value(local(), "roastq_queue_messages", queue="interactive", state="delayed") == 0
        ),
        timeout=10,
        what="the delayed message gone from the worker and from Postgres",
    )
    after = local()
    # Sent once, re-sent once with a delay; the worker moving it back from the delay queue is no send.
    assert delta(before, after, "roastq_messages_enqueued_total", delayed="false", **q) == 1
    assert delta(before, after, "roastq_messages_enqueued_total", delayed="true", **q) == 1


def test_queue_depth_and_oldest_age_come_from_postgres(db, seeded):
    agent, doc = simple_agent(db), next(iter(seeded.documents.values()))
    for _ in range(3):
        enqueue_evaluation(doc, agent)
    enqueue_evaluation(doc, agent, priority="batch")
    time.sleep(1.1)
    now = local()
    assert value(now, "roastq_queue_messages", queue="interactive", state="queued") == 3
    assert value(now, "roastq_queue_messages", queue="batch", state="queued") == 1
    assert value(now, "roastq_queue_oldest_message_age_seconds", queue="interactive", state="queued") >= 1.0
    for queue in ("interactive", "batch"):  # every queue and state has a series, 0 when empty
        for state in ("consumed", "delayed", "rejected"):
            assert value(now, "roastq_queue_messages", queue=queue, state=state) == 0
            assert ("roastq_queue_messages", frozenset({("queue", queue), ("state", state)})) in now
    assert value(now, "roastq_metrics_postgres_up") == 1


def test_worker_liveness_comes_from_the_heartbeat_table(db, worker):
    wait_until(lambda: one(db, "SELECT count(*) FROM worker_heartbeats") == 1, timeout=10, what="a heartbeat")
    with db.cursor() as cur:  # a worker that died an hour ago, its row not yet reaped
        cur.execute(
            "INSERT INTO worker_heartbeats (worker_id, hostname, pid, threads, last_seen_at) "
            "VALUES ('gone:1', 'gone', 1, 16, now() - interval '1 hour')"
        )
    now = local()
    assert value(now, "roastq_workers_alive") == 1
    assert value(now, "roastq_worker_threads_alive") == 4
    assert value(now, "roastq_worker_heartbeat_age_seconds") >= 3600


def test_names_follow_prometheus_conventions_and_no_label_is_an_id(db, seeded, worker, sim):
    sim.script("server_error")
    job = enqueue_evaluation(next(iter(seeded.documents.values())), simple_agent(db))
    wait_for_status(db, [job])
    from observability.exporter import build_registry, render

    found = families(render(build_registry()).decode())
    names = {f.name for f in found}
    assert names >= {
        "roastq_messages_enqueued",
        "roastq_messages_started",
        "roastq_messages_succeeded",
        "roastq_messages_failed",
        "roastq_messages_retried",
        "roastq_job_duration_seconds",
        "roastq_messages_in_progress",
        "roastq_messages_delayed",
        "roastq_queue_messages",
        "roastq_queue_oldest_message_age_seconds",
        "roastq_queue_delayed_messages",
        "roastq_llm_requests",
        "roastq_llm_request_duration_seconds",
        "roastq_llm_tokens",
        "roastq_llm_cost_dollars",
        "roastq_workers_alive",
        "roastq_worker_heartbeat_age_seconds",
        "roastq_llm_budget_spent_dollars",
        "roastq_llm_budget_cap_dollars",
    }
    for family in found:
        assert family.name.startswith("roastq_"), family.name  # nothing of dramatiq's own middleware
        assert not re.search(r"_(milliseconds|ms|minutes|hours|percent)\b", family.name)
        for s in family.samples:
            if family.type == "counter":
                assert s.name.endswith(("_total", "_created")), s.name
            else:
                assert not s.name.endswith("_total"), s.name
            assert set(s.labels) <= ALLOWED_LABELS, (s.name, s.labels)
            assert not [v for v in s.labels.values() if UUID.search(v)], (s.name, s.labels)
    buckets = {
        float(s.labels["le"])
        for f in found
        if f.name == "roastq_job_duration_seconds"
        for s in f.samples
        if s.name.endswith("_bucket")
    }
    assert min(buckets) == 1 and max(b for b in buckets if b != float("inf")) == 1200


def test_every_metric_has_labels_so_none_writes_its_file_before_the_boot_clean_up():
    """A metric without labels gets its value (its process's file) at import, before a worker's
    clean_at_boot removes that process's own files: its counters would then go to a deleted file."""
    from observability import metrics as m

    found = [c for c in m.setup_metrics().values() if hasattr(c, "_labelnames") and hasattr(c, "_type")]
    assert len(found) >= 20
    assert [c._name for c in found if not c._labelnames] == []


def test_our_middleware_replaces_dramatiqs_prometheus_and_declares_one_exporter(broker):
    from dramatiq.middleware import Prometheus

    from middleware.metrics import Metrics
    from observability.exporter import run_exporter

    assert not [m for m in broker.middleware if isinstance(m, Prometheus)]
    ours = [m for m in broker.middleware if isinstance(m, Metrics)]
    assert len(ours) == 1 and ours[0].forks == [run_exporter]
    assert [f for m in broker.middleware for f in m.forks] == [run_exporter]


def _dead_process(metrics_dir: str) -> int:
    """A process that records metrics and dies without cleaning up (like a SIGKILLed worker)."""
    code = (
        "import os\n"
        "from observability import metrics as m\n"
        "m.IN_PROGRESS.labels('interactive', 'test_dead').inc()\n"
        "m.STARTED.labels('interactive', 'test_dead').inc()\n"
        "print(os.getpid(), flush=True)\n"
        "os._exit(0)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=dict(os.environ, PROMETHEUS_MULTIPROC_DIR=metrics_dir),
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


def test_a_dead_process_leaves_no_live_gauge_and_its_files_go_at_the_next_boot(database_url):
    from observability.metrics import multiprocess_dir

    METRICS_DIR = multiprocess_dir()
    before = value(local(), "roastq_messages_started_total", actor="test_dead")
    pid = _dead_process(str(METRICS_DIR))
    assert (METRICS_DIR / f"gauge_livesum_{pid}.db").exists() and (METRICS_DIR / f"counter_{pid}.db").exists()
    now = local()  # a scrape prunes it
    assert value(now, "roastq_messages_in_progress", actor="test_dead") == 0
    assert not (METRICS_DIR / f"gauge_livesum_{pid}.db").exists()
    assert value(now, "roastq_messages_started_total", actor="test_dead") == before + 1  # totals kept in a run
    mine = sorted(p.name for p in METRICS_DIR.glob(f"*_{os.getpid()}.db"))
    assert mine  # this (live) process has files of its own
    # A worker process booting removes every file of a process that is not running.
    code = "from observability.metrics import clean_at_boot; print(clean_at_boot())"
    out = subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ), capture_output=True, text=True, check=True
    ).stdout
    assert str(pid) in out
    assert not list(METRICS_DIR.glob(f"*_{pid}.db"))
    assert sorted(p.name for p in METRICS_DIR.glob(f"*_{os.getpid()}.db")) == mine  # live ones kept


def test_a_call_answered_from_the_response_cache_is_counted_but_not_billed(db, seeded, worker, sim):
    from roastq.llm import client as llm

    claude = llm.default_claude()
    saved = claude.settings
    claude.settings = saved.replace(llm_cache_enabled=True)
    try:
        agent, doc = simple_agent(db), next(iter(seeded.documents.values()))
        first = enqueue_evaluation(doc, agent)
        assert wait_for_status(db, [first])[first] == "COMPLETED"
        before, billed = local(), sim.stats()["requests"]
        second = enqueue_evaluation(doc, agent)  # the same prompt: answered from the cache
        assert wait_for_status(db, [second])[second] == "COMPLETED"
        after = local()
    finally:
        claude.settings = saved
    assert sim.stats()["requests"] == billed  # nothing sent
    model = saved.analysis_model
    assert delta(before, after, "roastq_llm_requests_total", outcome="cached", model=model) == 1
    assert delta(before, after, "roastq_llm_requests_total", outcome="ok", model=model) == 0
    assert delta(before, after, "roastq_llm_tokens_total", model=model) == 0
    assert delta(before, after, "roastq_llm_cost_dollars_total", model=model) == 0
    assert delta(before, after, "roastq_llm_request_duration_seconds_count", model=model) == 0


def test_a_job_the_reaper_fails_is_counted_as_a_failure(db, seeded):
    """The stale-job reaper fails a job whose workers keep dying outside any message: no middleware
    sees it, so it reports it (event ``job_failed``) and the failure ratio and dashboards count it."""
    from test_scheduler_tasks import running_on_a_dead_worker

    from roastq.ops import maintenance

    job_id = enqueue_evaluation(next(iter(seeded.documents.values())), simple_agent(db))
    running_on_a_dead_worker(db, job_id, crashes=2)  # JOB_CRASH_LIMIT is 3: this is the third
    q = {"queue": "interactive", "actor": "evaluate_document"}
    before = local()
    assert maintenance.reap_stale_jobs()["failed"] == 1
    after = local()
    assert one(db, "SELECT status, error_class FROM jobs WHERE id = %s", job_id) == ("FAILED", "WORKER_LOST")
    assert delta(before, after, "roastq_messages_failed_total", error_class="WORKER_LOST", **q) == 1
    assert delta(before, after, "roastq_messages_failed_total") == 1
    # A job only requeued by the reaper is no failure.
    again = enqueue_evaluation(next(iter(seeded.documents.values())), simple_agent(db))
    running_on_a_dead_worker(db, again)
    assert maintenance.reap_stale_jobs()["requeued"] == 1
    assert delta(after, local(), "roastq_messages_failed_total") == 0


def test_a_job_failed_as_lost_when_its_message_comes_back_is_counted_as_worker_lost(db, seeded, sim, broker):
    """The other way a job is lost: its message is delivered again after JOB_CRASH_LIMIT crashes."""
    job_id = enqueue_evaluation(next(iter(seeded.documents.values())), simple_agent(db))
    with db.cursor() as cur:  # three workers died mid-job: two attempts closed, one still open
        cur.execute("UPDATE jobs SET status = 'RUNNING', attempts = 3, worker_id = 'gone:1' WHERE id = %s", (job_id,))
        cur.execute(
            "INSERT INTO job_attempts (job_id, attempt, outcome, ended_at) VALUES "
            "(%s, 1, 'crashed', now()), (%s, 2, 'crashed', now())",
            (job_id, job_id),
        )
        cur.execute("INSERT INTO job_attempts (job_id, attempt) VALUES (%s, 3)", (job_id,))
    before = local()
    with running_worker(broker, threads=2):  # started once the job looks like that
        assert wait_for_status(db, [job_id])[job_id] == "FAILED"
    after = local()
    q = {"queue": "interactive", "actor": "evaluate_document"}
    assert delta(before, after, "roastq_messages_failed_total", error_class="WORKER_LOST", **q) == 1
    assert delta(before, after, "roastq_messages_failed_total", error_class="INPUT") == 0


def test_a_stopped_in_process_worker_holds_no_delayed_message(db, seeded, broker, sim):
    """A worker embedded in a process that lives on (tests, benchmarks) hands its delay queue
    back when it stops: the delayed gauge of that process goes back down (it stayed up, and the
    next worker's tests read a message that no one held)."""
    from helpers import running_worker

    sim.configure(retry_after_s=30.0)
    sim.script("rate_limit")
    q = {"queue": "interactive", "actor": "evaluate_document"}
    start = value(local(), "roastq_messages_delayed", **q)
    with running_worker(broker, threads=2):
        enqueue_evaluation(next(iter(seeded.documents.values())), simple_agent(db))
        wait_until(lambda: value(local(), "roastq_messages_delayed", **q) == start + 1, timeout=10, what="delayed")
    assert value(local(), "roastq_messages_delayed", **q) == start
