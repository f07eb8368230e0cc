"""The one metrics exporter of a worker pool, on ``METRICS_HOST:METRICS_PORT`` (``/metrics``).

It runs as a process of its own that dramatiq's CLI forks next to the workers (the metrics
middleware declares ``run_exporter`` in its ``forks``, as dramatiq's own Prometheus middleware
does), so a pool of any size serves one endpoint. Each scrape:

1. drops the live gauges of worker processes that died without stopping;
2. merges every process's samples from ``PROMETHEUS_MULTIPROC_DIR``;
3. reads Postgres once (``PostgresCollector``): queue depth and oldest-message age by queue and
   state, worker liveness from the heartbeat table, and today's LLM spend against the daily cap
   (``roastq.llm.budget.status``, a second statement on the same connection). These are facts about
   the whole system, so they are read here, once, not counted in each worker process.

``METRICS_PORT=0`` binds a free port (tests); the port in use is logged.
"""

from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from observability.logging import setup_logging
from observability.metrics import enable_multiprocess, multiprocess_dir, prune_dead
from roastq import db
from roastq.db import Q
from roastq.llm import budget
from roastq.queues import JOB_QUEUES as QUEUES
from roastq.settings import get_settings

logger = logging.getLogger("roastq.exporter")

#: dramatiq-pg's message states, plus "delayed" (waiting in a queue's .DQ for its time). Messages
#: in state "done" are history, not depth: they are not counted (a large table on every scrape).
STATES = ("queued", "consumed", "delayed", "rejected")


class PostgresCollector:
    """Queue, worker and LLM budget gauges, read from Postgres on each collect (two statements)."""

    def __init__(self):
        self._conn = None
        self._lock = threading.Lock()

    def _cursor(self):
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(
                connect_timeout=3, application_name="roastq-exporter", options="-c statement_timeout=5000"
            )
            self._conn.autocommit = True
        return self._conn.cursor()

    def _read(self):
        settings = get_settings()
        stale_after_s = 3 * settings.heartbeat_interval_s
        with self._cursor() as cur:
            cur.execute(Q.metrics_snapshot, {"stale_after_s": stale_after_s})
            rows = cur.fetchall()
        spend = budget.status(settings, conn=self._conn)  # the ledger is in Postgres whatever the broker
        from roastq.llm.batch import Q as LANE

        with self._cursor() as cur:  # the batch lane (roastq/llm/batch.py)
            cur.execute(LANE.lane_status)
            lane = dict(zip([c.name for c in cur.description], cur.fetchone()))
        if settings.rabbitmq:  # messages live in RabbitMQ: depth is read there (roastq/brokers/__init__.py)
            from roastq.brokers.rabbitmq import rabbitmq_metric_rows

            rows = [r for r in rows if r[0] != "queue"] + rabbitmq_metric_rows(QUEUES)
        return rows, spend, lane

    def collect(self):
        started = time.monotonic()
        up = GaugeMetricFamily(
            "roastq_metrics_postgres_up",
            "1 if the exporter's last read of queue and worker state from Postgres worked.",
        )
        with self._lock:
            try:
                rows, spend, lane = self._read()
            except Exception as exc:
                logger.warning("metrics: could not read Postgres: %s", exc)
                if self._conn is not None:
                    self._conn.close()
                up.add_metric([], 0)
                yield up
                return
        up.add_metric([], 1)
        yield up

        depth = GaugeMetricFamily(
            "roastq_queue_messages", "Broker messages by queue and state (from Postgres).", labels=["queue", "state"]
        )
        age = GaugeMetricFamily(
            "roastq_queue_oldest_message_age_seconds",
            "Age of the oldest message by queue and state (since it entered that state); 0 when there is none.",
            labels=["queue", "state"],
        )
        delayed = GaugeMetricFamily(
            "roastq_queue_delayed_messages",
            "Messages waiting in a queue's delay queue (retry backoffs, snoozes).",
            labels=["queue"],
        )
        seen = {(q, s): (0, 0.0) for q in QUEUES for s in STATES}
        workers = threads = 0
        heartbeat_age = None
        for kind, queue, state, n, age_s in rows:
            if kind == "queue":
                seen[(queue, state)] = (n, float(age_s or 0.0))
            else:  # the one "workers" row
                workers, threads, heartbeat_age = n, int(state or 0), age_s
        for (queue, state), (n, age_s) in sorted(seen.items()):
            depth.add_metric([queue, state], n)
            age.add_metric([queue, state], age_s)
            if state == "delayed":
                delayed.add_metric([queue], n)
        yield depth
        yield age
        yield delayed

        alive = GaugeMetricFamily(
            "roastq_workers_alive", "Worker processes whose heartbeat is fresh (within 3 heartbeat intervals)."
        )
        alive.add_metric([], workers)
        yield alive
        alive_threads = GaugeMetricFamily("roastq_worker_threads_alive", "Worker threads of the live processes.")
        alive_threads.add_metric([], threads)
        yield alive_threads
        if heartbeat_age is not None:
            beat = GaugeMetricFamily(
                "roastq_worker_heartbeat_age_seconds",
                "Seconds since the stalest heartbeat still registered (a crashed worker's grows).",
            )
            beat.add_metric([], float(heartbeat_age))
            yield beat
        spent = GaugeMetricFamily(
            "roastq_llm_budget_spent_dollars",
            "Dollars spent on LLM calls today (UTC day, all models): what the budget guard reads.",
        )
        spent.add_metric([], float(spend.spent_usd))
        yield spent
        cap = GaugeMetricFamily(
            "roastq_llm_budget_cap_dollars", "The daily LLM spend cap, LLM_DAILY_BUDGET_USD (0: no cap)."
        )
        cap.add_metric([], float(spend.cap_usd or 0))
        yield cap
        yield from lane_metrics(lane, get_settings().llm_batch_expected_s)
        took = GaugeMetricFamily("roastq_metrics_postgres_read_seconds", "How long the exporter's Postgres read took.")
        took.add_metric([], time.monotonic() - started)
        yield took


