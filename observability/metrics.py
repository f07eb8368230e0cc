"""Prometheus metrics of a worker process, in prometheus_client's multiprocess mode.

dramatiq forks worker processes, so each process writes its samples to memory-mapped files in
``PROMETHEUS_MULTIPROC_DIR`` (``settings.metrics_dir``) and one exporter (``observability.exporter``)
adds them up. Importing this module does nothing: ``setup_metrics()``, called as a worker process
boots, creates and exports the directory, puts prometheus_client in multiprocess mode (also when
something imported it earlier) and defines the metrics; the module's metric names (``STARTED``...)
resolve to them. An app's process that only sends messages never calls it.

Files of processes that are gone are cleaned: a worker process at boot removes the files of every
process that no longer runs (a previous run, a crashed worker) and any stale file with its own pid;
a worker stopping marks itself dead (its live gauges go); the exporter does the same for workers
that died without stopping (``prune_dead``).

Naming follows Prometheus conventions: base units (seconds, dollars), ``_total`` for counters, and
no unbounded labels (no job, message or agent ids: those are in the logs and Sentry). Queue depth,
queue age, worker liveness and today's LLM spend come from Postgres, read once per scrape by the
exporter.

Every metric here has at least one label. A metric without labels gets its value, and so its
process's file, the moment it is defined, before ``clean_at_boot`` runs and removes that
process's own (presumed stale) files: every counter of the process would then go to a deleted
file and vanish from the exporter (``tests/test_metrics.py`` checks it).
"""

from __future__ import annotations

import fcntl
import os
import re
import threading
from contextlib import contextmanager
from pathlib import Path

from roastq.settings import get_settings


def multiprocess_dir() -> Path:
    """``PROMETHEUS_MULTIPROC_DIR`` (``settings.metrics_dir``), without creating it."""
    return get_settings().metrics_dir.resolve()


def enable_multiprocess() -> Path:
    """Create and export ``PROMETHEUS_MULTIPROC_DIR``, and make prometheus_client write there
    even if it was imported before (it picks its value class at import)."""
    path = multiprocess_dir()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    from prometheus_client import values

    if values.ValueClass.__name__ != "MmapedValue":
        values.ValueClass = values.get_value_class()
    return path


#: Job duration buckets: 1 s to 20 min (RoastMyPost agents take seconds to minutes).
JOB_BUCKETS = (1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 240, 300, 450, 600, 900, 1200, float("inf"))
#: LLM call latency buckets: 100 ms to 5 min.
LLM_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, float("inf"))
TOKEN_KINDS = ("input", "output", "cache_read", "cache_write")

_metrics: dict | None = None
_metrics_lock = threading.Lock()


