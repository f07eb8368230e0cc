"""The RabbitMQ pass of the suite: ``ROASTQ_TEST_BROKER=rabbitmq pytest ...`` (``make test`` runs
the broker-independent tests this way after the main pass).

Each pass gets a RabbitMQ virtual host of its own (made with ``rabbitmqctl``, deleted at exit),
so that two runs on one machine never take each other's messages. ``BROKER_URL`` is set before
anything imports ``actors``, which picks the broker from it.
"""

from __future__ import annotations

import atexit
import os
import shutil
import socket
import subprocess
import uuid

RABBITMQ = os.environ.get("TEST_RABBITMQ", "127.0.0.1:5672")


def wanted() -> bool:
    return os.environ.get("ROASTQ_TEST_BROKER", "postgres").lower() == "rabbitmq"


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


def setup() -> str | None:
    """Point BROKER_URL at a fresh virtual host; return why the pass cannot run, or None."""
    if not wanted():
        return None
    host, port = RABBITMQ.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=3).close()
    except OSError as exc:
        return f"no RabbitMQ at {RABBITMQ} ({exc}): start it with `rabbitmq-server -detached`"
    if shutil.which("rabbitmqctl") is None:
        return "rabbitmqctl not found: it makes this run's virtual host"
    vhost = f"roastq_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        _ctl("add_vhost", vhost)
        _ctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    except (subprocess.SubprocessError, OSError) as exc:
        return f"could not make a RabbitMQ virtual host with rabbitmqctl: {exc}"
    atexit.register(_delete_vhost, vhost)
    os.environ["BROKER_URL"] = f"amqp://guest:guest@{host}:{port}/{vhost}?heartbeat=30"
    return None


def _delete_vhost(vhost: str) -> None:
    try:
        _ctl("delete_vhost", vhost)
    except (subprocess.SubprocessError, OSError):
        pass


def purge(broker) -> None:
    """Empty the broker's queues (their delay and dead-letter queues too) between tests."""
    from roastq.brokers import is_rabbitmq

    if is_rabbitmq(broker):
        for queue in list(broker.get_declared_queues()):
            broker.declare_queue(queue, ensure=True)
            broker.flush(queue)
