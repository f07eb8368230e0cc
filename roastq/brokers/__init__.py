"""Which broker carries the messages: Postgres (default) or RabbitMQ (``BROKER_URL=amqp://...``).

The jobs table, the response cache, the cost ledger, the budget and the rate limits stay in
Postgres either way; only messages move. Both brokers offer what the rest of roastq uses:

* ``enqueue_on(cur, message, delay_ms=)`` / ``enqueue_many_on(cur, messages)``: send on the
  caller's transaction. Postgres: the message is a row of ``dramatiq.queue``. RabbitMQ: it is a
  row of the ``outbox``, relayed after commit (``roastq/brokers/outbox.py``);
* dramatiq's ``enqueue`` (retries, ``actor.send``), which on RabbitMQ publishes at once;
* ``queue_counts(queue)``: waiting, delayed and dead messages of a queue, for status and metrics.

Crash recovery differs: on Postgres our consumers rescan for messages whose worker's session
(and advisory lock) died; on RabbitMQ a message a worker took is unacknowledged until it is
done, and RabbitMQ delivers it again when that worker's connection dies.
"""

from __future__ import annotations

import dramatiq

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
