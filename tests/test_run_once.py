"""A message runs once while its first run is alive (issue 13): regression tests.

* Release after commit: a delivery's advisory lock is freed only once the transaction that
  changed the message's state (ack, nack, requeue) has committed. Stock dramatiq-pg queues the
  release before it runs the update, so a consumer that looks in between finds the message
  'consumed' with a free lock (an orphan, by every rescan's rule) and runs it a second time. The
  tests force that moment: the finishing transaction is held just before its update.
* No second live attempt: a delivery of a job whose attempt is alive on another worker backs off
  (snoozes) and leaves it alone; once that worker is gone it takes over.

The broker tests run against our consumer and stock dramatiq-pg's (``xfail(strict=True)``), as
tests/test_broker.py does.
"""

from __future__ import annotations

import re
import threading
import time

import psycopg2
import psycopg2.extensions
import pytest
from dramatiq_pg.broker import message_lock
from helpers import one, rows, running_worker, wait_for_status, wait_until
from promtext import local, value
from test_broker import drain, make_consumer, put_message

from roastq import db as roastq_db

STOCK = pytest.mark.xfail(strict=True, reason="stock dramatiq-pg 0.12 has this defect")

pytestmark = pytest.mark.postgres_broker

#: The statement that ends a delivery: ack ('done'), nack ('rejected'), requeue ('queued').
FINISHING = re.compile(r"UPDATE\s+\S*queue\S*\s+SET\s+\"?state\"?\s*=\s*'(done|rejected|queued)'", re.I)


class HeldCursor(psycopg2.extensions.cursor):
    """A real cursor that, while ``hold`` is set, stops before a delivery's finishing statement
    until ``go`` is set: the moment between "the consumer lets go" and "the state commits"."""

    hold = threading.Event()
    entered = threading.Event()
    go = threading.Event()

    def execute(self, sql, params=None):
        if self.hold.is_set() and FINISHING.search(sql if isinstance(sql, str) else sql.decode()):
            type(self).entered.set()
            assert type(self).go.wait(10), "the test never let the finishing statement go"
        return super().execute(sql, params)


@pytest.fixture
def held_pool(database_url):
    HeldCursor.hold.clear(), HeldCursor.entered.clear(), HeldCursor.go.clear()
    pool = roastq_db.BlockingPool(6, database_url, cursor_factory=HeldCursor)
    yield pool
    HeldCursor.go.set()
    pool.closeall()


def consumer_on(kind, pool, **kw):
    consumer = make_consumer(kind, **kw)
    consumer.pool = pool
    return consumer


def take_one(consumer, seconds=3.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        message = next(consumer)
        if message is not None:
            return message
    raise AssertionError("the consumer took nothing")


def lock_is_free(database_url, lock) -> bool:
    probe = psycopg2.connect(database_url)
    try:
        with probe.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (lock,))
            return cur.fetchone()[0]  # the probe's session ends here, and its lock with it
    finally:
        probe.close()


@pytest.mark.parametrize("ending", ["ack", "nack"])
@pytest.mark.parametrize("kind", ["ours", pytest.param("stock", marks=STOCK)])
def test_lock_is_released_only_after_the_state_change_commits(db, database_url, held_pool, kind, ending):
    """Consumer A ends its delivery of M while consumer B rescans: B must never take M."""
    a = consumer_on(kind, held_pool, prefetch=4, recovery_interval_s=60)
    b = make_consumer("ours", recovery_interval_s=0.1)
    try:
        m = put_message(db)
        taken = take_one(a)
        assert taken.message_id == m.message_id
        HeldCursor.hold.set()
        ender = threading.Thread(target=getattr(a, ending), args=(taken,))
        ender.start()
        assert HeldCursor.entered.wait(5), f"{ending} never reached its update"
        drain(a, 0.3)  # A's consumer loop runs meanwhile: it frees the locks it has queued
        free_in_between = lock_is_free(database_url, message_lock(m))
        second = drain(b, 0.6)  # B rescans: M is 'consumed', is its lock free?
        HeldCursor.go.set()
        ender.join(10)
        state = one(db, "SELECT state::text FROM dramatiq.queue WHERE message_id = %s", m.message_id)
        assert state == ("done" if ending == "ack" else "rejected")
        assert not free_in_between, "the lock was free while the message was still 'consumed'"
        assert [x.message_id for x in second] == [], "a second consumer took the message: it ran twice"
        drain(a, 0.3)
        assert lock_is_free(database_url, message_lock(m))  # and it is released after the commit
    finally:
        HeldCursor.go.set()
        a.close()
        b.close()


