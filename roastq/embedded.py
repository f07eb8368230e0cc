"""The embedded Postgres used when DATABASE_URL is unset.

pgserver ships a Postgres server inside a wheel. It is started on demand with its data under
``<home>/pgdata`` (``.roastq/`` in the project folder) and reused by later runs; it stops when the
last process that asked for it exits, so ``make demo`` leaves nothing running.
"""

from __future__ import annotations

import warnings
from pathlib import Path

_server = None


def embedded_url(home: Path) -> str:
    """Start (or attach to) the embedded server and return its connection URL."""
    global _server
    if _server is None:
        home.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # platformdirs warns about XDG_RUNTIME_DIR as root
            import pgserver  # imported late: only needed without DATABASE_URL

            _server = pgserver.get_server(home / "pgdata", cleanup_mode="stop")
    return _server.get_uri()
