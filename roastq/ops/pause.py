"""The system pause (RoastMyPost's "system pause"): while on, no job attempt starts.

``roastq pause`` writes the ``pause`` row of ``system_state``; ``roastq resume`` deletes it.
Workers read it through ``current()`` (cached for a second, so that a worker taking hundreds of
messages a second does not ask the database each time) and hold job messages back while it is
set: jobs wait, nothing fails (``middleware/pause.py``). Anything else that starts LLM work can
ask ``current()`` too.
"""

from __future__ import annotations

import getpass
import socket
import threading
import time

from psycopg2.extras import Json

from roastq import db
from roastq.sql import load_queries

OPS = load_queries("ops.sql", __package__)
KEY = "pause"
CACHE_S = 1.0

_lock = threading.Lock()
_cached: tuple[float, dict | None] | None = None
_reading: _Read | None = None  # the read under way, that the others wait for


class _Read:
    __slots__ = ("done", "value", "failed")

    def __init__(self):
        self.done = threading.Event()
        self.value: dict | None = None
        self.failed = False


def state(conn=None) -> dict | None:
    """The pause, read now: {"reason", "by", "since"}, or None when the system runs. On ``conn``
    when given, else one statement on a pooled connection (one round trip, no BEGIN/COMMIT)."""
    if conn is None:
        row = db.execute_one(OPS.get_state, {"key": KEY})
    else:
        with db.transaction(conn) as cur:
            cur.execute(OPS.get_state, {"key": KEY})
            row = cur.fetchone()
    if row is None:
        return None
    return dict(row["value"], since=row["updated_at"])


def current(max_age_s: float = CACHE_S) -> dict | None:
    """The pause as this process saw it at most ``max_age_s`` seconds ago (from when the read
    began). Once that has expired, one thread reads it again and the others that ask meanwhile
    wait for that read: a burst of messages after an idle second (500 threads at once) asks the
    database once, not once a thread (which queued 500 round trips behind the pool: 50 to 100 ms
    before each job of the burst, docs/benchmarks.md, issue 14, session 10)."""
    global _cached, _reading
    with _lock:
        if _cached is not None and time.monotonic() - _cached[0] < max_age_s:
            return _cached[1]
        read, leads = _reading, _reading is None
        if leads:
            read = _reading = _Read()
    if not leads:
        while not read.done.wait(0.1):  # in slices: dramatiq's time limit and shutdown raise in the thread
            pass
        if not read.failed:
            return read.value
        return state()  # that read failed (the database is down, say): this one meets it too
    began = time.monotonic()
    try:
        read.value = state()
    except BaseException:
        read.failed = True
        raise
    else:
        with _lock:
            _cached = (began, read.value)
    finally:
        with _lock:
            _reading = None
        read.done.set()
    return read.value


def pause(reason: str, *, by: str | None = None) -> dict:
    """Pause all LLM work (idempotent: pausing again only updates the reason)."""
    by = by or f"{getpass.getuser()}@{socket.gethostname()}"
    with db.transaction() as cur:
        cur.execute(OPS.set_state, {"key": KEY, "value": Json({"reason": reason, "by": by})})
        row = cur.fetchone()
    _forget()
    return dict(row["value"], since=row["updated_at"])


def resume() -> dict | None:
    """End the pause; return the pause that ended (None if the system was not paused)."""
    with db.transaction() as cur:
        cur.execute(OPS.delete_state, {"key": KEY})
        row = cur.fetchone()
    _forget()
    return row["value"] if row else None


def _forget() -> None:
    global _cached
    with _lock:
        _cached = None