@pytest.mark.parametrize("kind", ["ours", pytest.param("stock", marks=STOCK)])
def test_requeued_message_is_free_for_others_only_after_the_requeue_commits(db, database_url, held_pool, kind):
    """A requeue (worker shutdown) hands the message back: locked until the requeue commits,
    then free at once for another worker (stock keeps the lock until the session ends)."""
    a = consumer_on(kind, held_pool, prefetch=4, recovery_interval_s=60)
    b = make_consumer("ours", recovery_interval_s=0.1)
    try:
        m = put_message(db)
        taken = take_one(a)
        HeldCursor.hold.set()
        requeuer = threading.Thread(target=a.requeue, args=([taken],))
        requeuer.start()
        assert HeldCursor.entered.wait(5), "requeue never reached its update"
        drain(a, 0.2)
        assert not lock_is_free(database_url, message_lock(m))
        HeldCursor.go.set()
        requeuer.join(10)  # (A stops here, as a worker that shuts down does)
        assert [x.message_id for x in drain(b, 1.5)] == [m.message_id]  # B takes it at once
    finally:
        HeldCursor.go.set()
        a.close()
        b.close()


def test_a_message_moved_to_another_queue_is_not_taken_from_the_old_one(db):
    """A retry moves a message to its delay queue (same message id, another lock key): a consumer
    of the first queue still holding a notification of its first enqueue must not take it."""
    from psycopg2.extensions import Notify

    consumer = make_consumer("ours", recovery_interval_s=60)
    try:
        drain(consumer, 0.2)  # listening, nothing pending
        m = put_message(db, queue="interactive.DQ")  # where the retry put it, waiting for its eta
        old = m.copy(queue_name="interactive")
        consumer.notifies.append(Notify(0, consumer.channel, old.encode().decode()))
        assert drain(consumer, 0.3) == []
        assert one(db, "SELECT state::text FROM dramatiq.queue WHERE message_id = %s", m.message_id) == "queued"
    finally:
        consumer.close()


# -- no second live attempt of a job ---------------------------------------------------------------


def a_job(seeded, db):
    from roastq.api import enqueue_evaluation

    agent = one(
        db, "SELECT agent_id FROM agent_versions WHERE self_critique_instructions IS NULL ORDER BY name LIMIT 1"
    )
    return enqueue_evaluation(next(iter(seeded.documents.values())), agent)


class LiveWorker:
    """Another worker process, alive and running a job: its heartbeat row is fresh and its
    session holds its liveness lock (middleware/heartbeat.py)."""

    def __init__(self, db, database_url, worker_id="elsewhere:4242"):
        self.db, self.worker_id = db, worker_id
        self.session = psycopg2.connect(database_url)
        self.session.autocommit = True
        with self.session.cursor() as cur:
            cur.execute(
                "INSERT INTO worker_heartbeats (worker_id, hostname, pid, threads) VALUES (%s, 'elsewhere', 4242, 8)",
                (worker_id,),
            )
            cur.execute("SELECT pg_advisory_lock(hashtextextended('roastq.worker:' || %s, 0))", (worker_id,))
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._beating, daemon=True)
        self._beat.start()

    def _beating(self):
        while not self._stop.wait(0.2):
            with self.session.cursor() as cur:
                cur.execute("UPDATE worker_heartbeats SET last_seen_at = now() WHERE worker_id = %s", (self.worker_id,))

    def runs(self, job_id):
        """The state a worker leaves a job in while its first attempt runs."""
        with self.db.cursor() as cur:
            cur.execute(
                "UPDATE jobs SET status = 'RUNNING', attempts = 1, started_at = now(), worker_id = %s WHERE id = %s",
                (self.worker_id, job_id),
            )
            cur.execute(
                "INSERT INTO job_attempts (job_id, attempt, message_id) "
                "SELECT id, 1, message_id FROM jobs WHERE id = %s",
                (job_id,),
            )

    def dies(self):
        """kill -9: its session ends (and its locks with it); its heartbeat row is left behind."""
        self._stop.set()
        self._beat.join()
        if not self.session.closed:
            self.session.close()


@pytest.fixture
def quick_heartbeat(monkeypatch):
    from roastq import settings

    monkeypatch.setenv("HEARTBEAT_INTERVAL_S", "0.3")  # a back-off is 3 beats: about a second
    settings.reload_settings()
    yield
    monkeypatch.delenv("HEARTBEAT_INTERVAL_S")
    settings.reload_settings()


