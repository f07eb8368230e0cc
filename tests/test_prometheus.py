"""A real Prometheus (Debian's package) scraping a live worker pool: every dashboard query returns
data and every alert rule loads and evaluates; promtool checks the config and unit-tests the rules."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers import one, start_workers, wait_for_status, wait_until
from promtext import parse, scrape, value

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS, PROMTOOL = shutil.which("prometheus"), shutil.which("promtool")

needs_prometheus = pytest.mark.skipif(
    not (PROMETHEUS and PROMTOOL),
    reason="prometheus/promtool not installed (.ci/run installs Debian's prometheus package)",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load((ROOT / "prometheus/alerts.yml").read_text())["groups"] for r in g["rules"]]


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard, panel title, expr) for every panel target."""
    found = []
    for path in sorted((ROOT / "grafana/dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                found.append((path.name, panel["title"], target["expr"]))
    return found


@needs_prometheus
def test_promtool_checks_the_config_and_every_alert_is_unit_tested_with_a_runbook():
    run = subprocess.run(
        [PROMTOOL, "check", "config", str(ROOT / "prometheus/prometheus.yml")], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
    run = subprocess.run(
        [PROMTOOL, "test", "rules", "alerts_test.yml"], cwd=ROOT / "prometheus", capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout + run.stderr
    tests = yaml.safe_load((ROOT / "prometheus/alerts_test.yml").read_text())["tests"]
    firing = {a["alertname"] for t in tests for a in t["alert_rule_test"] if a["exp_alerts"]}
    quiet = {a["alertname"] for t in tests for a in t["alert_rule_test"] if not a["exp_alerts"]}
    docs = (ROOT / "docs/observability.md").read_text()
    names = [r["alert"] for r in alert_rules()]
    assert set(names) >= {
        "RoastqOldestQueuedJobTooOld",
        "RoastqJobFailureRatioHigh",
        "RoastqDeadLettersGrowing",
        "RoastqNoWorkerAlive",
        "RoastqLLM429Storm",
        "RoastqLLMSpendRateHigh",
    }
    for rule in alert_rules():
        name = rule["alert"]
        assert name in firing and name in quiet, f"{name}: needs a case that fires and one that does not"
        assert rule["annotations"]["runbook"].strip() and rule["annotations"]["summary"].strip()
        anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
        assert anchor == name.lower() and f"### {name}" in docs, f"{name}: no runbook section in the docs"


def _query(port: int, expr: str) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def _api(port: int, path: str) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return json.load(r)


def _alive(port: int) -> float:
    try:
        return value(parse(scrape(port)), "roastq_workers_alive")
    except OSError:
        return -1


def _workload(db, seeded, sim, metrics_dir) -> list[str]:
    """Jobs on both queues, with and without self-critique: some retried (a 429, a 500), one failed.

    They are sent by another process writing to the pool's metrics directory, as an app or the
    CLI on the workers' host does (its enqueues are counted by the pool's exporter)."""
    with db.cursor() as cur:
        cur.execute("SELECT DISTINCT agent_id::text FROM agent_versions ORDER BY 1")
        agents = [r[0] for r in cur.fetchall()]
    docs = [str(d) for d in seeded.documents.values()]
    pairs = [
        (docs[i % len(docs)], agents[i % len(agents)], "batch" if i % 3 == 2 else "interactive") for i in range(12)
    ]
    sim.script("rate_limit", "server_error", "invalid_request")
    code = (
        "import json, sys\n"
        "from roastq.api import enqueue_evaluation\n"
        "print(json.dumps([enqueue_evaluation(d, a, priority=p) for d, a, p in json.loads(sys.argv[1])]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(pairs)],
        capture_output=True,
        text=True,
        env=dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)),
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@needs_prometheus
def test_prometheus_scrapes_a_live_pool_and_every_panel_query_and_alert_rule_works(db, seeded, sim, tmp_path):
    metrics_port, prom_port = free_port(), free_port()
    metrics_dir = tmp_path / "metrics"
    config = yaml.safe_load((ROOT / "prometheus/prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(ROOT / "prometheus/alerts.yml")]
    [job] = config["scrape_configs"]
    job["static_configs"] = [{"targets": [f"127.0.0.1:{metrics_port}"]}]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))

    sim.configure(latency_ms=300, jitter_ms=50)  # long enough that both worker processes take jobs
    # The response cache on and 600 requests a minute (a start every 0.1 s): the LLM dashboard's
    # cache and rate-limiter panels have data (four threads starting at once wait for the limiter).
    pool = start_workers(
        processes=2,
        threads=2,
        METRICS_PORT=metrics_port,
        PROMETHEUS_MULTIPROC_DIR=metrics_dir,
        ANTHROPIC_BASE_URL=sim.url,
        BACKOFF_SCALE="0.01",
        HEARTBEAT_INTERVAL_S="1",
        LLM_CACHE_ENABLED="1",
        LLM_RPM_LIMIT="600",
    )
    prom = subprocess.Popen(
        [
            PROMETHEUS,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
            "--log.level=warn",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        # Workers clear dead processes' files as they boot: send once they are up.
        wait_until(lambda: _alive(metrics_port) == 2, timeout=20, interval=0.2, what="the pool's exporter and workers")
        jobs = _workload(db, seeded, sim, metrics_dir)
        statuses = wait_for_status(db, jobs, timeout=40)
        assert sorted(statuses.values()).count("FAILED") == 1, statuses

        # The one exporter serves the whole pool: totals equal the database's, whichever process ran what.
        samples = parse(scrape(metrics_port))
        attempts = one(db, "SELECT count(*) FROM job_attempts WHERE job_id = ANY(%s::uuid[])", jobs)
        assert value(samples, "roastq_messages_started_total") == attempts
        assert value(samples, "roastq_messages_succeeded_total") == 11
        # The 12 sends came from this process, which is not a worker: it records no metric (an app's
        # sends are seen as queue depth, from Postgres); the retries the workers sent are counted.
        retried = one(
            db, "SELECT count(*) FROM job_attempts WHERE job_id = ANY(%s::uuid[]) AND outcome = 'retried'", jobs
        )
        assert value(samples, "roastq_messages_enqueued_total", delayed="false") == 0
        assert value(samples, "roastq_messages_enqueued_total", delayed="true") == retried
        wrote = {int(p.name[:-3].split("_")[-1]) for p in metrics_dir.glob("counter_*.db")}
        assert len(wrote) == 2  # the two worker processes; the sender wrote nothing

        wait_until(
            lambda: (
                _query(prom_port, 'sum(roastq_messages_succeeded_total{job="roastq"})')["data"]["result"]
                and float(_query(prom_port, "sum(roastq_messages_succeeded_total)")["data"]["result"][0]["value"][1])
                == 11
            ),
            timeout=20,
            interval=0.5,
            what="Prometheus to scrape the finished jobs",
        )
        time.sleep(3)  # a few more scrapes, so that every rate() has two samples of the final counts
        assert _query(prom_port, 'up{job="roastq"}')["data"]["result"][0]["value"][1] == "1"

        empty = []
        for board, title, expr in dashboard_queries():
            promql = expr.replace("$__rate_interval", "1m").replace("$__range", "5m")
            answer = _query(prom_port, promql)
            assert answer["status"] == "success", (board, title, answer)
            if not answer["data"]["result"]:
                empty.append((board, title, promql))
        assert not empty, f"panels without data: {empty}"

        wait_until(
            lambda: all(
                r.get("lastEvaluation", "").startswith("2") and r["health"] == "ok"
                for g in _api(prom_port, "/api/v1/rules")["data"]["groups"]
                for r in g["rules"]
            ),
            timeout=10,
            interval=0.5,
            what="every rule evaluated",
        )
        loaded = {r["name"]: r for g in _api(prom_port, "/api/v1/rules")["data"]["groups"] for r in g["rules"]}
        assert set(loaded) == {r["alert"] for r in alert_rules()}
        assert all(r["type"] == "alerting" and r["health"] == "ok" for r in loaded.values())

        # A graceful stop marks the worker processes dead: their live gauges go, their counts stay.
        pool.send_signal(signal.SIGTERM)
        assert pool.wait(30) == 0
        assert not list(metrics_dir.glob("gauge_livesum_*.db"))
        assert len(list(metrics_dir.glob("counter_*.db"))) == 2  # the two workers (the sender records nothing)
    finally:
        for proc in (pool, prom):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_the_dashboards_only_query_metrics_we_export():
    from observability import metrics as m

    exported = {c._name for c in m.setup_metrics().values() if hasattr(c, "_name") and hasattr(c, "_type")}
    exported |= {
        "roastq_queue_messages",
        "roastq_queue_oldest_message_age_seconds",
        "roastq_queue_delayed_messages",
        "roastq_workers_alive",
        "roastq_worker_threads_alive",
        "roastq_worker_heartbeat_age_seconds",
        "roastq_metrics_postgres_up",
        "roastq_metrics_postgres_read_seconds",
        "roastq_llm_budget_spent_dollars",
        "roastq_llm_budget_cap_dollars",
        "up",
        "roastq_batch_lane_requests",
        "roastq_batch_lane_open_batches",
        "roastq_batch_lane_oldest_batch_age_seconds",
        "roastq_batch_lane_oldest_request_age_seconds",
        "roastq_batch_lane_expected_seconds",
        "roastq_batch_lane_billed_dollars",
        "roastq_batch_lane_saved_dollars",
    }
    exported = {n[:-6] if n.endswith("_total") else n for n in exported}
    exprs = [e for _, _, e in dashboard_queries()] + [r["expr"] for r in alert_rules()]
    used = {re.sub(r"_(total|bucket|count|sum)$", "", n) for e in exprs for n in re.findall(r"\b(roastq_\w+|up)\b", e)}
    assert used <= exported, used - exported
