"""Our Postgres broker: dramatiq-pg, kept as the dependency, with its measured defects fixed.

What differs from stock dramatiq-pg 0.12 (docs/architecture.md, "The broker", lists the defects):

* one shared, blocking connection pool (``roastq.db.pool``) sized from the worker's threads and
  queues: exhaustion waits instead of raising, so no ack is lost (defect 2);
* the consumer's backoff resets as soon as a processing slot frees (defect 1);
* a consumer reads the notifications that arrive at every turn, also while its worker is full:
  stock leaves the socket unread then, and the server drops the connection and its notifications;
* requeued messages are announced with NOTIFY (defect 3), and every consumer rescans its queue
  for orphaned messages every ``RECOVERY_INTERVAL_S`` seconds instead of at random about every
  five minutes; a message whose worker is alive is never taken: its advisory lock is held, and
  when Postgres dropped that session anyway, the worker's heartbeat and liveness lock still say
  it runs (``roastq_worker_alive``, migration 0010);
* a delivery's lock is freed only after the transaction that ends it (ack, nack, requeue) has
  committed; stock queues the release first, and a rescan in between runs the message twice;
* enqueue can run on the caller's cursor, so a job row and its message commit together;
* a consumed batch's jobs start in the statement that consumes their messages (``CONSUME``), as
  many as a thread of the worker takes within ``START_AHEAD_S`` (``RoastqBroker.start_room``): a
  delivery then needs no round trip of its own to begin;
* results of ``store_results=True`` actors work (roastq/brokers/results.py; stock builds them
  on a pool of its own and returns a failure as a dict).
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from contextlib import contextmanager
from queue import Empty

import dramatiq
import psycopg2
from dramatiq.common import compute_backoff, dq_name, q_name
from dramatiq.message import Message
from dramatiq.middleware import Middleware
from dramatiq.results import Results
from dramatiq_pg import PostgresBroker
from dramatiq_pg.broker import QUERIES, PostgresConsumer, message_lock
from dramatiq_pg.utils import raise_connection_error, tidy4json, transaction, wait_for_notifies
from psycopg2.extensions import Notify
from psycopg2.extras import Json

from roastq import db, jobs
from roastq.brokers.results import PostgresResults
from roastq.jobctx import worker_id, worker_stale_after_s
from roastq.queues import JOB_QUEUES, LANE_SUFFIX
from roastq.settings import get_settings
from roastq.sql import load_queries

#: Suffix of the queue where a job's message is parked while the batch lane has one of its steps.
PARK_SUFFIX = ".lane"
#: tries of a delivery's end (ack, nack) when its pooled session is lost
FINISH_TRIES = 4
#: What a job started with its consume carries to the job middleware (``proxy.roastq_started``):
#: the fields of ``jobs.start``'s row, and the job's id.
START_FIELDS = ("job_id", "attempts", "evaluation_id", "agent_id", "time_limit_s", "retry_on_timeout", "crashes")

logger = logging.getLogger("roastq.brokers.postgres")

PQ = load_queries("postgres.sql", __package__)
#: A batch's consume, and the start of its messages' jobs, in one statement.
CONSUME = f"{PQ.consume},\n{jobs.START_PIECE}\n{PQ.consume_rows}"


# Requeue (on worker shutdown) as dramatiq-pg does, but NOTIFY listeners so that a running worker
# picks the messages up at once rather than at its next poll.
REQUEUE_NOTIFY = """
WITH requeued AS (
    UPDATE dramatiq.queue SET state = 'queued', mtime = (NOW() AT TIME ZONE 'UTC')
    WHERE message_id IN %s
    RETURNING queue_name, message_id, message
)
SELECT pg_notify('dramatiq.' || queue_name || '.enqueue',
    CASE WHEN octet_length(message::text) >= 8000
    THEN jsonb_build_object('message_id', message_id)::text
    ELSE message::text END)
