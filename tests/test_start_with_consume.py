"""A consumed batch's jobs start in the statement that consumes their messages (issue 14).

The consume of a job's message makes the job RUNNING with its new attempt, in the same round trip
and commit, for as many messages as the worker has idle threads: the delivery then begins without
a start of its own. Whatever ends such a delivery before its attempt began (a requeue at
shutdown, a consumer closed after an error, a middleware before JobState that stops the message,
another delivery of the job running here) undoes the start: the job is PENDING again as it was,
its attempt not counted and not counted as crashed.
"""

from __future__ import annotations

import time
from collections import deque

import pytest
from helpers import one, rows
from test_run_once import LiveWorker, a_job, take_one

pytestmark = pytest.mark.postgres_broker


@pytest.fixture
def consumer(broker, monkeypatch):
    """A consumer of the interactive queue as a worker with ``threads`` idle threads makes it."""
    from roastq.brokers import postgres

    monkeypatch.setattr(postgres, "ENDED", deque(maxlen=64))  # no delivery has ended lately
    monkeypatch.setattr(postgres, "HELD", set())  # nor does any run (an earlier test's never ended)
    monkeypatch.setattr(postgres, "DELAYED", set())
    made = []

    def make(threads=2, prefetch=4):
        monkeypatch.setattr(broker, "worker_threads", threads)
        made.append(broker.consume("interactive", prefetch=prefetch, timeout=1000))
        return made[-1]

    yield make
    for c in made:
        c.close()


def job_row(db, job_id):
    return one(db, "SELECT status, attempts, worker_id IS NOT NULL FROM jobs WHERE id = %s", job_id)


def test_a_consumed_job_starts_with_its_consume_and_its_delivery_sends_no_start(db, seeded, broker, wire, consumer):
    from middleware.jobs import JobState
    from roastq.failures import RetryPolicy
    from roastq.jobctx import current_job
    from roastq.jobs import started_with_consume

    job_id = a_job(seeded, db)
    c = consumer()
    wire.clear()
    proxy = take_one(c)
    consumed = wire.taken()
    assert sum("UPDATE jobs" in q for q in consumed) == 1, consumed  # in the consume's statement
    assert job_row(db, job_id) == ("RUNNING", 1, True)
    assert rows(db, "SELECT attempt, ended_at IS NULL FROM job_attempts WHERE job_id = %s", job_id) == [(1, True)]
    assert proxy.roastq_started["job_id"] == job_id and job_id in started_with_consume

    wire.clear()
    JobState(RetryPolicy()).before_process_message(broker, proxy)
    assert wire.taken() == []  # no start of its own: not one statement
    ctx = current_job.get()
    assert (ctx.job_id, ctx.attempt) == (job_id, 1)
    assert job_id not in started_with_consume
    current_job.set(None)


def test_no_more_jobs_start_with_a_consume_than_the_worker_has_idle_threads(db, seeded, consumer):
    """A message beyond the idle threads waits in the worker's queue: its job stays PENDING until
    a thread takes it (the jobs table says RUNNING only for what runs)."""
    first, second = a_job(seeded, db), a_job(seeded, db)
    c = consumer(threads=1)
    handed = [take_one(c)]
    assert len(c._ready) == 1, "both messages were taken in one batch"
    handed.append(take_one(c))
    started = [getattr(p, "roastq_started", None) is not None for p in handed]
    assert started == [True, False]
    assert sorted(job_row(db, j)[0] for j in (first, second)) == ["PENDING", "RUNNING"]


