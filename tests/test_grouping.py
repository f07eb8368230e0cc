"""Group commit across threads (``roastq.grouping``): what arrives during a call goes in the next."""

from __future__ import annotations

import threading
import time

import pytest

from roastq.grouping import Grouped


def test_a_lone_call_is_sent_at_once_alone():
    sent = []
    grouped = Grouped(lambda items: sent.append(list(items)) or [i * 2 for i in items])
    started = time.monotonic()
    assert grouped.call(21) == 42
    assert time.monotonic() - started < 0.05  # nothing waits to fill a group
    assert sent == [[21]]


def test_calls_that_arrive_during_a_call_go_together_in_the_next():
    release = threading.Event()
    sent = []

    def fn(items):
        sent.append(list(items))
        if len(sent) == 1:
            release.wait(5)  # the first call is in flight while the others arrive
        return [f"r{i}" for i in items]

    grouped = Grouped(fn)
    results = {}

    def call(i):
        results[i] = grouped.call(i)

    first = threading.Thread(target=call, args=(0,))
    first.start()
    while not sent:
        time.sleep(0.001)
    others = [threading.Thread(target=call, args=(i,)) for i in range(1, 9)]
    for t in others:
        t.start()
    while len(grouped._queue) < 8:  # all eight queued behind the call in flight
        time.sleep(0.001)
    release.set()
    for t in [first, *others]:
        t.join(5)
    assert results == {i: f"r{i}" for i in range(9)}  # each caller gets its own result
    assert sent[0] == [0] and sorted(sent[1]) == list(range(1, 9)) and len(sent) == 2
    assert (grouped.calls, grouped.items) == (2, 9)


def test_a_group_holds_at_most_max_size():
    release = threading.Event()
    sent = []

    def fn(items):
        sent.append(len(items))
        if len(sent) == 1:
            release.wait(5)
        return list(items)

    grouped = Grouped(fn, max_size=3)
    threads = [threading.Thread(target=grouped.call, args=(0,))]
    threads[0].start()
    while not sent:
        time.sleep(0.001)
    threads += [threading.Thread(target=grouped.call, args=(i,)) for i in range(1, 8)]
    for t in threads[1:]:
        t.start()
    while len(grouped._queue) < 7:
        time.sleep(0.001)
    release.set()
    for t in threads:
        t.join(5)
    assert sent == [1, 3, 3, 1]


def test_a_failing_item_fails_only_its_own_caller():
    """The group's call raises because of one item: each caller sends its own again, alone."""
    release = threading.Event()
    sent = []

    def fn(items):
        sent.append(list(items))
        if len(sent) == 1:
            release.wait(5)
        if "bad" in items:
            raise ValueError("bad item")
        return [f"ok-{i}" for i in items]

    grouped = Grouped(fn)
    results, errors = {}, {}

    def call(i):
        try:
            results[i] = grouped.call(i)
        except ValueError as exc:
            errors[i] = exc

    threads = [threading.Thread(target=call, args=("first",))]
    threads[0].start()
    while not sent:
        time.sleep(0.001)
    threads += [threading.Thread(target=call, args=(i,)) for i in ("a", "bad", "b")]
    for t in threads[1:]:
        t.start()
    while len(grouped._queue) < 3:
        time.sleep(0.001)
    release.set()
    for t in threads:
        t.join(5)
    assert results == {"first": "ok-first", "a": "ok-a", "b": "ok-b"}
    assert list(errors) == ["bad"]
    assert sorted(map(tuple, sent[2:])) == [("a",), ("b",), ("bad",)]  # each alone, after the group


def test_a_lone_failing_call_raises_to_its_caller_and_the_next_call_still_runs():
    def fn(items):
        if items == ["boom"]:
            raise RuntimeError("boom")
        return list(items)

    grouped = Grouped(fn)
    with pytest.raises(RuntimeError):
        grouped.call("boom")
    assert grouped.call("fine") == "fine"  # no leader was left stuck


def test_many_threads_each_get_their_own_result():
    grouped = Grouped(lambda items: (time.sleep(0.002), [i + 1000 for i in items])[1])
    results = [None] * 400

    def worker(k):
        for i in range(k, 400, 8):
            results[i] = grouped.call(i)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == [i + 1000 for i in range(400)]
    assert grouped.items == 400 and grouped.calls < 400  # they were grouped
