"""Actors for the execution-counting stress test (tests/test_stress.py, bench/bench_run_once.py).

Run by real worker processes: ``dramatiq stress_actors --path tests .``. Every execution appends
a ``start`` and an ``end`` (or, when it raised, ``fail``) line (message id, job id or tick, pid, wall-clock time) to the file
``STRESS_LOG`` names, with one ``O_APPEND`` write a line (atomic between processes), so that the
record survives what the test does to the database and to the workers.

``STRESS_BROKER=stock`` builds stock dramatiq-pg's broker (on our pool, with the middleware that
matters here) instead of ours: the same scenario shows what the stock broker does.

Actors (queue ``stress``):
* ``stress_plain(n, work_s)``: a plain actor (no job): ``work_s`` of work, or up to
  ``STRESS_PLAIN_WORK_S`` (20 ms);
* ``stress_job(job_id)``: a job actor; what it does comes from ``stress_plan`` (kind, fails,
  work_s: how long its "LLM call" takes, else 10 to 50 ms):
  ``ok`` saves a result (pipeline.save: evaluation version, job COMPLETED, message done);
  ``transient`` fails with a retried error ``fails`` times first; ``permanent`` fails with
  InputError; ``cancel`` waits for its cancel request, then stops as a cancelled job does;
* ``stress_tick()``: a periodic task's message (``scheduled_at`` option), run once a tick through
  ``roastq.ops.scheduler.run_tick`` however often it is delivered.
"""

from __future__ import annotations

import os
import random
import time

import dramatiq
import psycopg2
from dramatiq.middleware import CurrentMessage

from roastq import db
from roastq.evaluation import pipeline
from roastq.exceptions import InputError, JobCancelled
from roastq.jobctx import current_job, start_error
from roastq.ops import scheduler

QUEUE = "stress"
PLAIN_WORK_S = float(os.environ.get("STRESS_PLAIN_WORK_S", "0.02"))  # a plain message's work, at most


def _stock_broker():
    from dramatiq.middleware import ShutdownNotifications, TimeLimit
    from dramatiq_pg import PostgresBroker

    from middleware.heartbeat import Heartbeat
    from middleware.jobs import JobState
    from middleware.metrics import Metrics
    from middleware.retries import Retries
    from roastq.brokers.postgres import LazyPool
    from roastq.failures import RetryPolicy

    policy = RetryPolicy()

    return PostgresBroker(
        pool=LazyPool(),
        results=False,
        middleware=[
            Retries(policy),
            JobState(policy),
            Metrics(policy, exporter=False),
            TimeLimit(),
            ShutdownNotifications(),
            CurrentMessage(),
            Heartbeat(),
        ],
    )


if os.environ.get("STRESS_BROKER") == "stock":
    broker = _stock_broker()
    dramatiq.set_broker(broker)
else:
    import actors  # noqa: F401  (our broker and middleware stack)

    broker = actors.broker

_log: tuple[int, int] | None = None  # (pid, fd): opened anew in a forked child


def record(phase: str, key: str) -> None:
    global _log
    if _log is None or _log[0] != os.getpid():
        _log = (os.getpid(), os.open(os.environ["STRESS_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
    os.write(_log[1], f"{phase} {key} {os.getpid()} {time.time():.6f}\n".encode())


class _Execution:
    def __init__(self, *keys):
        self.keys = keys

    def __enter__(self):
        for key in self.keys:
            record("start", key)

    def __exit__(self, exc_type, *_):
        for key in self.keys:
            record("end" if exc_type is None else "fail", key)


def _message_key() -> str:
    return "m:" + CurrentMessage.get_current_message().message_id


@dramatiq.actor(queue_name=QUEUE, priority=50)
def stress_plain(n, work_s=None):
    with _Execution(_message_key()):
        time.sleep(random.uniform(0, PLAIN_WORK_S) if work_s is None else work_s)


@dramatiq.actor(queue_name=QUEUE, priority=10, roastq_job=True)
def stress_job(job_id):
    job = current_job.get()
    if job is None or job.job_id != job_id:
        raise start_error.get() or RuntimeError("the job middleware did not start this job")
    with _Execution(_message_key(), "j:" + job_id):
        with db.transaction() as cur:
            cur.execute(
                "SELECT kind, fails, work_s, (SELECT count(*) FROM job_attempts WHERE job_id = %(id)s "
                "AND outcome = 'retried') AS retried FROM stress_plan WHERE job_id = %(id)s",
                {"id": job_id},
            )
            plan = cur.fetchone()
        time.sleep(plan["work_s"] or random.uniform(0.01, 0.05))  # an LLM call's wait
        if plan["kind"] == "transient" and plan["retried"] < plan["fails"]:
            raise psycopg2.OperationalError("stress: a transient failure (retried)")
        if plan["kind"] == "permanent":
            raise InputError("stress: a permanent failure")
        if plan["kind"] == "cancel":
            deadline = time.monotonic() + 60
            while not pipeline.cancel_requested(job_id):
                if time.monotonic() > deadline:
                    raise RuntimeError("stress: no cancel request came")
                time.sleep(0.05)
            raise JobCancelled("cancelled while it ran")
        inputs = pipeline.load_inputs(job_id)
        pipeline.save(
            inputs,
            pipeline.EvaluationResult(summary="stress", analysis="stress", grade=50, highlights=[], self_critique=None),
        )


@dramatiq.actor(queue_name=QUEUE, priority=0)
def stress_tick():
    message = CurrentMessage.get_current_message()
    scheduled_at = message.options["scheduled_at"]

    def task():
        with _Execution("t:" + scheduled_at):
            time.sleep(random.uniform(0.01, 0.05))
        return {}

    with _Execution(_message_key()):
        scheduler.run_tick("stress_tick", scheduled_at, task)