def test_a_delivery_never_starts_a_second_attempt_beside_a_live_one(
    db, database_url, seeded, sim, broker, quick_heartbeat
):
    """Before: the job start accepted RUNNING, so this delivery closed the live attempt as
    'crashed' and ran the job a second time beside it (the LLM paid twice)."""
    job_id = a_job(seeded, db)
    other = LiveWorker(db, database_url)
    before = local()
    try:
        other.runs(job_id)
        with running_worker(broker, threads=2):
            # The message is delivered here (it is 'queued'), and must back off, again and again.
            wait_until(
                lambda: (
                    value(
                        local(),
                        "roastq_job_deliveries_backed_off_total",
                        queue="interactive",
                        actor="evaluate_document",
                    )
                    - value(
                        before, "roastq_job_deliveries_backed_off_total", queue="interactive", actor="evaluate_document"
                    )
                    >= 2
                    or one(db, "SELECT attempts FROM jobs WHERE id = %s", job_id) > 1
                ),
                timeout=15,
                what="the delivery to back off twice (or start a second attempt)",
            )
            assert one(db, "SELECT attempts FROM jobs WHERE id = %s", job_id) == 1
            assert rows(db, "SELECT attempt, outcome FROM job_attempts WHERE job_id = %s", job_id) == [(1, None)]
            assert [r for r in sim.requests() if r["job_id"] == job_id] == []  # the LLM was not called
            assert one(db, "SELECT status FROM jobs WHERE id = %s", job_id) == "RUNNING"
            # The first attempt's worker dies: the next delivery takes over and finishes the job.
            other.dies()
            assert wait_for_status(db, [job_id], timeout=20)[job_id] == "COMPLETED"
        assert rows(db, "SELECT attempt, outcome FROM job_attempts WHERE job_id = %s ORDER BY attempt", job_id) == [
            (1, "crashed"),
            (2, "completed"),
        ]
        assert one(db, "SELECT count(*) FROM evaluation_versions WHERE job_id = %s", job_id) == 1
    finally:
        other.dies()


def test_a_cancel_request_leaves_a_live_attempt_to_stop_itself(db, database_url, seeded, sim, broker, quick_heartbeat):
    """A delivery of a job whose live attempt was asked to cancel must not mark it CANCELLED
    (and its attempt crashed) under it: the attempt stops at its next step and says so."""
    job_id = a_job(seeded, db)
    other = LiveWorker(db, database_url)
    try:
        other.runs(job_id)
        with db.cursor() as cur:
            cur.execute(
                "UPDATE jobs SET cancel_requested_at = now(), cancel_reason = 'by a test' WHERE id = %s", (job_id,)
            )
        with running_worker(broker, threads=2):
            wait_until(
                lambda: (
                    one(
                        db,
                        "SELECT queue_name FROM dramatiq.queue WHERE message_id = "
                        "(SELECT message_id FROM jobs WHERE id = %s)",
                        job_id,
                    )
                    == "interactive.DQ"
                    or one(db, "SELECT status FROM jobs WHERE id = %s", job_id) != "RUNNING"
                ),
                timeout=15,
                what="the delivery",
            )
            assert one(db, "SELECT status FROM jobs WHERE id = %s", job_id) == "RUNNING"
            assert rows(db, "SELECT attempt, outcome FROM job_attempts WHERE job_id = %s", job_id) == [(1, None)]
            other.dies()
            assert wait_for_status(db, [job_id], timeout=20)[job_id] == "CANCELLED"
    finally:
        other.dies()


def test_a_worker_is_alive_while_its_liveness_session_lives(db, database_url):
    """roastq_worker_alive: the liveness lock decides for a worker that declares one (a kill -9
    frees it at once; late beats do not make a live worker dead); the heartbeat for one that
    does not (an older release), or whose lock predates the server's start."""
    alive = lambda w: one(db, "SELECT roastq_worker_alive(%s, 3)", w)  # noqa: E731
    session = psycopg2.connect(database_url)
    with session.cursor() as cur:
        cur.execute("SELECT pg_advisory_lock(roastq_worker_lock('w:1'))")
    with db.cursor() as cur:
        cur.execute(
            "INSERT INTO worker_heartbeats (worker_id, hostname, pid, threads, lock_since, last_seen_at) "
            "VALUES ('w:1', 'w', 1, 1, now(), now() - interval '1 minute'), "
            "('old:2', 'old', 2, 1, NULL, now()), ('old:3', 'old', 3, 1, NULL, now() - interval '1 minute')"
        )
    assert alive("w:1")  # its beats are late, but its session holds the lock
    session.close()
    wait_until(lambda: not alive("w:1"), timeout=5, what="the lock to be freed")
    assert (alive("old:2"), alive("old:3"), alive("nobody:4"), alive(None)) == (True, False, False, False)


