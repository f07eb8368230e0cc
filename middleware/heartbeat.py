"""Worker heartbeats: each worker process keeps its row in ``worker_heartbeats`` fresh.

Health checks, the stale-job reaper and the "no worker alive" alert read it. A process that
stops gracefully deletes its row; one that dies stops updating it and is stale after
``3 x HEARTBEAT_INTERVAL_S``.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from dramatiq.middleware import Middleware

from roastq import db
from roastq.db import Q
from roastq.jobctx import worker_host, worker_id

logger = logging.getLogger("roastq.heartbeat")


class Heartbeat(Middleware):
    """Upsert this worker's heartbeat row every ``interval_s`` seconds.

    Parameters:
      interval_s(float): the heartbeat period (``HEARTBEAT_INTERVAL_S``); a worker is stale after
        three missed beats.
    """

    def __init__(self, *, interval_s: float = 5.0):
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_beat: float | None = None  # time.time() of the last successful beat

    def after_worker_boot(self, broker, worker):
        self._stop.clear()
        params = {
            "worker_id": worker_id(), "hostname": worker_host(), "pid": os.getpid(),
            "threads": worker.worker_threads, "queues": sorted(q for q in broker.queues),
        }
        self._thread = threading.Thread(target=self._run, args=(params,), name="roastq-heartbeat", daemon=True)
        self._thread.start()

    def _run(self, params):
        interval = self.interval_s
        while True:
            try:
                with db.transaction() as cur:
                    cur.execute(Q.heartbeat, params)
                self.last_beat = time.time()
            except Exception as exc:  # the database may be restarting: keep beating
                logger.warning("heartbeat failed: %s", exc)
            if self._stop.wait(interval):
                return

    def before_worker_shutdown(self, broker, worker):
        self._stop.set()
        try:
            with db.transaction() as cur:
                cur.execute(Q.worker_gone, {"worker_id": worker_id()})
        except Exception as exc:
            logger.warning("could not remove heartbeat: %s", exc)