FROM requeued;
"""


#: Messages this process has taken and not yet finished (acked, nacked, requeued), whatever
#: consumer took them: a consumer that dramatiq restarts (after a lost connection) starts with an
#: empty ``in_processing`` while the worker threads still run what the old one handed out.
HELD: set[str] = set()
#: Of those, the ones waiting for their eta in dramatiq's delay queue (they use no thread).
DELAYED: set[str] = set()
#: When this process's last deliveries ended (monotonic): the rate at which its threads free up.
ENDED: deque[float] = deque(maxlen=64)
#: Notifications a consumer keeps in memory while its worker is busy (about 600 bytes each); the
#: messages of any beyond them are found by a rescan of the queue.
MAX_NOTIFIES = 20_000
#: A job may start with its consume if a thread should take it within this many seconds: at once
#: when a thread is idle, else once the deliveries ahead of it have ended at the recent rate.
START_AHEAD_S = 0.1


class RoastqConsumer(PostgresConsumer):
    def __init__(self, *, recovery_interval_s: float, starts=None, **kw):
        super().__init__(**kw)
        #: which of a batch's messages may start their jobs with the consume (``(message_id,
        #: job_id)`` pairs); None: none
        self.starts = starts
        self.timeout = kw["timeout"] / 1000  # seconds, as a float: stock floors 100 ms to a busy 0
        self.recovery_interval_s = recovery_interval_s
        self._next_rescan = time.monotonic() + recovery_interval_s
        self.channel = f"dramatiq.{self.queue_name}.enqueue"
        self._ready: deque[dramatiq.MessageProxy] = deque()  # consumed, not yet handed out
        # Handed out with an eta (a delay queue's messages): they wait in dramatiq's in-memory
        # delay queue until their eta, and only there.
        self._delayed: set[str] = set()

    def close(self):
        # Taken but never handed out: this process lets go of them (a rescan takes them again).
        self._unstart(self._ready)
        for proxy in self._ready:
            self._let_go(proxy.message_id)
        self._ready.clear()
        # Handed out to wait for their eta and not finished: dramatiq forgets its delay queue when
        # a consumer raises a ConnectionError (a terminated backend), without requeueing it, and
        # then closes the consumer. Held, they could be taken by no consumer until the worker
        # restarts (the stress test's "message never succeeded"); let go, the next consumer's
        # scan takes them again (they are 'consumed' by this worker, and their locks go with the
        # consuming connection below). After a normal close they were requeued already.
        for message_id in list(self._delayed):
            self._let_go(message_id)
        # The listening connection is closed, not pooled: its LISTEN would outlive this consumer
        # and hand another consumer notifications for a queue it does not serve.
        if self._listen_conn is not None:
            self.pool.putconn(self._listen_conn, close=True)
            self._listen_conn = None
        # The consuming connection is closed too: its session holds the advisory locks of what
        # this consumer took. Pooled (as stock does), the locks would outlive the consumer, and
        # the messages taken but not handed out could be taken by no one until that pooled
        # session ended. Messages still running keep their place: their worker is alive. The
        # locks are released first, in a round trip: a closed session's go only as its backend
        # exits, a moment after the client has gone, and the next consumer may look before that.
        if self._consume_conn is not None:
            conn, self._consume_conn = self._consume_conn, None
            try:
                if conn.closed == 0:
                    with conn.cursor() as curs:
                        curs.execute("SELECT pg_advisory_unlock_all()")
            except psycopg2.Error:  # a broken session: its locks go as its backend ends
                pass
            self.pool.putconn(conn, close=True)
        super().close()

    def get_consume_conn(self):
        """Stock's consuming connection, in autocommit: each of its statements (the batch's
        consume, a lock release) is one round trip that is its own commit, where stock's
        transaction sends BEGIN and COMMIT each on its own (two more). None of them needs
        another's atomicity: the advisory locks are the session's, not the transaction's."""
        conn = super().get_consume_conn()
        if not conn.autocommit:
            conn.autocommit = True  # closed, never pooled, when this consumer closes (close())
        return conn

    def fetch_pending_notifies(self):
        """The rescan: the queue's live messages, as notifications. Stock reads every one, so that
        a backlog of a million messages was a million payloads in memory; here no more than
        ``MAX_NOTIFIES``, and when that many came back, another rescan follows as soon as they
        are taken (as after notifications dropped beyond that number)."""
        conn = self.get_listen_conn()
        with transaction(conn) as curs:
            curs.execute(PQ.fetch_pending, {"queue": self.queue_name, "limit": MAX_NOTIFIES})
            rows = curs.fetchall()
        if len(rows) >= MAX_NOTIFIES:
            self._next_rescan = 0.0
        return [Notify(0, self.channel, payload) for (payload,) in rows]

    @raise_connection_error
    def poll_for_notify(self):
        """Wait for notifications, unless some are in already. Stock waits on the socket after
        ``get_listen_conn`` has checked the connection, and that check (``conn.poll()``) reads
        what has arrived into psycopg2's list: the socket is then empty, and messages notified
        while this consumer was busy waited a whole timeout (dramatiq's 1 s) to be taken."""
        conn = self.get_listen_conn()
        if conn.notifies:
            self.notifies += conn.notifies[:]
            conn.notifies[:] = []
            return
        self.notifies += wait_for_notifies(conn, self.timeout)

    @contextmanager
    def _consume_cursor(self):
        """A cursor on the consuming connection, each statement its own commit (not psycopg2's
        ``with conn``, which sends BEGIN even in autocommit)."""
        with self.get_consume_conn().cursor() as curs:
            yield curs

    @raise_connection_error
    def __next__(self):
        if self.unlock_q.qsize() >= 64:
            # Stock releases advisory locks only when idle: a long backlog would pile up
            # thousands of them and exhaust Postgres's shared lock table.
            self.purge_locks()
        if self._ready:
            return self._hand_out()
        if self._listen_conn is None:
            self.notifies = self.fetch_pending_notifies()
        else:
            self._read_notifications()

        free = self.prefetch - len(self.in_processing)
        if free <= 0:
            self.misses, backoff_ms = compute_backoff(self.misses, max_backoff=100)
            time.sleep(backoff_ms / 1000)
            return None
        self.misses = 0  # a slot is free: the next wait starts short again

        # Wait for notifications only when no rescan is due: once those kept have run out, the
        # messages of the ones dropped beyond MAX_NOTIFIES are in the table, and no notification
        # will come for them.
        if not self.notifies and self._next_rescan != 0.0:
            self.poll_for_notify()

        now = time.monotonic()
        if not self.notifies and now >= self._next_rescan:
            # Orphans: messages left 'consumed' by a dead worker, whose advisory lock died with
            # its connection. Only those whose lock is free are taken.
            self._next_rescan = now + self.recovery_interval_s
            self.notifies[:] = self.fetch_pending_notifies()

        if self.notifies:
            self._consume_batch(free)
            if self._ready:
                return self._hand_out()

        self.purge_locks()
        return None

    def _read_notifications(self) -> None:
        """Move the notifications that have arrived on the listening connection into memory,
        without waiting: at every turn, a slot free or not. Stock reads the socket only when a
        slot is free, so a worker that falls behind leaves it unread: it fills, and once what the
        server sends has waited ``tcp_user_timeout`` (10 s) the server drops the connection,
        losing the notifications sent meanwhile: their messages then waited for a rescan (the 300/s
        run beside an idle-in-transaction session: p99 95 s in its worst minute). Beyond
        ``MAX_NOTIFIES`` kept, the newest are dropped and the queue is rescanned once the rest
        are taken (their messages wait in the table)."""
        conn = self._listen_conn
        for _ in range(1000):  # each poll reads what one read of the socket brings: until none
            conn.poll()
            if not conn.notifies:
                return
            self.notifies += conn.notifies[:]
            conn.notifies[:] = []
            if len(self.notifies) > MAX_NOTIFIES:
                del self.notifies[MAX_NOTIFIES:]
                self._next_rescan = 0.0

    def _let_go(self, message_id: str) -> None:
        """This process no longer holds the message (finished, requeued, or forgotten)."""
        self.in_processing.discard(message_id)
        HELD.discard(message_id)
        DELAYED.discard(message_id)
        self._delayed.discard(message_id)

    def _hand_out(self) -> dramatiq.MessageProxy:
        proxy = self._ready.popleft()
        if "eta" in proxy.options:
            self._delayed.add(proxy.message_id)
            DELAYED.add(proxy.message_id)
        return proxy

    @staticmethod
    def _unstart(proxies) -> None:
        """Undo the starts made with the consume of ``proxies`` that never began (requeued, or
        never handed out): their jobs are PENDING again (``jobs.unstart``). A failure (the
        database is gone) is logged, not raised: the job's next delivery then takes it over as
        from a worker that no longer runs it, its attempt counted as crashed."""
        try:
            jobs.unstart(None, proxies, worker_id=worker_id())
        except psycopg2.Error as exc:
            logger.warning("could not undo the start of jobs whose messages were let go: %s", exc)

    def _consume_batch(self, limit: int) -> None:
        """Take up to ``limit`` notified messages in one round trip (stock: one a message, from
        one consumer thread a queue: the ceiling of a busy worker)."""
        found: dict[str, Message] = {}
        by_id: list[str] = []
        while self.notifies and len(found) + len(by_id) < limit:
            notify = self.notifies.pop(0)
            if notify.channel != self.channel:
                continue  # not ours (a pooled connection may carry an old LISTEN)
            if "kwargs" in notify.payload:
                message = Message.decode(notify.payload.encode("utf-8"))
                if message.message_id not in HELD:
                    found.setdefault(message.message_id, message)
            else:
                message_id = json.loads(notify.payload)["message_id"]
                if message_id not in HELD and message_id not in found:
                    by_id.append(message_id)
        with self._consume_cursor() as curs:
            if by_id:
                curs.execute(db.Q.broker_fetch_by_ids, {"ids": by_id})
                for (payload,) in curs.fetchall():
                    message = Message.decode(payload.encode("utf-8"))
                    found.setdefault(message.message_id, message)
            if not found:
                return
            starts = self.starts(list(found.values())) if self.starts is not None else []
            ids = list(found)
            db.execute_prepared(  # the hottest statement of a busy worker: planned once a session
                curs,
                CONSUME,
                {
                    "ids": ids,
                    "locks": [message_lock(found[i]) for i in ids],
                    "queue": self.queue_name,
                    "consumer_id": worker_id(),
                    "stale_after_s": worker_stale_after_s(),
                    **jobs.start_piece(starts),
                },
            )
            outcome = {str(row[0]): row for row in curs.fetchall()}
            for message_id in ids:  # keep the order the notifications came in
                _, lock, consumed, job_id, *start = outcome.get(message_id, (None, None, False, None))
                if consumed:
                    self.in_processing.add(message_id)
                    HELD.add(message_id)
                    proxy = dramatiq.MessageProxy(found[message_id])
                    if job_id is not None:  # its job started with the consume (JobState takes it)
                        proxy.roastq_started = dict(zip(START_FIELDS, (str(job_id), *start), strict=True))
                        jobs.started_with_consume.add(str(job_id))
                    self._ready.append(proxy)
                elif lock is not None:
                    # Locked, but finished by another worker in between: let go at once.
                    curs.execute("SELECT pg_advisory_unlock(%s)", (lock,))

    @raise_connection_error
    def fetch_by_id(self, message_id):
        with self._consume_cursor() as curs:
            curs.execute(QUERIES.FETCH_BY_ID, (message_id,))
            row = curs.fetchone()
            return row[0] if row else None

    @raise_connection_error
    def purge_locks(self):
        """Release the advisory locks of finished messages, all in one statement."""
        locks = []
        while True:
            try:
                locks.append(message_lock(self.unlock_q.get(block=False)))
            except Empty:
                break
            self.unlock_q.task_done()
        if locks:
            with self._consume_cursor() as curs:
                curs.execute("SELECT pg_advisory_unlock(l) FROM unnest(%s::bigint[]) AS l", (locks,))

    def ack(self, message):
        if not getattr(message, "roastq_acked", False):  # else: marked done in the job's result transaction
            self._finish(QUERIES.ACK, message)
        self._release_after_commit(message)

    def nack(self, message):
        self._finish(QUERIES.NACK, message)
        self._release_after_commit(message)

    @raise_connection_error
    def _finish(self, query, message):
        """Stock ack/nack, less their flaw: they queue the lock's release before their update
        commits, and a consumer that rescans in between finds the message 'consumed' with a free
        lock, an orphan by every rule, and runs it again (issue 13). Here the release is queued
        by the caller, once this transaction has committed.

        A pooled session that Postgres ended (a failover, a terminated backend, a network blip)
        is discarded and the update tried again on a fresh one, a few times: left undone, the
        message would stay 'consumed' under this live worker's lock until it restarts. Both
        updates are guarded by the state they leave, so a retry after an unknown outcome is safe."""
        channel = f"dramatiq.{message.queue_name}.ack"
        params = (Json(tidy4json(message)), message.message_id, message.queue_name, channel, message.message_id)
        for attempt in range(FINISH_TRIES):
            try:
                with transaction(self.pool) as curs:
                    curs.execute(query, params)
                return
            except (psycopg2.OperationalError, psycopg2.InterfaceError):
                if attempt == FINISH_TRIES - 1:
                    raise
                logger.warning("ending message %s: its session was lost; again on a fresh one", message.message_id)
                time.sleep(0.05 * 2**attempt)

    def _release_after_commit(self, message):
        ENDED.append(time.monotonic())
        self.unlock_q.put_nowait(message)
        self._let_go(message.message_id)

    @raise_connection_error
    def requeue(self, messages):
        """Hand messages back (worker shutdown) with a NOTIFY, then free their locks at once so
        that another worker takes them now, not when this session ends."""
        messages = list(messages)
        if not messages:
            return
        try:
            self._unstart(messages)  # jobs started with their consume: PENDING again
            with self._consume_cursor() as curs:
                curs.execute(REQUEUE_NOTIFY, (tuple(m.message_id for m in messages),))
            with self._consume_cursor() as curs:  # committed: now the locks may go
                curs.execute(
                    "SELECT pg_advisory_unlock(l) FROM unnest(%s::bigint[]) AS l",
                    ([message_lock(m) for m in messages],),
                )
        finally:  # requeued, or lost from memory if that failed: a rescan takes them again
            for message in messages:
                self._let_go(message.message_id)


