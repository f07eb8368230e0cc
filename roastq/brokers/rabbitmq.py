"""The RabbitMQ broker (``BROKER_URL=amqp://...``): dramatiq's, with the outbox for sending on a
Postgres transaction, and what status and metrics read of its queues."""

from __future__ import annotations

import logging
import time

from dramatiq.brokers.rabbitmq import RabbitmqBroker  # pika: the dramatiq[rabbitmq] dependency
from dramatiq.common import dq_name, q_name
from dramatiq.middleware import Middleware

from roastq import db
from roastq.brokers import outbox
from roastq.settings import get_settings
from roastq.sql import load_queries

logger = logging.getLogger("roastq.brokers.rabbitmq")

BQ = load_queries("rabbitmq.sql", __package__)


class RoastqRabbitmqBroker(RabbitmqBroker):
    """dramatiq's RabbitMQ broker: publisher confirms on direct sends, the outbox for
    transactional enqueue (relayed in AMQP transactions) and a relay thread in each worker."""

    def __init__(self, *, url: str, middleware=None):
        super().__init__(url=url, middleware=middleware, confirm_delivery=True)
        logging.getLogger("pika").setLevel(logging.WARNING)  # a line a connection step at INFO
        self.add_middleware(RabbitmqWorkerSetup())

    # -- sending on the caller's transaction: the outbox -----------------------------------------

    def delayed(self, message, delay_ms: int | None):
        """The message as a delayed enqueue sends it: into its delay queue, due at its eta."""
        if not delay_ms:
            return message
        return message.copy(queue_name=dq_name(message.queue_name), options={"eta": int(time.time() * 1000) + delay_ms})

    def enqueue_on(self, cur, message, *, delay_ms: int | None = None):
        """Write the message to the outbox on the caller's cursor: it is published after commit."""
        message = self.delayed(message, delay_ms)
        self.emit_before("enqueue", message, delay_ms)
        outbox.add(cur, [message])
        self.emit_after("enqueue", message, delay_ms)
        return message

    def enqueue_many_on(self, cur, messages) -> None:
        for message in messages:
            self.emit_before("enqueue", message, None)
        outbox.add(cur, messages)
        for message in messages:
            self.emit_after("enqueue", message, None)

    def enqueue_piece(self, messages) -> tuple[str, dict]:
        """A one-statement enqueue's message part (``roastq.brokers.prepare_send``): the outbox
        row (relayed after commit) for the one of ``messages`` the statement's job row names."""
        return outbox.add_piece(messages)

    # -- what the relay needs ----------------------------------------------------------------------

    def publish_many(self, items: list[tuple[str, bytes]]) -> None:
        """Publish encoded messages (``(queue_name, body)``, from the outbox) in one AMQP
        transaction: when this returns, RabbitMQ has taken them all (persistent messages on
        durable queues); when it raises, it took none of them, or all of them if only the
        commit's answer was lost (the outbox's at-least-once).

        One round trip a batch, where a publisher confirm for each message costs one a message.
        On a connection error the thread's connection is dropped (the next call opens a new one)
        and the error is raised: the relay's transaction rolls back and the rows stay unsent."""
        import pika

        try:
            for queue_name in sorted({q_name(q) for q, _ in items}):
                self.declare_queue(queue_name, ensure=True)
            channel = self._tx_channel()
            persistent = pika.BasicProperties(delivery_mode=2)
            for queue_name, body in items:
                channel.basic_publish(exchange="", routing_key=queue_name, body=body, properties=persistent)
            channel.tx_commit()
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError):
            del self.connection
            raise

    def _tx_channel(self):
        """This thread's channel in transaction mode (its default channel is in confirm mode)."""
        channel = getattr(self.state, "tx_channel", None)
        if channel is None or not channel.is_open or channel.connection is not self.connection:
            channel = self.state.tx_channel = self.connection.channel()
            channel.tx_select()
        return channel

    def service_connection(self) -> None:
        """Let this thread's idle connection answer RabbitMQ's heartbeats."""
        connection = getattr(self.state, "connection", None)
        if connection is not None and connection.is_open:
            try:
                connection.process_data_events(0)
            except Exception:
                del self.connection

    def relay(self) -> outbox.Relay:
        return outbox.Relay(self.publish_many, idle=self.service_connection)

    # -- what status and metrics read --------------------------------------------------------------

    def queue_counts(self, queue_name: str) -> dict:
        """Messages RabbitMQ holds for a queue, not counting those delivered and not yet acked:
        ``queued`` (ready), ``delayed`` (in its .DQ), ``dead`` (in its .XQ)."""
        import pika

        try:
            ready, delayed, dead = self.get_queue_message_counts(q_name(queue_name))
        except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError):
            del self.connection
            raise
        return {"queued": ready, "delayed": delayed, "dead": dead}