def setup_metrics() -> dict:
    """Define this process's metrics (once), in multiprocess mode; return them by name."""
    global _metrics
    with _metrics_lock:
        if _metrics is None:
            enable_multiprocess()
            from prometheus_client import Counter, Gauge, Histogram

            # -- messages (jobs) ------------------------------------------------------------------------------
            ENQUEUED = Counter(
                "roastq_messages_enqueued_total",
                'Messages put on a queue; delayed="true" for retries, snoozes and scheduled sends.',
                ["queue", "actor", "delayed"],
            )
            STARTED = Counter("roastq_messages_started_total", "Job attempts started.", ["queue", "actor"])
            SUCCEEDED = Counter(
                "roastq_messages_succeeded_total", "Job attempts that completed the job.", ["queue", "actor"]
            )
            FAILED = Counter(
                "roastq_messages_failed_total",
                "Jobs that failed for good (dead letters), by error class.",
                ["queue", "actor", "error_class"],
            )
            RETRIED = Counter(
                "roastq_messages_retried_total",
                "Job attempts that failed and will be retried, by error class.",
                ["queue", "actor", "error_class"],
            )
            SNOOZED = Counter(
                "roastq_messages_snoozed_total",
                "Job attempts that waited without failing (paused, budget, rate limiter), by reason.",
                ["queue", "actor", "reason"],
            )
            CANCELLED = Counter("roastq_messages_cancelled_total", "Jobs cancelled while they ran.", ["queue", "actor"])
            BACKED_OFF = Counter(
                "roastq_job_deliveries_backed_off_total",
                "Deliveries of a job's message that found an attempt of the job running on a live "
                "worker: they left it alone and snoozed (no second attempt beside it).",
                ["queue", "actor"],
            )
            DURATION = Histogram(
                "roastq_job_duration_seconds",
                "Time one job attempt took, by outcome (succeeded, failed, retried, snoozed, cancelled).",
                ["queue", "actor", "outcome"],
                buckets=JOB_BUCKETS,
            )
            IN_PROGRESS = Gauge(
                "roastq_messages_in_progress",
                "Job attempts running now.",
                ["queue", "actor"],
                multiprocess_mode="livesum",
            )
            DELAYED = Gauge(
                "roastq_messages_delayed",
                "Delayed messages held by workers until their time comes.",
                ["queue", "actor"],
                multiprocess_mode="livesum",
            )

            # -- the LLM -------------------------------------------------------------------------------------
            LLM_REQUESTS = Counter(
                "roastq_llm_requests_total",
                "LLM calls, by outcome: ok, cached (answered from the response cache, not sent) "
                "or the error class of the failure (RATE_LIMITED is a 429).",
                ["model", "step", "outcome"],
            )
            LLM_LATENCY = Histogram(
                "roastq_llm_request_duration_seconds",
                "Latency of LLM calls sent to the API.",
                ["model", "step"],
                buckets=LLM_BUCKETS,
            )
            LLM_TOKENS = Counter(
                "roastq_llm_tokens_total",
                "Tokens paid for, by kind: input, output, cache_read, cache_write.",
                ["model", "kind"],
            )
            LLM_COST = Counter(
                "roastq_llm_cost_dollars_total", "Dollars spent on LLM calls (price table x usage).", ["model"]
            )

            # -- the LLM cost layer (docs/llm.md): from roastq.events, see middleware/metrics.py ---------------
            LLM_CACHE_LOOKUPS = Counter(
                "roastq_llm_cache_lookups_total",
                "Response cache events by outcome: hit (served, not sent), miss, bypass (a call "
                "that skipped the lookup), store (a fresh validated answer kept).",
                ["model", "outcome"],
            )
            LLM_CACHE_SAVED = Counter(
                "roastq_llm_cache_saved_dollars_total",
                "Dollars the response cache saved: what the original calls of its hits cost.",
                ["model"],
            )
            LLM_STEPS_RESUMED = Counter(
                "roastq_llm_steps_resumed_total",
                "Pipeline steps a retry reused from an earlier attempt of its job (not run again).",
                ["step"],
            )
            LLM_BUDGET_HOLDS = Counter(
                "roastq_llm_budget_holds_total",
                "LLM calls held (their job snoozed) because today's spend reached LLM_DAILY_BUDGET_USD, "
                "by the model of the call.",
                ["model"],
            )
            LLM_RATE_WAITS = Counter(
                "roastq_llm_rate_limit_waits_total",
                "Waits for the shared rate limiter, by reason (gate, requests, input_tokens, "
                "output_tokens) and outcome: waited (in the thread) or snoozed (the job comes back later).",
                ["model", "reason", "outcome"],
            )
            LLM_RATE_WAIT_SECONDS = Counter(
                "roastq_llm_rate_limit_wait_seconds_total",
                "Seconds of those waits (snoozed: the delay the job was re-enqueued with).",
                ["model", "outcome"],
            )
            LLM_GATE_CLOSED = Counter(
                "roastq_llm_rate_limit_gate_closed_total",
                "Times a model's rate-limit gate was closed for every worker: reason 429 (retry-after) "
                "or '<kind> exhausted' (a rate-limit header said nothing is left).",
                ["model", "reason"],
            )
            LLM_UNKNOWN_MODEL = Counter(
                "roastq_llm_unknown_model_calls_total",
                "Calls priced for a model the price table does not know (charged the dearest rate).",
                ["model"],
            )
            LLM_REPAIRS = Counter(
                "roastq_llm_answer_repairs_total",
                "Soft violations repaired in Claude's answers before they were saved, by step and kind "
                "(string_truncated, number_clamped, number_coerced, enum_defaulted, extra_ignored, "
                "items_trimmed, field_defaulted, highlight_dropped).",
                ["step", "kind"],
            )
            LLM_RETRIES = Counter(
                "roastq_llm_in_call_retries_total",
                "Extra requests within one LLM call, by reason: corrective (the answer failed the hard "
                "tier and was sent back as an is_error tool result), max_tokens_raised, shorter_answer.",
                ["model", "step", "reason"],
            )
            _metrics = {name: value for name, value in locals().items() if name.isupper()}
    return _metrics


