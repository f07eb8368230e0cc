"""Prometheus metrics for jobs and LLM calls; one exporter per worker pool.

Replaces dramatiq's own ``Prometheus`` middleware (do not load both: ours exports the same facts
under roastq's names, with the error class of every failure). Like dramatiq's, it declares its
exporter in ``forks``, so ``dramatiq actors`` runs it as one extra process next to the workers;
processes write to prometheus_client's multiprocess files (``observability.metrics``).

Place it after ``JobState`` in the middleware list: its before hook then runs only for attempts
that really start (JobState skips finished jobs), and every outcome comes from ``decision_for``,
the one retry decision that the job row, the logs and Sentry report too.

Nothing happens until the process boots as a worker (``after_process_boot`` in ``dramatiq
actors``, or ``before_worker_boot`` for a worker embedded in a process): building the broker in
an app's process that only sends messages touches no metric and sets up no Prometheus state.
"""

from __future__ import annotations

import time

from dramatiq.common import q_name
from dramatiq.middleware import Middleware

from observability import metrics as m
from roastq import events
from roastq.failures import Action, RetryPolicy, classify

from .retries import decision_for


def on_llm_call(*, model, step, duration_s, usage, price_usd, exception, cached, **_):
    """``llm_call`` listener: the outcome is ok, cached, or the class of the exception."""
    if exception is not None:
        outcome = str(classify(exception))
    else:
        outcome = "cached" if cached else "ok"
    m.record_llm_call(
        model=model,
        step=step,
        outcome=outcome,
        duration_s=duration_s,
        usage=usage,
        price_usd=price_usd,
        cached=cached and exception is None,
    )


def on_llm_cache(*, model, outcome, saved_usd, **_):
    """``llm_cache`` listener. Every outcome touches the saved-dollars series (by 0 unless a hit),
    so that it exists, at 0, wherever the cache is in use."""
    m.LLM_CACHE_LOOKUPS.labels(model, outcome).inc()
    m.LLM_CACHE_SAVED.labels(model).inc(float(saved_usd or 0))


def on_llm_step_memo(*, step, outcome, **_):
    if outcome == "resumed":
        m.LLM_STEPS_RESUMED.labels(step).inc()


def on_llm_budget_exhausted(*, model, **_):
    m.LLM_BUDGET_HOLDS.labels(model).inc()


def on_llm_rate_limit_wait(*, model, reason, wait_s, snoozed, **_):
    outcome = "snoozed" if snoozed else "waited"
    m.LLM_RATE_WAITS.labels(model, reason or "unknown", outcome).inc()
    m.LLM_RATE_WAIT_SECONDS.labels(model, outcome).inc(max(0.0, float(wait_s)))


def on_llm_rate_limit_gate(*, model, reason, **_):
    m.LLM_GATE_CLOSED.labels(model, reason or "unknown").inc()


def on_llm_unknown_model(*, model, **_):
    m.LLM_UNKNOWN_MODEL.labels(model).inc()


def on_llm_repair(*, step, kind, **_):
    m.LLM_REPAIRS.labels(step, kind).inc()


def on_llm_retry(*, model, step, reason, **_):
    m.LLM_RETRIES.labels(model, step, reason).inc()


def on_job_failed(*, queue, actor, error_class, **_):
    """``job_failed`` listener: a job failed for good outside any message (the stale-job reaper)."""
    m.FAILED.labels(queue, actor, str(error_class)).inc()


#: What this middleware counts from ``roastq.events`` (subscribed in every process that builds it).
LISTENERS = {
    "llm_call": on_llm_call,
    "llm_cache": on_llm_cache,
    "llm_step_memo": on_llm_step_memo,
    "llm_budget_exhausted": on_llm_budget_exhausted,
    "llm_rate_limit_wait": on_llm_rate_limit_wait,
    "llm_rate_limit_gate": on_llm_rate_limit_gate,
    "llm_unknown_model": on_llm_unknown_model,
    "llm_repair": on_llm_repair,
    "llm_retry": on_llm_retry,
    "job_failed": on_job_failed,
}


