"""Worker heartbeats: each worker process keeps its row in ``worker_heartbeats`` fresh.

Health checks, the stale-job reaper and the "no worker alive" alert read it. A process that
stops gracefully deletes its row; one that dies stops updating it and is stale after
``3 x HEARTBEAT_INTERVAL_S``.
"""

from __future__ import annotations

import logging
import os
import select
import threading
import time

from dramatiq.middleware import Middleware

from roastq import db
from roastq.db import Q
from roastq.jobctx import worker_host, worker_id

logger = logging.getLogger("roastq.heartbeat")


class Heartbeat(Middleware):
    """Upsert this worker's heartbeat row every ``HEARTBEAT_INTERVAL_S`` seconds, and hold its
    liveness lock (``roastq_worker_lock``) on a session of its own for as long as it lives.

    The lock tells the others at once that a killed worker is gone (its session ends with it),
    where the heartbeat takes three beats; a message or job of a worker that still beats and holds
    its lock is never taken from it (``roastq_worker_alive``). The thread watches the session's
    socket: when Postgres ends the session, it reconnects and takes the lock again at once.

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
            "worker_id": worker_id(),
            "hostname": worker_host(),
            "pid": os.getpid(),
            "threads": worker.worker_threads,
            "queues": sorted(q for q in broker.queues),
        }
        self._thread = threading.Thread(target=self._run, args=(params,), name="roastq-heartbeat", daemon=True)
        self._thread.start()

    def _run(self, params):
        interval = self.interval_s
        conn, new_lock, next_beat = None, False, 0.0
        try:
            while not self._stop.is_set():
                try:
                    if conn is None:
                        conn = self._liveness_session(params["worker_id"])
                        new_lock, next_beat = True, 0.0
                    if time.monotonic() >= next_beat:
                        with conn.cursor() as cur:
                            cur.execute(Q.heartbeat, {**params, "new_lock": new_lock})
                        new_lock, next_beat = False, time.monotonic() + interval
                        self.last_beat = time.time()
                    # Wake up early when the session's socket speaks: Postgres ended it.
                    readable, _, _ = select.select([conn], [], [], min(0.25, max(0.0, next_beat - time.monotonic())))
                    if readable:
                        conn.poll()
                except Exception as exc:  # the database may be restarting, or ended the session: keep beating
                    logger.warning("heartbeat failed: %s", exc)
                    conn = self._close(conn)
                    self._stop.wait(min(interval, 0.5))
        finally:
            self._close(conn)

    def _liveness_session(self, wid: str):
        conn = db.connect(application_name="roastq heartbeat")
        conn.autocommit = True
        try:
            deadline = time.monotonic() + 30
            while True:
                with conn.cursor() as cur:
                    cur.execute(Q.take_worker_lock, {"worker_id": wid})
                    if cur.fetchone()[0]:
                        return conn
                # Held: someone probes it this instant (roastq_worker_alive), or worker ids collide
                # (two hosts with one hostname: set WORKER_HOST).
                if time.monotonic() > deadline:
                    raise RuntimeError(f"liveness lock of {wid} held by another session (same WORKER_HOST?)")
                time.sleep(0.05)
        except BaseException:
            conn.close()
            raise

    @staticmethod
    def _close(conn):
        if conn is not None:
            try:
                conn.close()
            except Exception:
                pass
        return None

    def before_worker_shutdown(self, broker, worker):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)  # no beat after the row is gone; the liveness session is closed
        try:
            with db.transaction() as cur:
                cur.execute(Q.worker_gone, {"worker_id": worker_id()})
        except Exception as exc:
            logger.warning("could not remove heartbeat: %s", exc)
