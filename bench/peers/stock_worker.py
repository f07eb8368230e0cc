"""Stock dramatiq-pg 0.12 with dramatiq's default middleware: `dramatiq stock_worker --path bench/peers`.

dramatiq's Prometheus middleware is left out only because its exporter would take a fixed port.
"""

import os
import sys
import time
from pathlib import Path

import dramatiq
from dramatiq.middleware import Prometheus, default_middleware
from dramatiq_pg import PostgresBroker

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peerlib import probe  # noqa: E402

PROBE_AT = os.environ.get("PEER_PROBE_AT", "end")
WAIT_S = float(os.environ.get("PEER_WAIT_S", "0"))

broker = PostgresBroker(
    url=os.environ["DATABASE_URL"], middleware=[m() for m in default_middleware if m is not Prometheus]
)
dramatiq.set_broker(broker)


@dramatiq.actor(queue_name="peer")
def peer_plain(tag):
    if PROBE_AT == "start":
        probe(tag)
    if WAIT_S:
        time.sleep(WAIT_S)
    if PROBE_AT == "end":
        probe(tag)