class Metrics(Middleware):
    """Count messages, time attempts, and export everything from one process.

    Metrics (``docs/observability.md`` has the reference): messages enqueued, started, succeeded,
    failed and retried (by error class), cancelled; attempt duration; in-progress and delayed
    gauges; LLM requests, latency, tokens and dollars; the cost layer's response cache, resumed
    steps, budget holds, rate-limit waits and gates, unknown models; and jobs the reaper fails
    (all from ``roastq.events``, ``LISTENERS``). The exporter adds queue depth and age, worker
    liveness and today's LLM spend and cap, read from Postgres per scrape.

    Parameters:
      policy(RetryPolicy): the decision after a failed attempt (shared with ``Retries``).
      exporter(bool): declare the exporter fork (default True). ``METRICS_HOST`` and
        ``METRICS_PORT`` say where it listens.
    """

    def __init__(self, policy: RetryPolicy, *, exporter: bool = True):
        self.policy = policy
        self.exporter = exporter
        self._delayed: dict[str, tuple] = {}  # message id -> its labels, while this worker holds it
        self._booted = False

    @property
    def forks(self):
        if not self.exporter:
            return []
        from observability.exporter import run_exporter  # its own process: imported there

        return [run_exporter]

    # -- process lifecycle ------------------------------------------------------------------

    def _boot(self):
        if not self._booted:
            m.setup_metrics()
            for event, listener in LISTENERS.items():
                events.subscribe(event, listener)
            self._booted = True

    def after_process_boot(self, broker):
        # A dramatiq worker process, before it records anything: clear dead processes' files.
        self._worker_process = True
        m.clean_at_boot()
        self._boot()

    def before_worker_boot(self, broker, worker):
        self._boot()  # a worker embedded in a process (tests, benchmarks): no files to clean

    def after_worker_shutdown(self, broker, worker):
        # The process exits next: its live gauges go. (A worker embedded in a process that lives
        # on, as in tests, keeps them: its gauges are still true.)
        if getattr(self, "_worker_process", False):
            m.mark_dead()
            return
        # Its delay queue went back to the broker with it: it holds none of those messages now.
        for labels in self._delayed.values():
            m.DELAYED.labels(*labels).dec()
        self._delayed.clear()

    # -- enqueue and delay --------------------------------------------------------------------

    def after_enqueue(self, broker, message, delay):
        if not self._booted:
            return  # a process that only sends (an app, the CLI): no metrics of ours there
        if not delay and message.message_id in self._delayed:
            # A worker moving a due message from the delay queue to its queue: not a new send.
            m.DELAYED.labels(*self._delayed.pop(message.message_id)).dec()
            return
        m.ENQUEUED.labels(*_labels(message), "true" if delay else "false").inc()

    def before_delay_message(self, broker, message):
        if not self._booted:
            return
        self._delayed[message.message_id] = _labels(message)
        m.DELAYED.labels(*_labels(message)).inc()

    # -- attempts ----------------------------------------------------------------------------

    def before_process_message(self, broker, message):
        labels = _labels(message)
        message._roastq_started = time.monotonic()
        m.STARTED.labels(*labels).inc()
        m.IN_PROGRESS.labels(*labels).inc()

    def after_process_message(self, broker, message, *, result=None, exception=None):
        if getattr(message, "roastq_backed_off", False):  # JobState: an attempt runs elsewhere
            m.BACKED_OFF.labels(*_labels(message)).inc()
        started = getattr(message, "_roastq_started", None)
        if started is None:
            return
        del message._roastq_started
        labels = _labels(message)
        m.IN_PROGRESS.labels(*labels).dec()
        if exception is None:
            outcome = "succeeded"
            m.SUCCEEDED.labels(*labels).inc()
        else:
            decision = decision_for(message, exception, self.policy)
            outcome = decision.action.outcome
            if decision.action is Action.RETRY:
                m.RETRIED.labels(*labels, str(decision.error_class)).inc()
            elif decision.action is Action.SNOOZE:
                m.SNOOZED.labels(*labels, decision.delay_reason or "unknown").inc()
            elif decision.action is Action.CANCEL:
                m.CANCELLED.labels(*labels).inc()
            else:
                m.FAILED.labels(*labels, str(decision.error_class)).inc()
        m.DURATION.labels(*labels, outcome).observe(time.monotonic() - started)

    def after_skip_message(self, broker, message):
        if getattr(message, "_roastq_started", None) is not None:  # skipped by a later middleware
            del message._roastq_started
            m.IN_PROGRESS.labels(*_labels(message)).dec()
        if message.failed:  # rejected (not a job), or a job lost too often (JobState): a dead letter
            m.FAILED.labels(*_labels(message), getattr(message, "roastq_error_class", "INPUT")).inc()


def _labels(message) -> tuple[str, str]:
    return q_name(message.queue_name), message.actor_name