def test_jobs_start_with_a_consume_when_threads_free_up_within_a_tenth_of_a_second(db, seeded, consumer):
    """Beyond the idle threads, a job starts with its consume if the worker's deliveries end fast
    enough that a thread takes it within ``START_AHEAD_S`` (a drain of short jobs); not when the
    last delivery ended a while ago (long jobs)."""
    from roastq.brokers import postgres

    first, second = a_job(seeded, db), a_job(seeded, db)
    now = time.monotonic()
    postgres.ENDED.extend(now - 0.001 * i for i in reversed(range(20)))  # 20 in 19 ms: 1,000 a second
    c = consumer(threads=1)
    assert 1 + 90 <= c.starts.__self__.start_room() <= 1 + 100
    handed = [take_one(c), take_one(c)]
    assert [getattr(p, "roastq_started", None) is not None for p in handed] == [True, True]
    postgres.ENDED.clear()
    postgres.ENDED.extend(now - 2.0 - 0.001 * i for i in reversed(range(20)))  # fast, but 2 s ago
    assert c.starts.__self__.start_room() == 1 - len(postgres.HELD)  # the idle threads only
    assert sorted(job_row(db, j)[0] for j in (first, second)) == ["RUNNING", "RUNNING"]


def test_a_requeue_at_shutdown_undoes_the_start_as_if_the_message_was_never_taken(db, seeded, consumer):
    from roastq.jobs import started_with_consume

    job_id = a_job(seeded, db)
    c = consumer()
    proxy = take_one(c)
    assert job_row(db, job_id) == ("RUNNING", 1, True)
    c.requeue([proxy])
    assert job_row(db, job_id) == ("PENDING", 0, False)
    assert one(db, "SELECT count(*) FROM job_attempts WHERE job_id = %s", job_id) == 0
    assert one(db, "SELECT started_at FROM jobs WHERE id = %s", job_id) is None
    assert job_id not in started_with_consume
    again = take_one(consumer())  # the next consumer starts attempt 1, not 2, and no crash
    assert again.roastq_started["attempts"] == 1 and again.roastq_started["crashes"] == 0


def test_a_consumer_closed_with_messages_not_handed_out_undoes_their_starts(db, seeded, consumer):
    """dramatiq closes a consumer that raised (a lost session): what it had taken and not handed
    out is let go, and those jobs are PENDING again; the one handed out runs on."""
    jobs_ = {a_job(seeded, db), a_job(seeded, db)}
    c = consumer(threads=2)
    handed = take_one(c)
    waiting = c._ready[0]
    assert waiting.roastq_started is not None
    c.close()
    assert job_row(db, handed.roastq_started["job_id"]) == ("RUNNING", 1, True)
    (other,) = jobs_ - {handed.roastq_started["job_id"]}
    assert job_row(db, other) == ("PENDING", 0, False)
    assert one(db, "SELECT count(*) FROM job_attempts WHERE job_id = %s", other) == 0


@pytest.mark.parametrize("ending", ["skipped", "failed"])
def test_a_delivery_stopped_before_job_state_undoes_the_start(db, seeded, broker, consumer, ending):
    """A middleware before JobState stops the message (dramatiq's AgeLimit skips it, or a before
    hook raises): JobState's before hook never ran, and its after hook puts the job back."""
    from middleware.jobs import JobState
    from roastq.failures import RetryPolicy

    job_id = a_job(seeded, db)
    proxy = take_one(consumer())
    state = JobState(RetryPolicy())
    if ending == "skipped":
        state.after_skip_message(broker, proxy)
    else:
        state.after_process_message(broker, proxy, exception=RuntimeError("a before hook raised"))
    assert job_row(db, job_id) == ("PENDING", 0, False)
    assert one(db, "SELECT count(*) FROM job_attempts WHERE job_id = %s", job_id) == 0


