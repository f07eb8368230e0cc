"""Which broker carries the messages: Postgres (default) or RabbitMQ (``BROKER_URL=amqp://...``).

The jobs table, the response cache, the cost ledger, the budget and the rate limits stay in
Postgres either way; only messages move. Both brokers offer what the rest of roastq uses:

* ``enqueue_on(cur, message, delay_ms=)`` / ``enqueue_many_on(cur, messages)``: send on the
  caller's transaction. Postgres: the message is a row of ``dramatiq.queue``. RabbitMQ: it is a
  row of the ``outbox``, relayed after commit (``roastq/brokers/outbox.py``);
* dramatiq's ``enqueue`` (retries, ``actor.send``), which on RabbitMQ publishes at once;
* ``queue_counts(queue)``: waiting, delayed and dead messages of a queue, for status and metrics;
* ``delayed(message, delay_ms)`` and ``enqueue_piece(messages)``: a message's part of a
  one-statement enqueue (``roastq.api``), through ``job_messages``, ``prepare_send`` and
  ``announce_sent`` here. Postgres: the ``dramatiq.queue`` row and its NOTIFY; RabbitMQ: the
  outbox row and the relays' NOTIFY.

Crash recovery differs: on Postgres our consumers rescan for messages whose worker's session
(and advisory lock) died; on RabbitMQ a message a worker took is unacknowledged until it is
done, and RabbitMQ delivers it again when that worker's connection dies.
"""

from __future__ import annotations

import threading
import time

import dramatiq
from dramatiq.common import dq_name

from roastq.queues import job_message
from roastq.settings import get_settings


def make_broker(middleware=None) -> dramatiq.Broker:
    """The broker BROKER_URL names, with ``middleware`` (the same list for both)."""
    settings = get_settings()
    if settings.rabbitmq:
        from roastq.brokers.rabbitmq import RoastqRabbitmqBroker

        return RoastqRabbitmqBroker(url=settings.broker_url, middleware=middleware)
    from roastq.brokers.postgres import RoastqBroker

    return RoastqBroker(middleware=middleware)


def is_rabbitmq(broker) -> bool:
    from roastq.brokers.rabbitmq import RoastqRabbitmqBroker

    return isinstance(broker, RoastqRabbitmqBroker)


_sender: dramatiq.Broker | None = None
_sender_lock = threading.Lock()


def sending_broker() -> dramatiq.Broker:
    """The broker the core sends with (the enqueue API, the reconciler, the reaper).

    In a worker process that is the worker's own broker (dramatiq's global broker, built by
    ``actors``), so its middleware sees the sends. Anywhere else (an app that enqueues, the CLI)
    it is a broker built for sending only: no middleware, no process set-up, no I/O until the
    first send. Importing ``actors`` is never needed to send."""
    global _sender
    current = dramatiq.broker.global_broker  # not get_broker(): that would build a default broker
    if current is not None and hasattr(current, "enqueue_on"):
        return current
    with _sender_lock:
        if _sender is None:
            _sender = make_broker(middleware=[])
        return _sender


def send_job(cur, queue: str, job_id, *, delay_ms: int | None = None) -> dramatiq.Message:
    """Send job ``job_id``'s message on the caller's transaction; return the message."""
    message = job_message(queue, str(job_id))
    return sending_broker().enqueue_on(cur, message, delay_ms=delay_ms)


def send_jobs(cur, queue: str, job_ids, *, delay_ms: int | None = None) -> list[dramatiq.Message]:
    """Send many jobs' messages on the caller's transaction in one statement (``delay_ms``: into
    the delay queue, due then, as a delayed enqueue does)."""
    messages = [job_message(queue, str(j)) for j in job_ids]
    if delay_ms:
        eta = int(time.time() * 1000) + delay_ms
        messages = [m.copy(queue_name=dq_name(m.queue_name), options={**m.options, "eta": eta}) for m in messages]
    sending_broker().enqueue_many_on(cur, messages)
    return messages


# -- a one-statement enqueue (roastq.api): the message's part -------------------------------------


def job_messages(queues, job_id, *, delay_ms: int | None = None) -> dict[str, dramatiq.Message]:
    """The message job ``job_id`` would carry on each of ``queues``, as ``send_job`` sends it
    (``delay_ms``: in the delay queue with its eta, by the broker's own rule)."""
    broker = sending_broker()
    return {q: broker.delayed(job_message(q, str(job_id)), delay_ms) for q in queues}


def prepare_send(messages, *, delay_ms: int | None = None) -> tuple[str, dict]:
    """The broker's part of a one-statement enqueue: the CTE ``sent``, which writes the one of
    ``messages`` whose id the statement's CTE ``job`` returns (none without a job row), and its
    NOTIFY; with its parameters. The broker's middleware sees each candidate before the send (it
    may change it); ``announce_sent`` tells it which one went."""
    broker = sending_broker()
    for message in messages:
        broker.emit_before("enqueue", message, delay_ms)
    return broker.enqueue_piece(list(messages))


def announce_sent(message, *, delay_ms: int | None = None) -> None:
    """After a one-statement enqueue wrote ``message``: the middleware's after_enqueue."""
    sending_broker().emit_after("enqueue", message, delay_ms)