@pytest.mark.parametrize("ending", ["ack", "nack"])
def test_a_delivery_ends_when_its_pooled_session_was_ended_before_the_ack(db, database_url, ending):
    """Postgres ends the pooled session an ack or nack is about to use (a failover, an admin's
    pg_terminate_backend, a network blip): the delivery still ends (its state committed on a fresh
    session, its lock then freed), instead of the message staying 'consumed' under a live
    worker's lock until that worker restarts (found by the stress test: a retried job stalled)."""
    pool = roastq_db.BlockingPool(3, database_url)  # the consumer's two sessions, and the one ended
    a = consumer_on("ours", pool, prefetch=4, recovery_interval_s=60)
    try:
        m = put_message(db)
        taken = take_one(a)
        conn = pool.getconn()
        with conn.cursor() as cur:
            cur.execute("SELECT pg_backend_pid()")
            backend = cur.fetchone()[0]
        conn.commit()
        pool.putconn(conn)
        with db.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(%s)", (backend,))
        wait_until(
            lambda: one(db, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", backend) == 0,
            timeout=5,
            what="the pooled session gone",
        )
        getattr(a, ending)(taken)
        state = one(db, "SELECT state::text FROM dramatiq.queue WHERE message_id = %s", m.message_id)
        assert state == ("done" if ending == "ack" else "rejected")
        drain(a, 0.3)
        assert lock_is_free(database_url, message_lock(m))
    finally:
        a.close()
        pool.closeall()


def test_a_delivery_that_meets_the_attempt_before_just_ending_starts_the_job(db, seeded, monkeypatch):
    """A retry's message can arrive before the attempt that sent it has recorded its end (the
    retry is enqueued by an earlier middleware, and a delay queue hands it back in milliseconds):
    the delivery finds the job RUNNING on a live worker, and by the time it has locked the job row
    to look closer, that attempt has ended and the job is PENDING. The delivery must start the
    job then, not drop its message as 'already PENDING' (found by the stress test: a transiently
    failing job left PENDING with no message, for good)."""
    from dramatiq import Message

    from middleware.jobs import JobState, _Deliveries
    from roastq import jobs
    from roastq.failures import RetryPolicy

    job_id = a_job(seeded, db)
    with db.cursor() as cur:  # attempt 1 runs on another, live worker
        cur.execute(
            "INSERT INTO worker_heartbeats (worker_id, hostname, pid, threads, last_seen_at) "
            "VALUES ('other:1', 'other', 1, 8, now())"
        )
        cur.execute("UPDATE jobs SET status = 'RUNNING', attempts = 1, worker_id = 'other:1' WHERE id = %s", (job_id,))
        cur.execute("INSERT INTO job_attempts (job_id, attempt) VALUES (%s, 1)", (job_id,))

    real_lock = jobs.lock

    def attempt_ends_first(cur, locked_id):
        with db.cursor() as other:  # the other worker records attempt 1's end (committed: autocommit)
            other.execute(
                "UPDATE jobs SET status = 'PENDING', worker_id = NULL, next_attempt_at = now() WHERE id = %s",
                (locked_id,),
            )
            other.execute(
                "UPDATE job_attempts SET ended_at = now(), outcome = 'retried' WHERE job_id = %s AND attempt = 1",
                (locked_id,),
            )
        return real_lock(cur, locked_id)

    monkeypatch.setattr(jobs, "lock", attempt_ends_first)
    message = Message(queue_name="interactive", actor_name="evaluate_document", args=(job_id,), kwargs={}, options={})
    started = JobState(RetryPolicy())._start(message, job_id, _Deliveries())
    assert started is not None, "the delivery dropped the message of a PENDING job"
    assert one(db, "SELECT status FROM jobs WHERE id = %s", job_id) == "RUNNING"
    assert one(db, "SELECT attempts FROM jobs WHERE id = %s", job_id) == 2


def test_a_consumer_restarted_after_an_error_lets_go_of_what_it_had_not_handed_out(db, database_url):
    """dramatiq restarts a consumer that raised (its listening session ended, say) by closing it
    and making a new one. Messages it had taken but not yet handed out must be free for the next
    consumer: stock's close() puts the consuming session back in the pool with their advisory
    locks still held, and no consumer can take them until that pooled session ends (found by the
    stress test: a batch of messages that never ran)."""
    a = make_consumer("ours", prefetch=4, recovery_interval_s=60)
    b = None
    try:
        first, second = put_message(db, notify=True), put_message(db, notify=True)
        handed = take_one(a)
        other = second if handed.message_id == first.message_id else first
        assert a._ready and a._ready[0].message_id == other.message_id, "the batch held one back"
        a.close()
        assert lock_is_free(database_url, message_lock(other)), "its lock outlived the consumer"
        b = make_consumer("ours", prefetch=4, recovery_interval_s=0.1)
        assert [m.message_id for m in drain(b, 1.0)] == [other.message_id]
    finally:
        a.close()
        if b is not None:
            b.close()


def _deliver_at_once(broker, state, deliveries):
    """Each (job_id, message) delivered on a thread of its own, all released together; the
    outcome of each JobState.before_process_message, in order."""
    from dramatiq.middleware import SkipMessage

    from middleware.jobs import AttemptAlive
    from roastq.jobctx import current_job

    barrier = threading.Barrier(len(deliveries))
    outcomes = [None] * len(deliveries)

    def deliver(i, message):
        barrier.wait()
        try:
            state.before_process_message(broker, message)
            ctx = current_job.get()
            outcomes[i] = ("started", ctx.job_id, ctx.attempt)
        except AttemptAlive:
            outcomes[i] = ("backed off",)
        except SkipMessage:
            outcomes[i] = ("skipped",)

    threads = [threading.Thread(target=deliver, args=(i, m)) for i, (_, m) in enumerate(deliveries)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return outcomes


def test_two_deliveries_of_one_job_starting_at_once_run_it_once(db, seeded, broker, database_url):
    """Two messages of one job (a reconciler's resend beside the first, say) handed to two
    threads of one worker at the same moment: one starts the job, the other backs off. Each
    job's deliveries start one at a time in a worker, so neither can take the other's RUNNING
    row for an attempt of this worker that has ended (before, a delivery was marked running only
    after its start had returned, and two at once could both start the job)."""
    from dramatiq import Message, MessageProxy

    from middleware.jobs import JobState
    from roastq.failures import RetryPolicy
    from roastq.jobctx import worker_id

    here = LiveWorker(db, database_url, worker_id=worker_id())  # this worker is alive
    try:
        for _ in range(5):
            job_id = a_job(seeded, db)
            state = JobState(RetryPolicy())
            messages = [
                MessageProxy(
                    Message(
                        queue_name="interactive", actor_name="evaluate_document", args=(job_id,), kwargs={}, options={}
                    )
                )
                for _ in range(2)
            ]
            outcomes = _deliver_at_once(broker, state, [(job_id, m) for m in messages])
            assert sorted(o[0] for o in outcomes) == ["backed off", "started"], outcomes
            assert one(db, "SELECT attempts FROM jobs WHERE id = %s", job_id) == 1
            assert one(db, "SELECT count(*) FROM job_attempts WHERE job_id = %s", job_id) == 1
            assert state._here[job_id].count == 2 and state._here[job_id].running  # until their ends
            for m in messages:
                state.after_process_message(broker, m, exception=None if hasattr(m, "roastq_job") else RuntimeError())
            assert not state._here
    finally:
        here.dies()


def test_twenty_deliveries_of_twenty_jobs_at_once_each_start_their_own_job(db, seeded, broker):
    """Twenty deliveries of twenty jobs at once: every job starts once, on its own delivery, with
    its own attempt (the counting of deliveries by job must not mix jobs up)."""
    from dramatiq import Message, MessageProxy

    from middleware.jobs import JobState
    from roastq.api import enqueue_evaluations
    from roastq.failures import RetryPolicy

    agent = one(
        db, "SELECT agent_id FROM agent_versions WHERE self_critique_instructions IS NULL ORDER BY name LIMIT 1"
    )
    job_ids = enqueue_evaluations([(next(iter(seeded.documents.values())), agent)] * 20)
    state = JobState(RetryPolicy())
    deliveries = [
        (
            j,
            MessageProxy(
                Message(queue_name="interactive", actor_name="evaluate_document", args=(j,), kwargs={}, options={})
            ),
        )
        for j in job_ids
    ]
    outcomes = _deliver_at_once(broker, state, deliveries)
    assert outcomes == [("started", j, 1) for j in job_ids]
    assert rows(db, "SELECT status, attempts, worker_id IS NOT NULL FROM jobs") == [("RUNNING", 1, True)] * 20
    assert one(db, "SELECT count(*) FROM job_attempts WHERE ended_at IS NULL") == 20
