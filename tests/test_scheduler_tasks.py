"""What each periodic task does: the stale-job reaper, orphan recovery, reconciliation between
jobs and the broker, retention and the daily cost roll-up. Real Postgres, real workers."""

import signal
import time

import psycopg2
import pytest
from dramatiq.message import Message
from dramatiq_pg.broker import message_lock
from helpers import kill_group, one, rows, running_worker, start_workers, wait_for_status, wait_until

from roastq.api import cancel_job, enqueue_evaluation
from roastq.ops import maintenance


@pytest.fixture(autouse=True)
def fast_ops(monkeypatch, broker):
    """Workers are stale after 1.5 s (3 beats of 0.5 s); reconciliation waits 1 s, not 5 min."""
    from helpers import stack_options

    from roastq import settings

    monkeypatch.setenv("HEARTBEAT_INTERVAL_S", "0.5")
    monkeypatch.setenv("RECONCILE_GRACE_S", "1")
    settings.reload_settings()
    with stack_options(broker, heartbeat_interval_s=0.5):
        yield
    monkeypatch.delenv("HEARTBEAT_INTERVAL_S")
    monkeypatch.delenv("RECONCILE_GRACE_S")
    settings.reload_settings()


def a_job(seeded, **kw):
    return enqueue_evaluation(next(iter(seeded.documents.values())), next(iter(seeded.agents.values())), **kw)


def message_of(db, job_id):
    return one(
        db,
        "SELECT q.message_id, q.queue_name, q.state::text FROM jobs j "
        "LEFT JOIN dramatiq.queue q ON q.message_id = j.message_id WHERE j.id = %s",
        job_id,
    )


def running_on_a_dead_worker(db, job_id, *, message_state="consumed", crashes=0, worker="ghost:1"):
    """The state a worker killed mid-job leaves: job RUNNING with its attempt open, its message
    'consumed' and no lock, no heartbeat."""
    with db.cursor() as cur:
        for n in range(1, crashes + 1):
            cur.execute(
                "INSERT INTO job_attempts (job_id, attempt, ended_at, outcome) VALUES (%s, %s, now(), 'crashed')",
                (job_id, n),
            )
        cur.execute(
            "UPDATE jobs SET status = 'RUNNING', attempts = %s, started_at = now() - interval '1 minute', "
            "worker_id = %s WHERE id = %s",
            (crashes + 1, worker, job_id),
        )
        cur.execute(
            "INSERT INTO job_attempts (job_id, attempt, started_at) VALUES (%s, %s, now() - interval '1 minute')",
            (job_id, crashes + 1),
        )
        cur.execute(
            "UPDATE dramatiq.queue SET state = %s WHERE message_id = (SELECT message_id FROM jobs WHERE id = %s)",
            (message_state, job_id),
        )


def hold_lock(database_url, message_id, queue_name):
    """A live worker's session holding the message's advisory lock, as dramatiq-pg takes it."""
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    msg = Message(
        queue_name=queue_name,
        actor_name="evaluate_document",
        args=(),
        kwargs={},
        options={},
        message_id=str(message_id),
    )
    with conn.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(%s)", (message_lock(msg),))
    return conn


# -- the reaper --------------------------------------------------------------------------------


