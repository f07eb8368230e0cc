"""Drive the batch lane from every worker process (``roastq.llm.batch_driver``).

A thread offers to drive the lane every ``LLM_BATCH_TICK_S`` seconds: submit due batches, poll
open ones, collect results, wake the jobs they answer. Only one driver runs at a time across all
processes (an advisory lock), so more workers add no API calls; the scheduler's minute task is
the backstop when no worker runs. ``LLM_BATCH_TICK_S=0`` leaves it to the scheduler.
"""

from __future__ import annotations

import threading

from dramatiq.middleware import Middleware


class BatchLane(Middleware):
    """Start the lane's driver thread at worker boot, stop it at shutdown.

    Parameters:
      enabled(bool): the lane is on (``LLM_BATCH_LANE``, ``roastq.llm.batch.enabled``).
      tick_s(float): how often the driver offers to run (``LLM_BATCH_TICK_S``; 0: the scheduler only).
    """

    def __init__(self, *, enabled: bool = False, tick_s: float = 0.0):
        self.enabled = enabled
        self.tick_s = tick_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def after_worker_boot(self, broker, worker):
        if not self.enabled or self.tick_s <= 0:
            return
        from roastq.llm import batch_driver

        self._stop = threading.Event()  # a new one a boot: an old thread still stopping keeps its own
        self._thread = threading.Thread(
            target=batch_driver.run_forever, args=(self._stop,), name="roastq-batch-lane", daemon=True
        )
        self._thread.start()

    def before_worker_shutdown(self, broker, worker):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
