"""Group commit for calls from many threads: the calls that arrive while one is in flight go
together in the next one.

``Grouped(fn)`` wraps a function of a list (``fn(items) -> results``, one result an item, in
order: one statement for many rows). ``grouped.call(item)`` returns ``item``'s result. The first
caller sends its item at once, alone: an idle process adds no wait. Callers that arrive while a
call is in flight queue up, and when it returns, the first of them sends the whole queue (up to
``max_size``) and the others wait for their result. Under load a group holds what came in during
one round trip; nothing is ever held back to fill it.

A failure in one item must not fail another: when a call of several items raises, each of its
callers sends its own item again, alone, on its own thread, and gets its own result or error.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class _Waiter:
    __slots__ = ("item", "woken", "state", "result")

    def __init__(self, item):
        self.item = item
        self.woken = threading.Event()
        self.state = "queued"  # then: "lead" (send the queue), "done", "alone" (send your own)
        self.result: Any = None


class Grouped:
    """Calls of ``fn`` grouped across threads (see the module's docstring).

    Parameters:
      fn: takes a list of items, returns their results in the same order.
      max_size: the most items one call sends.
    """

    def __init__(self, fn: Callable[[list], list], *, max_size: int = 100):
        self.fn = fn
        self.max_size = max_size
        self._lock = threading.Lock()
        self._queue: list[_Waiter] = []
        self._busy = False
        #: calls made, and items they carried (for the tests and the benchmarks)
        self.calls = 0
        self.items = 0

    def call(self, item):
        waiter = _Waiter(item)
        with self._lock:
            self._queue.append(waiter)
            lead = not self._busy
            self._busy = True
        if not lead:
            waiter.woken.wait()
            if waiter.state == "done":
                return waiter.result
            if waiter.state == "alone":
                return self.fn([item])[0]
            # "lead": the call before has returned, and this caller sends the queue
        with self._lock:  # this caller is first in the queue: it is in the group it sends, first
            group, self._queue = self._queue[: self.max_size], self._queue[self.max_size :]
        try:
            results = self.fn([w.item for w in group])
            if len(results) != len(group):
                raise RuntimeError(f"{self.fn!r} returned {len(results)} results for {len(group)} items")
        except BaseException:
            if len(group) == 1:
                raise
            results = None
        finally:
            with self._lock:
                self.calls += 1
                self.items += len(group)
                if self._queue:  # the next group's leader, already queued: wake it now
                    self._queue[0].state = "lead"
                    self._queue[0].woken.set()
                else:
                    self._busy = False
        for w, result in zip(group[1:], (results or [None] * len(group))[1:]):
            w.state, w.result = ("done", result) if results is not None else ("alone", None)
            w.woken.set()
        if results is None:
            return self.fn([item])[0]
        return results[0]