def lane_metrics(lane: dict, expected_s: float):
    """The batch lane's gauges (docs/metrics.md)."""
    requests = GaugeMetricFamily(
        "roastq_batch_lane_requests",
        "LLM requests in the batch lane: waiting for a batch, or in an open batch.",
        labels=["state"],
    )
    requests.add_metric(["waiting"], lane["waiting"])
    requests.add_metric(["in_batch"], lane["in_batches"])
    yield requests
    open_batches = GaugeMetricFamily("roastq_batch_lane_open_batches", "Message Batches not yet collected.")
    open_batches.add_metric([], lane["open_batches"])
    yield open_batches
    for name, key, what in (
        ("roastq_batch_lane_oldest_batch_age_seconds", "oldest_batch_s", "open batch"),
        ("roastq_batch_lane_oldest_request_age_seconds", "oldest_request_s", "pending request"),
    ):
        g = GaugeMetricFamily(name, f"Age of the oldest {what} in the batch lane; 0 when there is none.")
        g.add_metric([], float(lane[key] or 0.0))
        yield g
    expected = GaugeMetricFamily(
        "roastq_batch_lane_expected_seconds",
        "LLM_BATCH_EXPECTED_S: a batch open longer is late (the alert's threshold).",
    )
    expected.add_metric([], expected_s)
    yield expected
    billed = GaugeMetricFamily(
        "roastq_batch_lane_billed_dollars", "Dollars billed for batch-lane answers (at batch prices), all time."
    )
    billed.add_metric([], float(lane["billed_usd"]))
    yield billed
    saved = GaugeMetricFamily(
        "roastq_batch_lane_saved_dollars", "Dollars the batch lane saved against the same answers real-time, all time."
    )
    saved.add_metric([], float(lane["saved_usd"]))
    yield saved


def build_registry(postgres: PostgresCollector | None = None) -> CollectorRegistry:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(multiprocess_dir()))
    registry.register(postgres or PostgresCollector())
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """One scrape: prune dead processes, then collect everything."""
    prune_dead()
    return generate_latest(registry)


class _Handler(BaseHTTPRequestHandler):
    registry: CollectorRegistry

    def do_GET(self):
        from roastq.ops.health import respond as health_response  # /healthz and /readyz (roastq/ops/health.py)

        health = health_response(self.path)
        if health is not None:
            status, body = health
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path.split("?")[0] not in ("/metrics", "/"):
            self.send_error(404)
            return
        try:
            body = render(self.server.registry)
        except Exception:
            logger.exception("metrics: scrape failed")
            self.send_error(500)
            return
        self.send_response(200)
        self.send_header("Content-Type", CONTENT_TYPE_LATEST)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *args):  # one line a scrape would drown the logs
        pass


def make_server(host: str, port: int) -> HTTPServer:
    server = HTTPServer((host, port), _Handler)
    server.registry = build_registry()
    return server


def run_exporter() -> int:
    """The exporter process's main (a dramatiq fork function): serve until SIGTERM."""
    setup_logging()
    enable_multiprocess()
    settings = get_settings()
    try:
        server = make_server(settings.metrics_host, settings.metrics_port)
    except OSError as exc:
        # Another pool on this host serves the port: its exporter reads the same directory.
        logger.error(
            "metrics exporter not started: cannot listen on %s:%s: %s",
            settings.metrics_host,
            settings.metrics_port,
            exc,
        )
        return 1
    host, port = server.server_address[:2]
    logger.info("metrics exporter listening on http://%s:%d/metrics (files in %s)", host, port, multiprocess_dir())
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
