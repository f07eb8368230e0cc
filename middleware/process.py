"""Set up a worker process when it boots, never when the actors module is imported.

``dramatiq actors`` imports the actors in each worker process, then emits ``process_boot``:
that is when logging, Sentry and (in ``Metrics``) Prometheus are set up. A worker embedded in a
process (tests, benchmarks) gets the same at ``before_worker_boot``. An app that imports the
actors only to call ``actor.send()`` builds the broker and its middleware, and nothing else.
"""

from __future__ import annotations

import importlib
import logging
import threading

from dramatiq.middleware import Middleware

from observability.process import setup_process

logger = logging.getLogger("roastq.process")


def import_all(modules: tuple[str, ...]) -> None:
    for name in modules:
        try:
            importlib.import_module(name)
        except Exception:  # the job that needs it raises the same error, where it is reported
            logger.exception("warm-up: could not import %s", name)


class ProcessSetup(Middleware):
    """Configure this process's logging and Sentry as a worker boots (idempotent).

    Place it first: the other middleware's boot hooks then log through the set-up logging.

    Parameters:
      warm_up(tuple[str, ...]): modules the actors import at their first use (the LLM client and
        the anthropic SDK: 2 s and 50 MiB), imported on a thread of their own once the worker has
        booted: the worker consumes at once, and its first evaluation does not wait for them.
        An app that imports the actors only to send never loads them.
    """

    def __init__(self, warm_up: tuple[str, ...] = ()):
        self.warm_up = tuple(warm_up)

    def after_process_boot(self, broker):
        setup_process()

    def before_worker_boot(self, broker, worker):
        setup_process()

    def after_worker_boot(self, broker, worker):
        if self.warm_up:
            threading.Thread(target=import_all, args=(self.warm_up,), name="roastq-warm-up", daemon=True).start()
