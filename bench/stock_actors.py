"""The baseline: stock dramatiq-pg with dramatiq's default middleware and a no-op actor.

dramatiq's Prometheus middleware is left out only because its exporter would take our port.
"""

import os

import dramatiq
from dramatiq.middleware import Prometheus, default_middleware
from dramatiq_pg import PostgresBroker

broker = PostgresBroker(
    url=os.environ["DATABASE_URL"], middleware=[m() for m in default_middleware if m is not Prometheus]
)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="bench")
def noop(n):
    pass
