"""Store each job's own log lines with the job (``job_logs``, insert-only: a row of JSONB lines
a job and attempt).

The logging setup (``observability.logging``) keeps every line emitted while a job runs in a
per-job buffer. After each attempt this middleware takes the attempt's lines and a background
thread inserts them into ``job_logs``, many jobs in one statement, so the job's own thread never
waits for it; what is pending is written when the worker stops. ``roastq job ID`` shows them.

Place it before ``JobState`` in the middleware list, so that its after hook runs after JobState's
and the lines saying how the attempt ended are stored too.
"""

from __future__ import annotations

import logging
import threading

from dramatiq.middleware import Middleware
from psycopg2.extras import Json

from observability.logging import take_job_lines
from roastq import jobs

logger = logging.getLogger("roastq.logs")


class JobLogs(Middleware):
    """Store each job attempt's log lines in ``job_logs``.

    Parameters:
      interval_s(float): how often pending lines are written (default 0.2 s).
    """

    def __init__(self, *, interval_s: float = 0.2):
        self.interval_s = interval_s
        self._pending: dict[str, list[dict]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker, worker):
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="roastq-job-logs", daemon=True)
        self._thread.start()

    def after_process_message(self, broker, message, *, result=None, exception=None):
        ctx = getattr(message, "roastq_job", None)
        if ctx is None:
            return
        lines = take_job_lines(ctx.job_id)
        if lines:
            with self._lock:
                self._pending.setdefault(ctx.job_id, []).extend(lines)
            if self._thread is None:  # no worker thread of ours (a worker built without boot hooks)
                self.flush()

    def after_worker_shutdown(self, broker, worker):
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self.flush()

    def _run(self):
        while not self._stop.is_set():
            self._wake.wait(self.interval_s)
            self._wake.clear()
            self.flush()

    def flush(self) -> int:
        """Write what is pending now; return the number of jobs written."""
        with self._lock:
            pending, self._pending = self._pending, {}
        if not pending:
            return 0
        try:
            # Lines lost in a crash of Postgres are in the process's log anyway: no WAL flush waited for.
            jobs.append_logs(None, list(pending), [Json(lines) for lines in pending.values()], durable=False)
        except Exception as exc:  # the database may be down: the lines are in the process log anyway
            logger.warning("could not store the log lines of %d jobs: %s", len(pending), exc)
            return 0
        return len(pending)
