"""Looking at messages the same way on both brokers, for the tests that run in both passes.

* ``MESSAGES``: the table a message sent on a transaction lands in: ``dramatiq.queue`` (Postgres
  broker) or ``outbox`` (RabbitMQ). Both have ``queue_name``, ``message_id`` and ``message``.
* ``wait_rejected``: a message became a dead letter: state 'rejected' in ``dramatiq.queue``, or in
  its queue's dead-letter queue (``.XQ``) in RabbitMQ.
* ``wait_consumed``: a worker took a message and acknowledged it.
"""

from __future__ import annotations

import json
import time

from helpers import one, wait_until

from roastq.settings import get_settings

RABBITMQ = get_settings().rabbitmq
MESSAGES = "outbox" if RABBITMQ else "dramatiq.queue"
JOB_QUEUES = ("interactive", "batch")


def _broker():
    import actors

    return actors.broker


def rabbitmq_dead_letter_ids(queues=JOB_QUEUES) -> list[str]:
    """Ids of the messages in the queues' dead-letter queues, left there (read, not acked)."""
    import pika
    from dramatiq.common import xq_name

    connection = pika.BlockingConnection(_broker().parameters)
    try:
        channel = connection.channel()
        ids = []
        for queue in queues:
            while True:
                method, _, body = channel.basic_get(xq_name(queue), auto_ack=False)
                if method is None:
                    break
                ids.append(json.loads(body)["message_id"])
        return ids
    finally:
        connection.close()  # the unacknowledged reads go back to their queue


def wait_rejected(conn, message_id, timeout=10.0) -> None:
    message_id = str(message_id)
    if RABBITMQ:
        wait_until(
            lambda: message_id in rabbitmq_dead_letter_ids(),
            timeout=timeout,
            what=f"message {message_id} in a dead-letter queue",
        )
    else:
        wait_until(
            lambda: one(conn, "SELECT state FROM dramatiq.queue WHERE message_id = %s", message_id) == "rejected",
            timeout=timeout,
            what=f"message {message_id} rejected",
        )


def wait_consumed(conn, message_id, timeout=10.0) -> None:
    message_id = str(message_id)
    if not RABBITMQ:
        wait_until(
            lambda: one(conn, "SELECT state FROM dramatiq.queue WHERE message_id = %s", message_id) == "done",
            timeout=timeout,
            what=f"message {message_id} done",
        )
        return
    # RabbitMQ does not show one message's fate: relayed, and nothing left waiting in its queue.
    queue = one(conn, "SELECT queue_name FROM outbox WHERE message_id = %s", message_id)
    wait_until(
        lambda: (
            one(conn, "SELECT sent_at IS NOT NULL FROM outbox WHERE message_id = %s", message_id)
            and _broker().queue_counts(queue)["queued"] == 0
        ),
        timeout=timeout,
        what=f"message {message_id} relayed and taken",
    )
    time.sleep(0.5)  # taken is not yet processed
