"""Set up a worker process when it boots, never when the actors module is imported.

``dramatiq actors`` imports the actors in each worker process, then emits ``process_boot``:
that is when logging, Sentry and (in ``Metrics``) Prometheus are set up. A worker embedded in a
process (tests, benchmarks) gets the same at ``before_worker_boot``. An app that imports the
actors only to call ``actor.send()`` builds the broker and its middleware, and nothing else.
"""

from __future__ import annotations

from dramatiq.middleware import Middleware

from observability.process import setup_process


class ProcessSetup(Middleware):
    """Configure this process's logging and Sentry as a worker boots (idempotent).

    Place it first: the other middleware's boot hooks then log through the set-up logging.
    """

    def after_process_boot(self, broker):
        setup_process()

    def before_worker_boot(self, broker, worker):
        setup_process()