def test_reaper_requeues_the_job_of_a_killed_worker_when_no_worker_survives(db, seeded, sim, broker):
    """kill -9 of the only worker mid-job: the job would stay RUNNING until some worker came
    back. The reaper makes it PENDING, closes the attempt as crashed and requeues its message;
    the next worker runs it once."""
    sim.configure(latency_ms=5000, jitter_ms=0)
    victim = start_workers(threads=1, ANTHROPIC_BASE_URL=sim.url, HEARTBEAT_INTERVAL_S=0.5)
    try:
        job_id = a_job(seeded)
        wait_until(
            lambda: one(db, "SELECT status FROM jobs WHERE id = %s", job_id) == "RUNNING", timeout=30, what="RUNNING"
        )
    finally:
        kill_group(victim, signal.SIGKILL)
        victim.wait()
    time.sleep(1.6)  # three missed beats
    assert maintenance.reap_stale_jobs()["requeued"] == 1
    assert one(db, "SELECT status, worker_id, error_class FROM jobs WHERE id = %s", job_id) == (
        "PENDING",
        None,
        "WORKER_LOST",
    )
    assert rows(db, "SELECT outcome FROM job_attempts WHERE job_id = %s", job_id) == [("crashed",)]
    assert message_of(db, job_id)[2] == "queued"
    sim.configure(latency_ms=5)
    with running_worker(broker, threads=2):
        assert wait_for_status(db, [job_id])[job_id] == "COMPLETED"
    assert [r[0] for r in rows(db, "SELECT outcome FROM job_attempts WHERE job_id = %s ORDER BY attempt", job_id)] == [
        "crashed",
        "completed",
    ]
    assert one(db, "SELECT count(*) FROM evaluation_versions WHERE job_id = %s", job_id) == 1


def test_reaper_sends_a_new_message_when_the_old_one_is_gone(db, seeded, sim, broker):
    job_id = a_job(seeded)
    running_on_a_dead_worker(db, job_id)
    old_message = message_of(db, job_id)[0]
    with db.cursor() as cur:
        cur.execute("DELETE FROM dramatiq.queue WHERE message_id = %s", (old_message,))
    assert maintenance.reap_stale_jobs()["resent"] == 1
    new_message, queue_name, state = message_of(db, job_id)
    assert new_message != old_message and (queue_name, state) == ("interactive", "queued")
    with running_worker(broker, threads=2):
        assert wait_for_status(db, [job_id])[job_id] == "COMPLETED"


def test_reaper_leaves_a_job_whose_worker_still_holds_the_message(db, seeded, database_url):
    """Heartbeat late (a stalled heartbeat thread, a slow database), worker alive: hands off."""
    job_id = a_job(seeded)
    running_on_a_dead_worker(db, job_id)
    message_id, queue_name, _ = message_of(db, job_id)
    worker_session = hold_lock(database_url, message_id, queue_name)
    try:
        assert maintenance.reap_stale_jobs()["alive"] == 1
        assert one(db, "SELECT status FROM jobs WHERE id = %s", job_id) == "RUNNING"
        assert message_of(db, job_id)[2] == "consumed"
        assert one(db, "SELECT count(*) FROM job_attempts WHERE job_id = %s AND ended_at IS NULL", job_id) == 1
    finally:
        worker_session.close()


def test_reaper_leaves_a_job_whose_worker_beats(db, seeded):
    job_id = a_job(seeded)
    running_on_a_dead_worker(db, job_id, worker="alive:7")
    with db.cursor() as cur:
        cur.execute(
            "INSERT INTO worker_heartbeats (worker_id, hostname, pid, threads) VALUES ('alive:7', 'alive', 7, 1)"
        )
    assert maintenance.reap_stale_jobs() == {"requeued": 0, "resent": 0, "failed": 0, "alive": 0}
    assert one(db, "SELECT status FROM jobs WHERE id = %s", job_id) == "RUNNING"


def test_reaper_leaves_a_job_that_just_started(db, seeded):
    """Its worker may not have written its first beat yet."""
    job_id = a_job(seeded)
    running_on_a_dead_worker(db, job_id)
    with db.cursor() as cur:
        cur.execute("UPDATE jobs SET started_at = now() WHERE id = %s", (job_id,))
    assert maintenance.reap_stale_jobs() == {"requeued": 0, "resent": 0, "failed": 0, "alive": 0}
    assert one(db, "SELECT status FROM jobs WHERE id = %s", job_id) == "RUNNING"


def test_reaper_fails_a_job_that_keeps_killing_its_workers(db, seeded):
    job_id = a_job(seeded)
    running_on_a_dead_worker(db, job_id, crashes=2)  # JOB_CRASH_LIMIT is 3: this is the third
    assert maintenance.reap_stale_jobs()["failed"] == 1
    status, error_class, error = one(db, "SELECT status, error_class, error FROM jobs WHERE id = %s", job_id)
    assert (status, error_class) == ("FAILED", "WORKER_LOST") and "died 3 times" in error
    assert message_of(db, job_id)[2] == "rejected"  # a dead letter, like any final failure


