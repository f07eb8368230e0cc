"""A roastq process's set-up: loguru JSON logging (stdlib intercepted) and Sentry.

Called where a roastq process starts: a worker process as it boots (``middleware.process``'s
``ProcessSetup``), the scheduler (``periodiq actors``), ``python -m actors``'s main process, the
metrics exporter. Never at import: an app's process that imports ``roastq.api`` or the actors to
send a message keeps its own logging, its own Sentry client and its own Prometheus registry.
"""

from __future__ import annotations

import threading

from observability.logging import setup_logging
from observability.sentry import setup_sentry

_lock = threading.Lock()
_done = False


def setup_process() -> None:
    """Logging and Sentry for this process (once)."""
    global _done
    with _lock:
        if _done:
            return
        setup_logging()
        setup_sentry()
        _done = True