def __getattr__(name: str):
    # ``metrics.STARTED`` and the like: the metric of this process (defined on first use).
    if name.isupper() and not name.endswith("_BUCKETS") and name != "TOKEN_KINDS":
        try:
            return setup_metrics()[name]
        except KeyError:
            pass
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def record_llm_call(*, model: str, step: str, outcome: str, duration_s: float, usage, price_usd, cached: bool) -> None:
    """Count one LLM call (``outcome`` is decided by the caller: ok, cached or an error class)."""
    m = setup_metrics()
    m["LLM_REQUESTS"].labels(model, step, outcome).inc()
    if cached:
        return  # not sent, not paid for
    if duration_s is not None:  # None: a batch-lane answer, which has no call latency
        m["LLM_LATENCY"].labels(model, step).observe(duration_s)
    if usage is not None:
        for kind in TOKEN_KINDS:
            n = getattr(usage, f"{kind}_tokens", 0) or 0
            if n:
                m["LLM_TOKENS"].labels(model, kind).inc(n)
    if price_usd:
        m["LLM_COST"].labels(model).inc(float(price_usd))


# -- files of dead processes -------------------------------------------------------------------

_PID_FILE = re.compile(r"^[a-z_]+_(\d+)\.db$")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, someone else's
        return True
    return True


def _files_by_pid(path: Path) -> dict[int, list[Path]]:
    found: dict[int, list[Path]] = {}
    for f in path.glob("*.db"):
        m = _PID_FILE.match(f.name)
        if m:
            found.setdefault(int(m.group(1)), []).append(f)
    return found


@contextmanager
def _locked(path: Path):
    with open(path / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def clean_at_boot(path: Path | None = None) -> list[int]:
    """Remove every file of a process that is not running, and this process's own stale files
    (a pid reused after a restart); return the pids cleaned. Called as a worker process boots,
    before it records anything: counters restart from zero with the pool, as Prometheus expects."""
    path = path or enable_multiprocess()
    me = os.getpid()
    cleaned = []
    with _locked(path):
        for pid, files in _files_by_pid(path).items():
            if pid == me or not pid_alive(pid):
                for f in files:
                    f.unlink(missing_ok=True)
                cleaned.append(pid)
    return cleaned


def prune_dead(path: Path | None = None) -> list[int]:
    """Drop the live gauges of processes that died without stopping (their in-progress jobs are
    not running any more); their counters stay, so totals never go down within a run."""
    path = path or multiprocess_dir()
    dead = []
    for pid, files in _files_by_pid(path).items():
        if any(f.name.startswith("gauge_live") for f in files) and not pid_alive(pid):
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, str(path))
            dead.append(pid)
    return dead


def mark_dead(pid: int | None = None, path: Path | None = None) -> None:
    """This (stopping) process's live gauges go."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid or os.getpid(), str(path or multiprocess_dir()))