# -- orphans -----------------------------------------------------------------------------------


def test_orphans_are_requeued_with_a_notify_and_held_messages_are_not(db, seeded, database_url):
    orphan, held = a_job(seeded), a_job(seeded)
    with db.cursor() as cur:
        cur.execute("UPDATE dramatiq.queue SET state = 'consumed'")
    held_message, queue_name, _ = message_of(db, held)
    worker_session = hold_lock(database_url, held_message, queue_name)
    listener = psycopg2.connect(database_url)
    listener.autocommit = True
    try:
        with listener.cursor() as cur:
            cur.execute('LISTEN "dramatiq.interactive.enqueue"')
        assert maintenance.recover_orphans() == {"requeued": 1}
        assert message_of(db, orphan)[2] == "queued" and message_of(db, held)[2] == "consumed"
        wait_until(lambda: listener.poll() or listener.notifies, timeout=2, what="the NOTIFY")
        assert str(message_of(db, orphan)[0]) in listener.notifies[0].payload
    finally:
        listener.close()
        worker_session.close()


def test_orphan_of_a_running_job_whose_worker_beats_is_left_alone(db, seeded):
    job_id = a_job(seeded)
    running_on_a_dead_worker(db, job_id, worker="alive:7")
    with db.cursor() as cur:
        cur.execute(
            "INSERT INTO worker_heartbeats (worker_id, hostname, pid, threads) VALUES ('alive:7', 'alive', 7, 1)"
        )
    assert maintenance.recover_orphans() == {"requeued": 0}


# -- reconciliation ------------------------------------------------------------------------------


def test_pending_job_without_a_message_gets_one_after_the_grace_period(db, seeded, sim, broker):
    job_id = a_job(seeded)
    with db.cursor() as cur:
        cur.execute("DELETE FROM dramatiq.queue")
    assert maintenance.reconcile_jobs() == {"resent": 0, "retired": 0}  # within the grace period
    time.sleep(1.1)
    assert maintenance.reconcile_jobs() == {"resent": 1, "retired": 0}
    assert maintenance.reconcile_jobs() == {"resent": 0, "retired": 0}  # once
    assert message_of(db, job_id)[2] == "queued"
    with running_worker(broker, threads=2):
        assert wait_for_status(db, [job_id])[job_id] == "COMPLETED"


def test_a_job_sent_by_the_app_under_another_message_id_is_not_sent_again(db, seeded, broker):
    """`actors.evaluate_document.send(job_id)` for a row the app wrote: the row does not name the
    message, but a live message carries the job id."""
    import actors

    job_id = a_job(seeded)
    with db.cursor() as cur:
        cur.execute("DELETE FROM dramatiq.queue")
        cur.execute("UPDATE jobs SET message_id = NULL, updated_at = now() - interval '1 hour'")
    actors.evaluate_document.send(job_id)
    assert maintenance.reconcile_jobs()["resent"] == 0
    assert one(db, "SELECT count(*) FROM dramatiq.queue") == 1


def test_a_retry_waiting_in_the_delay_queue_is_not_sent_again(db, seeded):
    a_job(seeded)
    with db.cursor() as cur:  # as the Retries middleware leaves it: same message, in the .DQ queue
        cur.execute("UPDATE dramatiq.queue SET queue_name = 'interactive.DQ'")
        cur.execute(
            "UPDATE jobs SET updated_at = now() - interval '1 hour', next_attempt_at = now() + interval '1 minute'"
        )
    assert maintenance.reconcile_jobs()["resent"] == 0