def test_another_message_of_a_job_started_with_its_consume_backs_off(db, seeded, broker, consumer, database_url):
    """The job started with one message's consume and that delivery waits for its thread: a
    second message of the job (a reconciler's resend) must not start it again on the grounds that
    this worker's job does not run here."""
    from dramatiq import Message, MessageProxy

    from middleware.jobs import AttemptAlive, JobState
    from roastq.failures import RetryPolicy
    from roastq.jobctx import current_job, worker_id

    here = LiveWorker(db, database_url, worker_id=worker_id())
    try:
        job_id = a_job(seeded, db)
        proxy = take_one(consumer())
        state = JobState(RetryPolicy())
        resend = MessageProxy(
            Message(queue_name="interactive", actor_name="evaluate_document", args=(job_id,), kwargs={}, options={})
        )
        with pytest.raises(AttemptAlive):
            state.before_process_message(broker, resend)
        state.after_process_message(broker, resend, exception=AttemptAlive(1.0, "alive"))
        state.before_process_message(broker, proxy)
        assert current_job.get().attempt == 1
        assert job_row(db, job_id) == ("RUNNING", 1, True)
        assert one(db, "SELECT count(*) FROM job_attempts WHERE job_id = %s", job_id) == 1
        current_job.set(None)
    finally:
        here.dies()


def test_a_job_whose_worker_died_starts_with_its_consume_and_counts_the_crash(db, seeded, consumer):
    """A job put back to PENDING after its worker died (the reaper's ``lose``) still has that
    attempt open: the start with the consume closes it as crashed and counts it, as ``start`` does."""
    job_id = a_job(seeded, db)
    with db.cursor() as cur:
        cur.execute("UPDATE jobs SET attempts = 1, error_class = 'WORKER_LOST' WHERE id = %s", (job_id,))
        cur.execute("INSERT INTO job_attempts (job_id, attempt) VALUES (%s, 1)", (job_id,))
    proxy = take_one(consumer())
    assert proxy.roastq_started["attempts"] == 2 and proxy.roastq_started["crashes"] == 1
    assert rows(db, "SELECT attempt, outcome FROM job_attempts WHERE job_id = %s ORDER BY attempt", job_id) == [
        (1, "crashed"),
        (2, None),
    ]


def test_a_cancelled_or_finished_job_is_not_started_by_its_consume(db, seeded, consumer):
    cancelled, finished = a_job(seeded, db), a_job(seeded, db)
    with db.cursor() as cur:
        cur.execute("UPDATE jobs SET cancel_requested_at = now() WHERE id = %s", (cancelled,))
        cur.execute("UPDATE jobs SET status = 'COMPLETED', completed_at = now() WHERE id = %s", (finished,))
    c = consumer(threads=4)
    handed = [take_one(c), take_one(c)]
    assert [getattr(p, "roastq_started", None) for p in handed] == [None, None]
    assert job_row(db, cancelled)[:2] == ("PENDING", 0) and job_row(db, finished)[:2] == ("COMPLETED", 0)


def test_a_message_with_an_eta_is_not_started_with_its_consume(db, seeded, consumer):
    """dramatiq sends every message that carries an eta, a past one too, through the worker's
    delay queue, and enqueues it again from there: started with this consume, the job would be
    RUNNING under a delivery that never runs (and its next delivery would back off from it)."""
    import dramatiq

    job_id = a_job(seeded, db)
    message = dramatiq.Message(
        queue_name="interactive",
        actor_name="evaluate_document",
        args=(job_id,),
        kwargs={},
        options={"eta": int(time.time() * 1000) - 1000},
    )
    with db.cursor() as cur:  # the job's live message is this one, due a second ago
        cur.execute("DELETE FROM dramatiq.queue")
        cur.execute(
            "INSERT INTO dramatiq.queue (queue_name, message_id, state, message) VALUES ('interactive', %s, 'queued', %s)",
            (message.message_id, message.encode().decode()),
        )
        cur.execute("UPDATE jobs SET message_id = %s WHERE id = %s", (message.message_id, job_id))
        cur.execute("SELECT pg_notify('dramatiq.interactive.enqueue', %s)", (message.encode().decode(),))
    proxy = take_one(consumer(threads=4))
    assert proxy.message_id == message.message_id
    assert getattr(proxy, "roastq_started", None) is None
    assert job_row(db, job_id) == ("PENDING", 0, False)
