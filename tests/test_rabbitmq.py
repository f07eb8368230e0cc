"""The RabbitMQ broker (BROKER_URL=amqp://...): what differs from the Postgres broker. Runs in the
RabbitMQ pass; the broker-independent tests (evaluation, failures, enqueue) run there too."""

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
from helpers import one, running_worker, wait_for_status, wait_until

from roastq.api import enqueue_evaluation, enqueue_evaluations

pytestmark = pytest.mark.rabbitmq


def _pair(seeded):
    return next(iter(seeded.documents.values())), next(iter(seeded.agents.values()))


def test_the_same_middleware_runs_on_rabbitmq(broker):
    from dramatiq.brokers.rabbitmq import RabbitmqBroker
    from periodiq import PeriodiqMiddleware

    from middleware.heartbeat import Heartbeat
    from middleware.jobs import JobState
    from middleware.logs import JobLogs
    from middleware.metrics import Metrics
    from middleware.pause import SystemPause
    from middleware.retries import Retries
    from middleware.sentry import Sentry

    assert isinstance(broker, RabbitmqBroker)
    names = [type(m).__name__ for m in broker.middleware]
    ours = [Retries, Sentry, JobLogs, SystemPause, JobState, Metrics, Heartbeat, PeriodiqMiddleware]
    assert [n for n in names if n in {c.__name__ for c in ours}] == [
        "Retries",
        "Sentry",
        "JobLogs",
        "SystemPause",
        "JobState",
        "Metrics",
        "Heartbeat",
        "PeriodiqMiddleware",
    ]


def test_every_message_is_really_acknowledged(db, seeded, broker, sim):
    """The job's result transaction marks nothing in RabbitMQ: the ack must reach RabbitMQ, or the
    messages would come back when the worker's connection closes."""
    job_ids = enqueue_evaluations([_pair(seeded)] * 6, priority="batch")
    with running_worker(broker, threads=4):
        assert set(wait_for_status(db, job_ids).values()) == {"COMPLETED"}
    # The worker has stopped and its connections are closed: an unacknowledged message would be
    # ready again now.
    for queue in ("batch", "interactive"):
        assert broker.queue_counts(queue) == {"queued": 0, "delayed": 0, "dead": 0}
    assert one(db, "SELECT count(*) FROM job_attempts WHERE outcome = 'completed'") == 6


def test_a_job_delivered_twice_yields_one_evaluation_version(db, seeded, broker, sim, monkeypatch):
    from actors import evaluate_document
    from roastq.settings import reload_settings

    # A delivery that finds the first attempt running backs off for three heartbeats (issue 13):
    # short beats, so that it comes back, finds the job finished and is skipped within the test.
    monkeypatch.setenv("HEARTBEAT_INTERVAL_S", "1")
    reload_settings()

    job_id = enqueue_evaluation(*_pair(seeded))
    broker.relay().drain()
    evaluate_document.send(job_id)  # a second message, published straight to RabbitMQ
    assert broker.queue_counts("interactive")["queued"] == 2
    with running_worker(broker, threads=2) as worker:
        wait_for_status(db, [job_id])
        wait_until(  # a delayed message the worker holds is not in RabbitMQ's counts: its delay queue too
            lambda: (
                broker.queue_counts("interactive") == {"queued": 0, "delayed": 0, "dead": 0}
                and not any(c.delay_queue.unfinished_tasks for c in worker.consumers.values())
            ),
            timeout=30,
            what="both deliveries taken (one of them after backing off)",
        )
    assert one(db, "SELECT count(*) FROM evaluation_versions WHERE job_id = %s", job_id) == 1
    assert one(db, "SELECT status FROM jobs WHERE id = %s", job_id) == "COMPLETED"
    assert broker.queue_counts("interactive") == {"queued": 0, "delayed": 0, "dead": 0}


def test_a_retry_waits_in_rabbitmqs_delay_queue(db, seeded, broker, sim, fast_backoff):
    sim.script("overloaded")
    job_id = enqueue_evaluation(*_pair(seeded))
    with running_worker(broker, threads=2):
        assert wait_for_status(db, [job_id])[job_id] == "COMPLETED"
    assert one(db, "SELECT array_agg(outcome ORDER BY attempt) FROM job_attempts WHERE job_id = %s", job_id) == [
        "retried",
        "completed",
    ]


