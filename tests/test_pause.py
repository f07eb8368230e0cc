"""The system pause: while paused no attempt starts, jobs wait (no attempt used, nothing fails);
on resume they run. Real workers, the simulator over HTTP."""

import signal
import time

import pytest
from helpers import kill_group, one, rows, start_workers, wait_for_status, wait_until

from roastq.api import enqueue_evaluation
from roastq.ops import pause


@pytest.fixture(autouse=True)
def short_snooze(monkeypatch, broker):
    from helpers import stack_options

    from roastq import settings

    monkeypatch.setenv("PAUSE_SNOOZE_S", "0.3")
    settings.reload_settings()
    with stack_options(broker, pause_snooze_s=0.3):
        yield
    pause.resume()
    monkeypatch.delenv("PAUSE_SNOOZE_S")
    settings.reload_settings()


def a_job(seeded, **kw):
    return enqueue_evaluation(next(iter(seeded.documents.values())), next(iter(seeded.agents.values())), **kw)


def test_paused_jobs_wait_without_using_attempts_and_run_on_resume(db, seeded, sim, worker):
    pause.pause("provider incident")
    jobs = [a_job(seeded), a_job(seeded, priority="batch")]
    # The messages come back every ~0.3 s and are held each time: the rows say why they wait.
    wait_until(
        lambda: one(db, "SELECT count(*) FROM jobs WHERE error_class = 'SNOOZED'") == 2,
        timeout=10,
        what="the jobs to be held",
    )
    time.sleep(1.5)  # several snooze rounds
    assert rows(db, "SELECT DISTINCT status, attempts, error FROM jobs") == [
        ("PENDING", 0, "system paused: provider incident")
    ]
    assert one(db, "SELECT count(*) FROM job_attempts") == 0
    assert sim.requests() == []  # no LLM call
    assert one(db, "SELECT count(*) FROM dramatiq.queue WHERE state IN ('queued', 'consumed')") == 2  # still live
    pause.resume()
    assert set(wait_for_status(db, jobs, timeout=30).values()) == {"COMPLETED"}
    assert rows(db, "SELECT DISTINCT attempts, error_class FROM jobs") == [(1, None)]
    assert rows(db, "SELECT DISTINCT outcome FROM job_attempts") == [("completed",)]


def test_a_running_job_finishes_when_the_system_is_paused(db, seeded, sim, worker):
    sim.configure(latency_ms=800, jitter_ms=0)
    job_id = a_job(seeded)
    wait_until(lambda: one(db, "SELECT status FROM jobs WHERE id = %s", job_id) == "RUNNING", what="RUNNING")
    pause.pause("maintenance window")
    assert wait_for_status(db, [job_id])[job_id] == "COMPLETED"
    later = a_job(seeded)
    wait_until(
        lambda: one(db, "SELECT error_class FROM jobs WHERE id = %s", later) == "SNOOZED",
        timeout=10,
        what="the next job to be held",
    )
    assert one(db, "SELECT status, attempts FROM jobs WHERE id = %s", later) == ("PENDING", 0)


def test_pause_is_read_by_worker_processes(db, seeded, sim):
    """The pause lives in the database: a `dramatiq actors` pool started before it holds its jobs."""
    workers = start_workers(threads=2, ANTHROPIC_BASE_URL=sim.url, PAUSE_SNOOZE_S=0.3)
    try:
        wait_until(lambda: one(db, "SELECT count(*) FROM worker_heartbeats") == 1, timeout=30, what="the worker")
        pause.pause("from another host", by="ops@elsewhere")
        job_id = a_job(seeded)
        wait_until(
            lambda: one(db, "SELECT error_class FROM jobs WHERE id = %s", job_id) == "SNOOZED",
            timeout=10,
            what="the job to be held",
        )
        assert pause.state()["by"] == "ops@elsewhere"
        assert pause.resume()["reason"] == "from another host"
        assert wait_for_status(db, [job_id], timeout=30)[job_id] == "COMPLETED"
        assert one(db, "SELECT attempts FROM jobs WHERE id = %s", job_id) == 1
    finally:
        kill_group(workers, signal.SIGKILL)
        workers.wait()
    assert pause.resume() is None  # resuming twice is harmless


def _in_threads(n, fn):
    """``fn`` in ``n`` threads released together; their results (or exceptions), in order."""
    import threading

    barrier, out = threading.Barrier(n), [None] * n

    def run(i):
        barrier.wait()
        try:
            out[i] = fn()
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads), "a reader of the pause never returned"
    return out


def test_a_burst_after_the_cached_pause_expired_reads_it_once(db, wire):
    """A worker idle for a second, then handed 500 messages at once: each thread asked the
    database itself, 500 round trips queued behind the pool (50 to 100 ms before each job of the
    burst). Now one thread reads it and the others wait for that read."""
    pause.pause("provider incident")  # and forgets what this process had cached
    wire.clear()
    seen = _in_threads(50, pause.current)
    reads = [q for q in wire.taken() if "system_state" in q]
    assert len(reads) == 1, reads
    assert all(isinstance(s, dict) and s["reason"] == "provider incident" for s in seen), seen
    pause.resume()
    assert _in_threads(20, pause.current) == [None] * 20  # a resume is seen at once in this process


def test_a_failed_read_of_the_pause_fails_each_reader_and_none_waits_forever(db, database_url, monkeypatch):
    import psycopg2

    from roastq import db as roastq_db
    from roastq import settings

    pause._forget()
    monkeypatch.setenv("DATABASE_URL", "postgresql://postgres@127.0.0.1:9/nowhere?connect_timeout=2")
    settings.reload_settings()
    roastq_db.reset()
    try:
        seen = _in_threads(20, pause.current)
    finally:
        monkeypatch.setenv("DATABASE_URL", database_url)
        settings.reload_settings()
        roastq_db.reset()
    assert all(isinstance(s, psycopg2.OperationalError) for s in seen), seen
    assert pause.current() is None  # the database back: read again, not a cached failure
