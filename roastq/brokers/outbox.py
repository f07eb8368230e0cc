"""The transactional outbox: how a job and its message commit together when the queue is RabbitMQ.

With the Postgres broker a job row and its message are two rows of one database, written in one
transaction. With RabbitMQ (``BROKER_URL=amqp://...``) no transaction spans both systems, and
publishing inside the app's transaction would send messages for jobs that then roll back, while
publishing after commit loses messages when the app dies in between. So:

* ``add`` writes each message to the ``outbox`` table on the caller's cursor, in the same
  transaction as its job row, with one NOTIFY (delivered at commit);
* a ``Relay`` (a thread in every worker process, and/or ``roastq relay``) LISTENs, takes the
  oldest unsent rows with ``FOR UPDATE SKIP LOCKED`` (relays in many processes share the work),
  publishes them to RabbitMQ in one AMQP transaction, and marks them sent in its own.

Delivery is at least once: a relay that dies after RabbitMQ confirmed a message but before its
commit publishes that message again. Duplicates are harmless: the job middleware runs a job at
most once to completion and the result is written once (docs/failures.md, duplicate delivery).
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections.abc import Callable

from roastq import db
from roastq.settings import get_settings
from roastq.sql import load_queries

logger = logging.getLogger("roastq.brokers.outbox")

Q = load_queries("outbox.sql", __package__)
CHANNEL = "roastq_outbox"

#: publish([(queue_name, body), ...]): hand encoded messages to the broker; returns once the broker
#: has them all, raises otherwise.
Publish = Callable[[list], None]


def add(cur, messages) -> None:
    """Write dramatiq messages to the outbox on the caller's cursor: they are relayed once the
    caller's transaction commits, and never if it rolls back."""
    if not messages:
        return
    cur.execute(
        Q.outbox_add,
        {
            "queues": [m.queue_name for m in messages],
            "message_ids": [m.message_id for m in messages],
            "messages": [m.encode().decode("utf-8") for m in messages],
        },
    )


def add_piece(messages) -> tuple[str, dict]:
    """``add`` as the message part of a one-statement enqueue: the CTE ``sent`` of
    ``outbox.sql``'s ``outbox_add_piece``, which writes the one of ``messages`` whose id the
    statement's CTE ``job`` returns, and the relays' NOTIFY; with its parameters."""
    return Q.outbox_add_piece, {
        "message_queues": [m.queue_name for m in messages],
        "message_ids": [m.message_id for m in messages],
        "messages": [m.encode().decode("utf-8") for m in messages],
    }


def backlog() -> dict:
    """Rows not relayed yet, and the age of the oldest (seconds)."""
    with db.transaction() as cur:
        cur.execute(Q.outbox_backlog)
        return dict(cur.fetchone())


def purge_sent(older_than_s: float, batch: int = 5000) -> int:
    """Delete relayed rows older than ``older_than_s``, in batches; return how many."""
    deleted = 0
    while True:
        with db.transaction() as cur:
            cur.execute(Q.outbox_purge_sent, {"older_than_s": older_than_s, "batch": batch})
            n = cur.rowcount
        deleted += n
        if n < batch:
            return deleted


class Relay:
    """Publishes outbox rows: woken by NOTIFY, and every ``OUTBOX_POLL_S`` without one.

    ``publish`` sends a batch and returns once the broker has it; ``idle`` (optional) is called
    while waiting, to keep the broker connection's heartbeats going.
    """

    def __init__(
        self,
        publish: Publish,
        *,
        idle: Callable[[], None] | None = None,
        batch: int | None = None,
        poll_s: float | None = None,
    ):
        settings = get_settings()
        self.publish = publish
        self.idle = idle or (lambda: None)
        self.batch = batch or settings.outbox_batch
        self.poll_s = poll_s if poll_s is not None else settings.outbox_poll_s
        self.sent = 0  # messages this relay published (and marked sent)
        self._conn = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- one pass --------------------------------------------------------------------------------

    def _connection(self):
        if self._conn is None or self._conn.closed:
            self._conn = db.connect(application_name="roastq-outbox-relay")
            self._conn.autocommit = True
            with self._conn.cursor() as cur:
                cur.execute(f"LISTEN {CHANNEL}")
            self._conn.autocommit = False
        return self._conn

    def relay_once(self) -> int:
        """Publish one batch of unsent rows and mark them sent; return how many were sent.

        If publishing fails, or the commit after it does, the transaction rolls back and every row
        of the batch stays unsent: whatever the broker took of it goes out again (at least once)."""
        conn = self._connection()
        with conn:
            with conn.cursor() as cur:
                cur.execute(Q.outbox_claim, {"limit": self.batch})
                rows = cur.fetchall()
                if rows:
                    self.publish([(queue_name, message.encode("utf-8")) for _, queue_name, message in rows])
                    cur.execute(Q.outbox_mark_sent, {"ids": [r[0] for r in rows]})
        self.sent += len(rows)
        return len(rows)

    def drain(self) -> int:
        """Relay until the outbox is empty (``roastq relay --once``, tests); return how many."""
        total = 0
        while n := self.relay_once():
            total += n
        return total

    def _wait(self) -> None:
        """Wait for a NOTIFY (or the poll interval, or stop), servicing the broker meanwhile."""
        conn = self._connection()
        deadline = time.monotonic() + self.poll_s
        while not self._stop.is_set():
            conn.poll()
            if conn.notifies:
                conn.notifies.clear()
                return
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.idle()
            select.select([conn], [], [], min(left, 0.5))

    # -- the loop ------------------------------------------------------------------------------

    def run(self) -> None:
        """Relay until ``stop()``; errors (database or broker down) are logged and retried."""
        failures = 0
        while not self._stop.is_set():
            try:
                if self.relay_once() < self.batch:
                    self._wait()
                failures = 0
            except Exception as exc:
                failures += 1
                logger.warning("outbox relay: %s (retrying)", exc)
                self._close()
                self._stop.wait(min(10.0, 0.2 * 2 ** min(failures, 6)))
        self._close()

    def start(self) -> Relay:
        self._stop.clear()
        self._thread = threading.Thread(target=self.run, name="roastq-outbox-relay", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None