_reader: RoastqRabbitmqBroker | None = None


def rabbitmq_counts(queues) -> dict[str, dict]:
    """{queue: {queued, delayed, dead}} read from RabbitMQ, for status, metrics and housekeeping
    (processes that have no worker broker: the CLI, the metrics exporter)."""
    global _reader
    if _reader is None:
        _reader = RoastqRabbitmqBroker(url=get_settings().broker_url, middleware=[])
    try:
        return {q: _reader.queue_counts(q) for q in queues}
    except Exception:
        _reader.close()
        _reader = None
        raise


def rabbitmq_summary(queues) -> list[dict]:
    """``roastq status``'s per-queue rows on RabbitMQ: waiting, delayed and dead messages from
    RabbitMQ, in flight from the jobs table. Orphans do not exist (RabbitMQ redelivers a dead
    worker's messages) and RabbitMQ keeps no finished messages: those columns are None."""
    counts = rabbitmq_counts(queues)
    with db.transaction() as cur:
        cur.execute(BQ.running_jobs_by_queue)
        running = {r["queue"]: r["n"] for r in cur.fetchall()}
    return [
        dict(
            queue=q,
            queued=c["queued"],
            delayed=c["delayed"],
            in_flight=running.get(q, 0),
            orphaned=None,
            dead=c["dead"],
            done=None,
            oldest_queued_age_s=None,
        )
        for q, c in counts.items()
    ]


def rabbitmq_metric_rows(queues) -> list[tuple]:
    """The metrics exporter's queue rows (kind, queue, state, n, age_s) on RabbitMQ: queued,
    delayed and rejected (dead) from RabbitMQ, consumed = jobs RUNNING. RabbitMQ does not say how
    old its oldest message is: ages are 0 (the outbox's backlog is in ``roastq status``)."""
    found = []
    for row in rabbitmq_summary(queues):
        for state, key in (
            ("queued", "queued"),
            ("delayed", "delayed"),
            ("rejected", "dead"),
            ("consumed", "in_flight"),
        ):
            found.append(("queue", row["queue"], state, row[key], 0.0))
    return found


class RabbitmqWorkerSetup(Middleware):
    """Per worker process on RabbitMQ: size the Postgres pool for the worker's threads (messages
    need no database connections), and run an outbox relay (``OUTBOX_RELAY``)."""

    def __init__(self):
        self._relay: outbox.Relay | None = None

    def before_worker_boot(self, broker, worker):
        limit = get_settings().db_pool_max
        db.pool().resize(min(worker.worker_threads + 4, max(limit, 8)))
        # Declare every queue (and its .DQ and .XQ) before the consumers start: a delay-queue
        # consumer that starts first on a new virtual host would find no queue.
        for queue in sorted(broker.get_declared_queues()):
            broker.declare_queue(queue, ensure=True)

    def after_worker_boot(self, broker, worker):
        if get_settings().outbox_relay:
            self._relay = broker.relay().start()

    def before_worker_shutdown(self, broker, worker):
        if self._relay is not None:
            self._relay.stop()
            self._relay = None