def test_status_reads_queue_depth_from_rabbitmq_and_shows_the_outbox(db, seeded, broker):
    from roastq.cli.admin import status_data

    enqueue_evaluations([_pair(seeded)] * 4, priority="batch")
    data = status_data()
    batch = next(r for r in data["queue_summary"] if r["queue"] == "batch")
    assert data["broker"] == "rabbitmq"
    assert data["outbox"]["unsent"] == 4 and batch["queued"] == 0  # not relayed yet
    broker.relay().drain()
    data = status_data()
    batch = next(r for r in data["queue_summary"] if r["queue"] == "batch")
    assert data["outbox"]["unsent"] == 0 and batch["queued"] == 4
    assert batch["orphaned"] is None and batch["done"] is None  # RabbitMQ has neither


def test_metrics_read_queue_depth_from_rabbitmq(db, seeded, broker):
    from observability.exporter import PostgresCollector

    enqueue_evaluations([_pair(seeded)] * 3, priority="batch")
    broker.relay().drain()
    samples = {
        (s.labels.get("queue"), s.labels.get("state")): s.value
        for family in PostgresCollector().collect()
        if family.name == "roastq_queue_messages"
        for s in family.samples
    }
    assert samples[("batch", "queued")] == 3
    assert samples[("interactive", "queued")] == 0


def test_health_checks_rabbitmq(db):
    from roastq.ops.health import check

    report = check("live")
    rabbit = next(c for c in report.checks if c.name == "rabbitmq")
    assert rabbit.ok and report.ok
    env = dict(os.environ, BROKER_URL="amqp://guest:guest@127.0.0.1:1/", LOG_FORMAT="json")
    done = subprocess.run(
        [sys.executable, "-m", "roastq.cli.main", "health", "--live", "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert not checks["rabbitmq"]["ok"] and checks["database"]["ok"]


def test_reconcile_resends_only_a_lost_message(db, seeded, broker, monkeypatch):
    from roastq import settings
    from roastq.ops import maintenance

    monkeypatch.setenv("RECONCILE_GRACE_S", "60")
    settings.reload_settings()
    lost, waiting = enqueue_evaluations([_pair(seeded)] * 2, priority="batch"), enqueue_evaluation(*_pair(seeded))
    broker.relay().drain()
    broker.flush("batch")  # the batch messages are lost; the interactive one waits in RabbitMQ
    with db.cursor() as cur:
        cur.execute("UPDATE jobs SET updated_at = now() - interval '2 minutes'")
    assert maintenance.reconcile_jobs()["resent"] == 2
    assert one(db, "SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 2
    assert set(one(db, "SELECT array_agg(message->'args'->>0) FROM outbox WHERE sent_at IS NULL")) == set(lost)
    assert maintenance.reconcile_jobs()["resent"] == 0  # their new messages wait in the outbox
    monkeypatch.delenv("RECONCILE_GRACE_S")
    settings.reload_settings()
    assert waiting


def test_reaper_leaves_redelivery_to_rabbitmq(db, seeded, broker):
    from roastq.ops import maintenance

    job_id = enqueue_evaluation(*_pair(seeded))
    broker.relay().drain()
    long_ago = datetime.now(UTC) - timedelta(minutes=5)
    with db.cursor() as cur:  # a worker took it and died
        cur.execute(
            "UPDATE jobs SET status = 'RUNNING', attempts = 1, worker_id = 'gone:1', started_at = %s WHERE id = %s",
            (long_ago, job_id),
        )
        cur.execute("INSERT INTO job_attempts (job_id, attempt) VALUES (%s, 1)", (job_id,))
    assert maintenance.reap_stale_jobs()["requeued"] == 1
    assert one(db, "SELECT status, error_class FROM jobs WHERE id = %s", job_id) == ("PENDING", "WORKER_LOST")
    assert one(db, "SELECT outcome FROM job_attempts WHERE job_id = %s", job_id) == "crashed"
    assert one(db, "SELECT count(*) FROM outbox") == 1  # no second message: RabbitMQ redelivers the first
