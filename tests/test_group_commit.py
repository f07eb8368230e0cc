"""Group commit (``db.grouped_transaction``): the write-only transactions of many threads that
are ready at the same moment go out as one transaction in one round trip, and a failure in one
of them never fails or loses another."""

import threading
import time
from contextlib import contextmanager

import psycopg2
import pytest
from helpers import one, rows, wait_until


@pytest.fixture
def probe_table(db):
    with db.cursor() as cur:
        cur.execute("CREATE TABLE gc_probe (n int PRIMARY KEY, tx bigint)")
    try:
        yield "gc_probe"
    finally:
        with db.cursor() as cur:
            cur.execute("DROP TABLE gc_probe")


def _commit_in_threads(group, ns, errors):
    """One grouped transaction a thread, each inserting its ``n``; the threads' errors by n."""
    from roastq import db as roastq_db

    def run(n):
        try:
            with roastq_db.grouped_transaction(group) as cur:
                cur.defer("INSERT INTO gc_probe VALUES (%(n)s, txid_current())", {"n": n})
        except BaseException as exc:  # a TimeLimitExceeded too
            errors[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in ns]
    for t in threads:
        t.start()
    return threads


_WAITING = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND position('gc_probe' in query) > 0"


@contextmanager
def _first_held(db, database_url, group, errors):
    """A first transaction (inserting 0) whose write waits on a row the test holds: while it is
    in flight (the group's only leader), the transactions started in the block (``start(ns)``)
    wait for the next group. On leaving, the row is let go and every thread is joined."""
    threads = []

    def start(ns):
        started = _commit_in_threads(group, ns, errors)
        threads.extend(started)
        return started

    with psycopg2.connect(database_url) as holder:
        holder.cursor().execute("INSERT INTO gc_probe VALUES (0, 0)")  # uncommitted: an insert of 0 waits on it
        start([0])
        wait_until(lambda: one(db, _WAITING) == 1, timeout=10)
        try:
            yield start
        finally:
            holder.rollback()  # the first goes through; those waiting go next, together
            for t in threads:
                t.join(10)


def test_transactions_ready_together_commit_as_one_transaction_in_one_round_trip(db, database_url, probe_table, wire):
    from roastq import db as roastq_db

    group = roastq_db.GroupCommit(max_leaders=1)
    errors: dict = {}
    with _first_held(db, database_url, group, errors) as start:
        wire.clear()
        start(range(1, 9))
        wait_until(lambda: group.waiting() == 8, timeout=10)
    assert not errors, errors
    txs = dict(rows(db, "SELECT n, tx FROM gc_probe"))
    assert sorted(txs) == list(range(9))
    assert len({txs[n] for n in range(1, 9)}) == 1, txs  # one transaction for the eight
    assert txs[0] != txs[1]
    sent = [q for q in wire.taken() if "gc_probe" in q]
    assert len(sent) == 1, sent  # one round trip for the eight: BEGIN, their writes, COMMIT
    assert sent[0].startswith("BEGIN") and sent[0].endswith("COMMIT") and sent[0].count("INSERT") == 8
    assert group.groups == 2


def test_a_failure_in_one_transaction_of_a_group_fails_it_alone(db, database_url, probe_table):
    from roastq import db as roastq_db

    group = roastq_db.GroupCommit(max_leaders=1)
    errors: dict = {}
    with _first_held(db, database_url, group, errors) as start:
        start([1, 2, 3, 4, 5, 5, 6])  # 5 twice: one of the two fails, on its own
        wait_until(lambda: group.waiting() == 7, timeout=10)
    assert list(errors) == [5] and isinstance(errors[5], psycopg2.errors.UniqueViolation), errors
    assert [n for (n,) in rows(db, "SELECT n FROM gc_probe ORDER BY n")] == [0, 1, 2, 3, 4, 5, 6]


def test_a_lone_transaction_is_one_round_trip_and_its_error_is_its_own(db, probe_table, wire):
    from roastq import db as roastq_db

    wire.clear()
    with roastq_db.grouped_transaction() as cur:
        cur.defer("INSERT INTO gc_probe VALUES (%(n)s, txid_current())", {"n": 1})
        cur.defer("INSERT INTO gc_probe VALUES (%(n)s, txid_current())", {"n": 2})
    sent = [q for q in wire.taken() if "gc_probe" in q]
    assert len(sent) == 1 and sent[0].startswith("BEGIN") and sent[0].endswith("COMMIT"), sent
    assert len({tx for _, tx in rows(db, "SELECT n, tx FROM gc_probe")}) == 1
    with pytest.raises(psycopg2.errors.UniqueViolation):
        with roastq_db.grouped_transaction() as cur:
            cur.defer("INSERT INTO gc_probe VALUES (3, 0)")
            cur.defer("INSERT INTO gc_probe VALUES (1, 0)")
    assert one(db, "SELECT count(*) FROM gc_probe") == 2  # the failed one left nothing
    with pytest.raises(RuntimeError):  # the block's own failure: nothing is sent
        with roastq_db.grouped_transaction() as cur:
            cur.defer("INSERT INTO gc_probe VALUES (4, 0)")
            raise RuntimeError("the job's own failure")
    assert one(db, "SELECT count(*) FROM gc_probe") == 2
    with pytest.raises(TypeError):  # nothing can be read in it
        with roastq_db.grouped_transaction() as cur:
            cur.execute("SELECT 1")


def test_many_threads_commit_everything_in_fewer_groups_and_none_waits_forever(db, probe_table):
    from roastq import db as roastq_db

    group = roastq_db.GroupCommit()
    errors: dict = {}

    def run(first):
        for n in range(first, 2000, 10):
            try:
                with roastq_db.grouped_transaction(group) as cur:
                    cur.defer("INSERT INTO gc_probe VALUES (%(n)s, txid_current())", {"n": n if n % 97 else -1})
            except psycopg2.errors.UniqueViolation as exc:
                errors[n] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(10)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), f"stuck after {time.monotonic() - started:.0f} s"
    duplicates = [n for n in range(2000) if n % 97 == 0]  # they all insert -1: one of them can
    assert len(errors) == len(duplicates) - 1 and set(errors) < set(duplicates), sorted(errors)
    assert one(db, "SELECT count(*) FROM gc_probe") == 2000 - len(errors)
    assert group.groups < 2000 and group.in_flight() == 0 and group.waiting() == 0


def test_a_transaction_interrupted_while_it_waits_is_dropped_and_the_others_go_on(db, database_url, probe_table):
    """dramatiq stops a thread at its time limit (or at shutdown) by raising in it: a transaction
    still waiting for its group is then dropped, as one interrupted before its COMMIT, and the
    transactions behind it commit."""
    import ctypes

    from dramatiq.middleware.time_limit import TimeLimitExceeded

    from roastq import db as roastq_db

    group = roastq_db.GroupCommit(max_leaders=1)
    errors: dict = {}
    with _first_held(db, database_url, group, errors) as start:
        (doomed,) = start([1])
        wait_until(lambda: group.waiting() == 1, timeout=10)
        start([2, 3])
        wait_until(lambda: group.waiting() == 3, timeout=10)
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(doomed.ident), ctypes.py_object(TimeLimitExceeded))
        doomed.join(10)
        assert isinstance(errors.get(1), TimeLimitExceeded), errors
        assert group.waiting() == 2
    assert list(errors) == [1]
    assert [n for (n,) in rows(db, "SELECT n FROM gc_probe ORDER BY n")] == [0, 2, 3]
    assert group.in_flight() == 0 and group.waiting() == 0
