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
    """The pause as this process saw it at most ``max_age_s`` seconds ago."""
    global _cached
    with _lock:
        if _cached is not None and time.monotonic() - _cached[0] < max_age_s:
            return _cached[1]
    value = state()
    with _lock:
        _cached = (time.monotonic(), value)
    return value


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