class RoastqBroker(PostgresBroker):
    """dramatiq-pg's broker on our shared pool, with the fixed consumer."""

    def __init__(self, *, middleware=None):
        super().__init__(pool=LazyPool(), results=False, middleware=middleware)
        self.recovery_interval_s = get_settings().recovery_interval_s
        self.worker_threads = 0  # known at worker boot (SizePool); none: no job starts with a consume
        self.add_middleware(SizePool())
        # Results of store_results=True actors, in Postgres (roastq/brokers/results.py).
        self.backend = PostgresResults(self.pool)
        self.add_middleware(Results(backend=self.backend))

    def consume(self, queue_name, prefetch=1, timeout=30000):
        return RoastqConsumer(
            pool=self.pool,
            queue_name=queue_name,
            prefetch=prefetch,
            timeout=min(timeout, 1000),
            recovery_interval_s=self.recovery_interval_s,
            starts=None if queue_name.endswith(".DQ") else self.starts_with_consume,
        )

    def starts_with_consume(self, messages: list[Message]) -> list[tuple[str, str]]:
        """Of a batch about to be consumed, the messages whose jobs may start with the consume,
        ``(message_id, job_id)``: messages of job actors (``roastq_job``) with no eta, as many as
        a thread of this worker should take within ``START_AHEAD_S`` (``room``), so that a job is
        RUNNING only once it runs, or about to. A message beyond them waits in the worker's
        queue (the jobs ahead of it are long), and its delivery starts it."""
        room = self.start_room()
        starts = []
        for message in messages:
            if len(starts) >= room:
                break
            actor = self.actors.get(message.actor_name)
            # dramatiq sends a message with an eta (a past one too) through its delay queue, and
            # enqueues it again from there: this delivery never runs it
            if actor is None or not actor.options.get("roastq_job") or "eta" in message.options:
                continue
            job_id = jobs.job_id_of(message)
            if job_id is not None:
                starts.append((message.message_id, job_id))
        return starts

    def start_room(self) -> int:
        """How many more deliveries a thread of this worker should begin within ``START_AHEAD_S``:
        its idle threads, and those that the deliveries ending at the recent rate free by then
        (none once no delivery has ended for a second: the jobs are long, or there were none)."""
        busy = len(HELD) - len(DELAYED)
        now = time.monotonic()
        soon = 0
        if len(ENDED) >= 8 and now - ENDED[-1] < 1.0:
            rate = (len(ENDED) - 1) / max(ENDED[-1] - ENDED[0], 1e-6)
            soon = int(rate * START_AHEAD_S)
        return self.worker_threads + soon - busy

    def size_pool(self, threads: int) -> None:
        """One connection a thread plus two a consumed queue (and delay queue), within DB_POOL_MAX.

        Consumers hold their two for good; threads share the rest and wait their turn (the pool
        blocks), so hundreds of threads need no more than DB_POOL_MAX connections a process.
        """
        consumers = 2 * 2 * max(len(self.queues), len(JOB_QUEUES))
        limit = max(get_settings().db_pool_max, consumers + 4)
        db.pool().resize(min(threads + consumers + 4, limit))

    def delayed(self, message: Message, delay_ms: int | None) -> Message:
        """The message as a delayed enqueue sends it: into its delay queue, due at its eta."""
        if not delay_ms:
            return message
        eta = int(time.time() * 1000) + delay_ms
        return message.copy(queue_name=dq_name(message.queue_name), options={**message.options, "eta": eta})

    def enqueue_on(self, cur, message: Message, *, delay_ms: int | None = None) -> Message:
        """Enqueue on the caller's cursor: the message commits or rolls back with its transaction."""
        message = self.delayed(message, delay_ms)
        self.emit_before("enqueue", message, delay_ms)
        cur.execute(
            QUERIES.ENQUEUE,
            (message.queue_name, message.message_id, Json(tidy4json(message)), message.message_id),
        )
        self.emit_after("enqueue", message, delay_ms)
        return message

    def enqueue_piece(self, messages: list[Message]) -> tuple[str, dict]:
        """A one-statement enqueue's message part (``roastq.brokers.prepare_send``): the CTE
        ``sent`` of ``postgres.sql``, a ``dramatiq.queue`` row and ENQUEUE's NOTIFY for the one of
        ``messages`` the statement's job row names."""
        return PQ.enqueue_piece, {
            "message_queues": [m.queue_name for m in messages],
            "message_ids": [m.message_id for m in messages],
            "messages": [json.dumps(tidy4json(m)) for m in messages],
        }

    def park(self, message: Message) -> None:
        """Park a job's message while one of its steps waits in the batch lane: it stays queued in
        ``<queue>.lane``, which no consumer serves, until the lane wakes it (``roastq.llm.batch``)."""
        message = message.copy(queue_name=q_name(message.queue_name))
        message.options.pop("eta", None)
        with db.transaction() as cur:
            cur.execute(
                PQ.park_message,
                {
                    "queue_name": message.queue_name + LANE_SUFFIX,
                    "message_id": message.message_id,
                    "message": Json(tidy4json(message)),
                },
            )

    def enqueue_many_on(self, cur, messages: list[Message]) -> None:
        """Enqueue many messages on the caller's cursor in one statement (one NOTIFY each)."""
        for message in messages:
            self.emit_before("enqueue", message, None)
        cur.execute(
            db.Q.enqueue_messages,
            {
                "queues": [m.queue_name for m in messages],
                "message_ids": [m.message_id for m in messages],
                "messages": [json.dumps(tidy4json(m)) for m in messages],
            },
        )
        for message in messages:
            self.emit_after("enqueue", message, None)


class SizePool(Middleware):
    """Size the pool once the worker's thread count is known, before its consumers start."""

    def before_worker_boot(self, broker, worker):
        broker.worker_threads = worker.worker_threads
        broker.size_pool(worker.worker_threads)


class LazyPool:
    """Stands in for the pool so that building the broker does no I/O (and survives a fork)."""

    def __getattr__(self, name):
        return getattr(db.pool(), name)