def test_messages_of_finished_jobs_are_retired(db, seeded, database_url):
    cancelled, held, pending = a_job(seeded), a_job(seeded), a_job(seeded)
    with db.cursor() as cur:  # cancelled behind the API's back: its message still queued
        cur.execute("UPDATE jobs SET status = 'CANCELLED' WHERE id IN (%s, %s)", (cancelled, held))
        cur.execute(
            "UPDATE dramatiq.queue SET state = 'consumed' WHERE message_id = (SELECT message_id FROM jobs "
            "WHERE id = %s)",
            (held,),
        )
    message_id, queue_name, _ = message_of(db, held)
    worker_session = hold_lock(database_url, message_id, queue_name)  # a worker is skipping it right now
    try:
        assert maintenance.reconcile_jobs() == {"resent": 0, "retired": 1}
    finally:
        worker_session.close()
    assert [message_of(db, j)[2] for j in (cancelled, held, pending)] == ["done", "consumed", "queued"]


def test_cancelled_pending_job_is_not_resent(db, seeded):
    job_id = a_job(seeded)
    cancel_job(job_id)
    with db.cursor() as cur:
        cur.execute("DELETE FROM dramatiq.queue")
        cur.execute("UPDATE jobs SET updated_at = now() - interval '1 hour'")
    assert maintenance.reconcile_jobs() == {"resent": 0, "retired": 0}


# -- retention -----------------------------------------------------------------------------------


def test_retention_deletes_old_finished_messages_and_keeps_jobs(db, seeded):
    jobs = [a_job(seeded) for _ in range(5)]
    states = ["done", "done", "rejected", "rejected", "queued"]
    ages = ["8 days", "1 day", "31 days", "8 days", "60 days"]
    with db.cursor() as cur:
        for job_id, state, age in zip(jobs, states, ages):
            cur.execute(
                "UPDATE dramatiq.queue SET state = %s, mtime = now() - %s::interval WHERE message_id = "
                "(SELECT message_id FROM jobs WHERE id = %s)",
                (state, age, job_id),
            )
        cur.execute(
            "INSERT INTO worker_heartbeats (worker_id, hostname, pid, threads, last_seen_at) VALUES "
            "('gone:1', 'gone', 1, 1, now() - interval '2 days')"
        )
    result = maintenance.enforce_retention(batch=1)  # one row a batch: the loop is exercised
    assert result == {
        "done_messages": 1,
        "dead_letters": 1,
        "relayed_outbox_rows": 0,
        "ticks": 0,
        "dead_heartbeats": 1,
        "expired_results": 0,
    }
    left = {
        str(r[0]): r[1]
        for r in rows(
            db, "SELECT j.id, q.state::text FROM jobs j LEFT JOIN dramatiq.queue q ON q.message_id = j.message_id"
        )
    }
    assert [left[j] for j in jobs] == [None, "done", None, "rejected", "queued"]  # every jobs row kept


# -- costs -----------------------------------------------------------------------------------------


def test_cost_roll_up_sums_tasks_by_day_agent_and_model_and_is_idempotent(db, seeded, worker):
    docs, agents = list(seeded.documents.values()), list(seeded.agents.values())
    jobs = [enqueue_evaluation(docs[i % len(docs)], agents[i % 2]) for i in range(4)]
    wait_for_status(db, jobs)
    expected = rows(
        db,
        """
        SELECT e.agent_id, coalesce(t.model, ''), count(DISTINCT t.job_id), count(*), sum(t.input_tokens),
               sum(t.output_tokens), sum(t.price_usd)
        FROM tasks t JOIN jobs j ON j.id = t.job_id JOIN evaluations e ON e.id = j.evaluation_id
        GROUP BY 1, 2 ORDER BY 1, 2""",
    )
    assert expected and sum(r[6] for r in expected) > 0
    query = (
        "SELECT agent_id, model, jobs, tasks, input_tokens, output_tokens, price_usd FROM cost_daily "
        "WHERE day = (now() AT TIME ZONE 'UTC')::date ORDER BY 1, 2"
    )
    assert maintenance.roll_up_costs()["rows"] == len(expected)
    assert rows(db, query) == expected
    maintenance.roll_up_costs()
    assert rows(db, query) == expected  # recomputed, not added to
