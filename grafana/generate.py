"""Write roastq's Grafana dashboards (``grafana/dashboards/*.json``) from the panel lists below.

    .venv/bin/python grafana/generate.py

The JSON files are committed (Grafana provisioning reads them); ``tests/test_metrics_dashboards.py``
checks that they are what this script writes, that they validate strictly against Grafana's JSON
schemas, and (with a real Prometheus scraping a live worker pool) that every query returns data.
Queries aggregate with ``max`` the series read from Postgres (every exporter reports the same
facts) and with ``sum`` the per-process counters.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
RATE = "$__rate_interval"


def target(expr: str, legend: str = "", ref: str = "A", instant: bool = False) -> dict:
    t = {
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend or "__auto",
        "range": not instant,
        "instant": instant,
        "refId": ref,
    }
    return t


def timeseries(title: str, description: str, targets: list[dict], unit: str = "short", stack: bool = False) -> dict:
    return {
        "type": "timeseries",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": targets,
        "fieldConfig": {
            "defaults": {
                "unit": unit,
                "custom": {
                    "drawStyle": "line",
                    "lineWidth": 1,
                    "fillOpacity": 10,
                    "showPoints": "never",
                    "spanNulls": True,
                    "stacking": {"mode": "normal" if stack else "none", "group": "A"},
                },
            },
            "overrides": [],
        },
        "options": {
            "legend": {"displayMode": "list", "placement": "bottom", "showLegend": True, "calcs": []},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    }


def stat(title: str, description: str, expr: str, unit: str = "short", thresholds: list | None = None) -> dict:
    thresholds = thresholds or []
    if not thresholds or thresholds[0][0] is not None:
        thresholds = [(None, "green"), *thresholds]
    steps = [{"value": v, "color": c} for v, c in thresholds]
    return {
        "type": "stat",
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": [target(expr, instant=True)],
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        },
        "options": {
            "graphMode": "area",
            "colorMode": "value",
            "justifyMode": "auto",
            "textMode": "auto",
            "wideLayout": True,
            "showPercentChange": False,
            "percentChangeColorMode": "standard",
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        },
    }


def layout(panels: list[dict]) -> list[dict]:
    """Stats four to a row (6 wide, 4 high), then graphs two to a row (12 wide, 8 high)."""
    x = y = prev_h = 0
    out = []
    for n, panel in enumerate(panels, 1):
        w, h = (6, 4) if panel["type"] == "stat" else (12, 8)
        if x + w > 24:
            x, y = 0, y + prev_h
        panel = dict(panel, id=n, gridPos={"h": h, "w": w, "x": x, "y": y})
        out.append(panel)
        x, prev_h = x + w, h
    return out


def dashboard(uid: str, title: str, description: str, panels: list[dict]) -> dict:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["roastq"],
        "timezone": "browser",
        "editable": False,
        "graphTooltip": 1,
        "time": {"from": "now-3h", "to": "now"},
        "timepicker": {"refresh_intervals": ["10s", "30s", "1m", "5m", "15m"]},
        "refresh": "30s",
        "schemaVersion": 39,
        "version": 1,
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "panels": layout(panels),
        "templating": {"list": []},
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": [],
    }


def quantiles(metric: str, by: str = "", match: str = "") -> list[dict]:
    group = f"le{', ' + by if by else ''}"
    legend = f"{{{{{by}}}}} " if by else ""
    return [
        target(
            f"histogram_quantile({q}, sum by ({group}) (rate({metric}_bucket{match}[{RATE}])))",
            f"{legend}p{int(q * 100)}",
            ref,
        )
        for q, ref in ((0.5, "A"), (0.95, "B"), (0.99, "C"))
    ]


OVERVIEW = dashboard(
    "roastq-overview",
    "roastq: overview",
    "Jobs: throughput, latency, failures by class, queues, in flight.",
    [
        stat("Jobs in flight", "Job attempts running now, all workers.", "sum(roastq_messages_in_progress)"),
        stat(
            "Ready to run",
            "Messages queued and not yet taken by a worker.",
            'sum(max by (queue) (roastq_queue_messages{state="queued"}))',
            thresholds=[(100, "orange"), (1000, "red")],
        ),
        stat(
            "Dead letters",
            "Messages of jobs that failed for good (state rejected).",
            'sum(max by (queue) (roastq_queue_messages{state="rejected"}))',
            thresholds=[(1, "orange")],
        ),
        stat(
            "Workers alive",
            "Worker processes with a fresh heartbeat.",
            "max(roastq_workers_alive)",
            thresholds=[(None, "red"), (1, "green")],
        ),
        timeseries(
            "Throughput",
            "Attempts finished, by outcome; and messages the workers sent again (retries, snoozes, "
            "reconciled jobs). New work from apps shows as queue depth.",
            [
                target(f"sum(rate(roastq_messages_enqueued_total[{RATE}]))", "sent by workers", "A"),
                target(f"sum by (outcome) (rate(roastq_job_duration_seconds_count[{RATE}]))", "{{outcome}}", "B"),
            ],
            unit="reqps",
        ),
        timeseries(
            "Job duration (succeeded attempts)",
            "Quantiles of the time a successful attempt took.",
            quantiles("roastq_job_duration_seconds", match='{outcome="succeeded"}'),
            unit="s",
        ),
        timeseries(
            "Failures by error class",
            "Jobs that failed for good, per second, by error class.",
            [
                target(f"sum by (error_class) (rate(roastq_messages_failed_total[{RATE}]))", "{{error_class}}"),
            ],
            unit="reqps",
            stack=True,
        ),
        timeseries(
            "Retries and snoozes",
            "Failed attempts that will be retried, by error class; and attempts that "
            "waited without failing (snoozed: pause, budget, rate limiter), by reason.",
            [
                target(f"sum by (error_class) (rate(roastq_messages_retried_total[{RATE}]))", "{{error_class}}", "A"),
                target(
                    f"sum by (reason) (rate(roastq_messages_snoozed_total[{RATE}])) or vector(0)",
                    "snoozed: {{reason}}",
                    "B",
                ),
            ],
            unit="reqps",
            stack=True,
        ),
        timeseries(
            "Queue depth",
            "Broker messages by queue and state (from Postgres).",
            [
                target("max by (queue, state) (roastq_queue_messages)", "{{queue}} {{state}}"),
            ],
        ),
        timeseries(
            "Oldest message age",
            "Age of the oldest queued (waiting to run) and delayed message.",
            [
                target(
                    'max by (queue, state) (roastq_queue_oldest_message_age_seconds{state=~"queued|delayed"})',
                    "{{queue}} {{state}}",
                ),
            ],
            unit="s",
        ),
        timeseries(
            "In flight and delayed",
            "Attempts running, and delayed messages held by workers, by queue.",
            [
                target("sum by (queue) (roastq_messages_in_progress)", "{{queue}} running", "A"),
                target("sum by (queue) (roastq_messages_delayed)", "{{queue}} delayed (in workers)", "B"),
                target("max by (queue) (roastq_queue_delayed_messages)", "{{queue}} delayed (in Postgres)", "C"),
            ],
        ),
    ],
)

LLM = dashboard(
    "roastq-llm",
    "roastq: LLM",
    "Claude calls: requests, latency, tokens, dollars, 429s; the budget, the cache, the rate limiter.",
    [
        stat(
            "Spend in range",
            "Dollars spent on LLM calls over the dashboard's time range.",
            "sum(increase(roastq_llm_cost_dollars_total[$__range]))",
            unit="currencyUSD",
        ),
        stat(
            "Spend rate",
            "Dollars an hour, now.",
            f"sum(rate(roastq_llm_cost_dollars_total[{RATE}])) * 3600",
            unit="currencyUSD",
            thresholds=[(20, "orange"), (50, "red")],
        ),
        stat(
            "Error ratio",
            "Share of calls sent that failed (any class).",
            f'(sum(rate(roastq_llm_requests_total{{outcome!~"ok|cached"}}[{RATE}])) or vector(0)) / '
            f'sum(rate(roastq_llm_requests_total{{outcome!="cached"}}[{RATE}]))',
            unit="percentunit",
            thresholds=[(0.05, "orange"), (0.2, "red")],
        ),
        stat(
            "Cache hit ratio",
            "Share of calls answered from the response cache (not sent, not paid).",
            f'(sum(rate(roastq_llm_requests_total{{outcome="cached"}}[{RATE}])) or vector(0)) / '
            f"sum(rate(roastq_llm_requests_total[{RATE}]))",
            unit="percentunit",
        ),
        stat(
            "Spent today (UTC)",
            "Dollars billed today, all models: what the budget guard reads (from Postgres).",
            "max(roastq_llm_budget_spent_dollars)",
            unit="currencyUSD",
        ),
        stat(
            "Daily budget",
            "LLM_DAILY_BUDGET_USD: the daily spend cap (0: no cap).",
            "max(roastq_llm_budget_cap_dollars)",
            unit="currencyUSD",
        ),
        stat(
            "Budget holds in range",
            "LLM calls held because today's spend reached the cap (their jobs wait, they do not fail).",
            "sum(increase(roastq_llm_budget_holds_total[$__range])) or vector(0)",
            thresholds=[(1, "orange")],
        ),
        stat(
            "Saved by the cache in range",
            "What the response cache's hits would have cost, over the time range.",
            "sum(increase(roastq_llm_cache_saved_dollars_total[$__range]))",
            unit="currencyUSD",
        ),
        timeseries(
            "Requests by outcome",
            "LLM calls per second: ok, cached, or the error class.",
            [
                target(f"sum by (outcome) (rate(roastq_llm_requests_total[{RATE}]))", "{{outcome}}"),
            ],
            unit="reqps",
            stack=True,
        ),
        timeseries(
            "429s (rate limited)",
            "Calls the API refused with 429, per second, by model.",
            [
                target(
                    f'sum by (model) (rate(roastq_llm_requests_total{{outcome="RATE_LIMITED"}}[{RATE}]))', "{{model}}"
                ),
            ],
            unit="reqps",
        ),
        timeseries(
            "Latency",
            "Quantiles of LLM call latency, by model.",
            quantiles("roastq_llm_request_duration_seconds", by="model"),
            unit="s",
        ),
        timeseries(
            "Tokens by kind",
            "Tokens paid for per second: input, output, cache read, cache write.",
            [
                target(f"sum by (kind) (rate(roastq_llm_tokens_total[{RATE}]))", "{{kind}}"),
            ],
            stack=True,
        ),
        timeseries(
            "Dollars per hour by model",
            "Spend rate by model.",
            [
                target(f"sum by (model) (rate(roastq_llm_cost_dollars_total[{RATE}])) * 3600", "{{model}}"),
            ],
            unit="currencyUSD",
        ),
        timeseries(
            "Requests by model and step",
            "LLM calls per second by model and pipeline step.",
            [
                target(f"sum by (model, step) (rate(roastq_llm_requests_total[{RATE}]))", "{{model}} {{step}}"),
            ],
            unit="reqps",
        ),
        timeseries(
            "Response cache",
            "Cache lookups per second by outcome (hit, miss, bypass) and answers stored.",
            [
                target(f"sum by (outcome) (rate(roastq_llm_cache_lookups_total[{RATE}]))", "{{outcome}}"),
            ],
            unit="reqps",
        ),
        stat(
            "Batch lane saved",
            "Dollars the batch lane saved against the same answers real-time (all time, from Postgres).",
            "max(roastq_batch_lane_saved_dollars)",
            unit="currencyUSD",
        ),
        stat(
            "Oldest open batch",
            "Age of the oldest Message Batch not yet collected; red past LLM_BATCH_EXPECTED_S.",
            "max(roastq_batch_lane_oldest_batch_age_seconds)",
            unit="s",
            thresholds=[(1800, "orange"), (3600, "red")],
        ),
        timeseries(
            "Batch lane depth",
            "LLM requests waiting for a batch and in open batches, and open batches.",
            [
                target("max by (state) (roastq_batch_lane_requests)", "requests {{state}}", "A"),
                target("max(roastq_batch_lane_open_batches)", "open batches", "B"),
            ],
        ),
        timeseries(
            "Batch lane age",
            "Oldest open batch and oldest pending request, against the expected window.",
            [
                target("max(roastq_batch_lane_oldest_batch_age_seconds)", "oldest batch", "A"),
                target("max(roastq_batch_lane_oldest_request_age_seconds)", "oldest request", "B"),
                target("max(roastq_batch_lane_expected_seconds)", "expected window", "C"),
            ],
            unit="s",
        ),
        timeseries(
            "Batch lane dollars",
            "Billed at batch prices, and saved against real-time, per hour.",
            [
                target(f"max(deriv(roastq_batch_lane_billed_dollars[{RATE}])) * 3600", "billed / h", "A"),
                target(f"max(deriv(roastq_batch_lane_saved_dollars[{RATE}])) * 3600", "saved / h", "B"),
            ],
            unit="currencyUSD",
        ),
        timeseries(
            "Rate limiter",
            "Waits for the shared rate limiter per second, by reason and outcome (waited in "
            "the thread, or snoozed), and gate closures (a 429, or a limit with nothing left).",
            [
                target(
                    f"sum by (reason, outcome) (rate(roastq_llm_rate_limit_waits_total[{RATE}]))",
                    "{{reason}} {{outcome}}",
                    "A",
                ),
                target(
                    f"sum by (reason) (rate(roastq_llm_rate_limit_gate_closed_total[{RATE}]))",
                    "gate closed: {{reason}}",
                    "B",
                ),
            ],
            unit="reqps",
        ),
    ],
)

WORKERS = dashboard(
    "roastq-workers",
    "roastq: workers",
    "Worker processes: liveness, capacity, exporter health.",
    [
        stat(
            "Workers alive",
            "Worker processes with a fresh heartbeat.",
            "max(roastq_workers_alive)",
            thresholds=[(None, "red"), (1, "green")],
        ),
        stat("Threads alive", "Worker threads of the live processes.", "max(roastq_worker_threads_alive)"),
        stat(
            "Busy threads",
            "Share of live worker threads running a job now.",
            "sum(roastq_messages_in_progress) / max(roastq_worker_threads_alive)",
            unit="percentunit",
            thresholds=[(0.8, "orange"), (0.95, "red")],
        ),
        stat(
            "Exporters up",
            "Exporters Prometheus scraped successfully.",
            'sum(up{job="roastq"})',
            thresholds=[(None, "red"), (1, "green")],
        ),
        timeseries(
            "Workers and threads alive",
            "From the heartbeat table.",
            [
                target("max(roastq_workers_alive)", "processes", "A"),
                target("max(roastq_worker_threads_alive)", "threads", "B"),
            ],
        ),
        timeseries(
            "Heartbeat age",
            "Seconds since the stalest registered heartbeat: a dead worker's grows until its row is reaped.",
            [target("max(roastq_worker_heartbeat_age_seconds)", "stalest")],
            unit="s",
        ),
        timeseries(
            "Threads busy",
            "Job attempts running against worker threads.",
            [
                target("sum(roastq_messages_in_progress)", "busy", "A"),
                target("max(roastq_worker_threads_alive)", "threads", "B"),
            ],
        ),
        timeseries(
            "Attempts started",
            "Job attempts started per second, by queue.",
            [
                target(f"sum by (queue) (rate(roastq_messages_started_total[{RATE}]))", "{{queue}}"),
            ],
            unit="reqps",
        ),
        timeseries(
            "Exporter's Postgres read",
            "1 when the last read of queue and worker state worked; its duration.",
            [
                target("min(roastq_metrics_postgres_up)", "up", "A"),
                target("max(roastq_metrics_postgres_read_seconds)", "seconds", "B"),
            ],
        ),
    ],
)

DASHBOARDS = {"overview.json": OVERVIEW, "llm.json": LLM, "workers.json": WORKERS}


def render(board: dict) -> str:
    return json.dumps(board, indent=2) + "\n"


def main() -> None:
    for name, board in DASHBOARDS.items():
        (HERE / "dashboards" / name).write_text(render(board))
        print(f"wrote grafana/dashboards/{name} ({len(board['panels'])} panels)")


if __name__ == "__main__":
    main()
