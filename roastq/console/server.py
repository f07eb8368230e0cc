"""Serve the console: ``roastq console [--host H] [--port P]`` (waitress, a pure-Python WSGI
server with a thread pool: the pages use the process's shared Postgres pool)."""

from __future__ import annotations

import gc
import logging
import signal
import sys

from roastq.console.access import is_loopback
from roastq.settings import get_settings

log = logging.getLogger("roastq.console")


class ConsoleRefused(RuntimeError):
    """The console would listen off the loopback address without credentials."""


def check_exposure(host: str, settings) -> None:
    if not is_loopback(host) and not (settings.console_token or settings.console_basic_auth):
        raise ConsoleRefused(
            f"refusing to serve the console on {host} without credentials: set CONSOLE_TOKEN (or "
            "CONSOLE_BASIC_AUTH=user:password), or listen on 127.0.0.1"
        )


def settle(app) -> None:
    """Compile every template now, then move everything the process holds so far (modules, the
    app, the templates: about 170,000 objects, none of them garbage) out of the collector's reach
    with ``gc.freeze()``. Without it each full collection walks them all, about every 20 requests,
    and the request it lands on waits 200 ms (measured, bench/console_pages.py, docs/benchmarks.md);
    frozen, a full collection walks only what requests made since."""
    for name in app.jinja_env.list_templates(extensions=["html"]):
        app.jinja_env.get_template(name)
    gc.collect()
    gc.freeze()


def serve(host: str | None = None, port: int | None = None, *, threads: int = 8) -> None:
    from waitress import serve as waitress_serve

    from roastq.console.app import create_app

    settings = get_settings()
    host = host or settings.console_host
    port = settings.console_port if port is None else port
    check_exposure(host, settings)
    if not logging.getLogger().handlers:
        logging.basicConfig(
            level=settings.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    app = create_app(settings)
    settle(app)
    mode = "read-only" if settings.console_read_only else "read-write"
    auth = "token" if settings.console_token else "basic auth" if settings.console_basic_auth else "no auth (loopback)"
    print(f"roastq console on http://{host}:{port}/ ({mode}, {auth})", file=sys.stderr, flush=True)
    # SIGTERM (a supervisor, `roastq up` stopping) exits as Ctrl-C does: exit handlers run, so an
    # embedded Postgres this process started is stopped too (roastq/embedded.py).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        waitress_serve(app, host=host, port=port, threads=threads, ident="roastq-console", _quiet=True)
    except KeyboardInterrupt:
        pass
