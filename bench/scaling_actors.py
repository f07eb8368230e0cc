"""Actors for bench/bench_scaling.py (`dramatiq scaling_actors --path bench`): the job actors of
noop_actors.py, and ``stamp``, a plain message that records when it started.

``stamp(sent_ms)`` appends "sent_ms started_ms" to a file of its process under
``BENCH_STAMP_DIR``: latency and throughput of the message path without touching the database
(a table write per message would load the Postgres whose broker is being measured).
"""

import os
import time

import dramatiq
import noop_actors  # noqa: F401  (actors, the broker BROKER_URL names, noop_job)

STAMP_DIR = os.environ.get("BENCH_STAMP_DIR", "/tmp")
_out: tuple[int, object] | None = None


@dramatiq.actor(queue_name="bench", priority=100)
def stamp(sent_ms):
    global _out
    if _out is None or _out[0] != os.getpid():
        _out = (os.getpid(), open(os.path.join(STAMP_DIR, f"{os.getpid()}.log"), "a", buffering=1))
    _out[1].write(f"{sent_ms} {time.time() * 1000:.1f}\n")
