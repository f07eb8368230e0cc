"""Connections, the shared pool, transactions and migrations.

One pool a process, shared by the broker (dramatiq-pg) and our own queries. It blocks when all
connections are out instead of raising "connection pool exhausted": an ack that waits a moment is
fine, an ack that is lost reruns a job (dramatiq-pg 0.12 defect 2, docs/architecture.md).
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import threading
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import psycopg2.errors
import psycopg2.extras
from psycopg2.pool import PoolError, ThreadedConnectionPool

from roastq.settings import get_settings
from roastq.sql import load_queries, migrations

Q = load_queries("queries.sql")

psycopg2.extras.register_uuid()

_lock = threading.Lock()
_pool: BlockingPool | None = None
_pool_pid: int | None = None
_url: str | None = None


def database_url() -> str:
    """DATABASE_URL, or the embedded server's URL (started on demand)."""
    global _url
    if _url is None:
        settings = get_settings()
        if settings.database_url:
            _url = settings.database_url
        else:
            from roastq.embedded import embedded_url

            _url = embedded_url(settings.home)
    return _url


def reset() -> None:
    """Forget the URL and close the pool (tests switch databases; forked children start anew)."""
    global _pool, _url, _pool_pid
    with _lock:
        if _pool is not None and _pool_pid == os.getpid():
            _pool.closeall()
        _pool, _url, _pool_pid = None, None, None


def peer_params(url: str) -> dict:
    """Connection parameters that bound how long a lost peer goes unnoticed (DB_PEER_TIMEOUT_S).

    Client side: TCP keepalives and tcp_user_timeout, so a worker cut off from Postgres gets an
    error instead of hanging. Server side, per session (``options``): the same, so that Postgres
    ends the sessions of a host that vanished and its advisory locks, which mark the messages it
    holds, are released for the other hosts to take (docs/scaling.md). Without them the server
    keeps such a session for the kernel's default of about two hours.
    """
    t = get_settings().db_peer_timeout_s
    idle, interval, count, user_ms = max(1, int(t // 2)), max(1, int(t // 4)), 2, int(t * 1000)
    server = (
        f"-c tcp_keepalives_idle={idle} -c tcp_keepalives_interval={interval} "
        f"-c tcp_keepalives_count={count} -c tcp_user_timeout={user_ms}"
    )
    given = psycopg2.extensions.parse_dsn(url).get("options")
    return {
        "keepalives": 1,
        "keepalives_idle": idle,
        "keepalives_interval": interval,
        "keepalives_count": count,
        "tcp_user_timeout": user_ms,
        "connect_timeout": max(2, int(t)),
        "options": f"{given} {server}" if given else server,
    }


def connect(url: str | None = None, **kwargs):
    """A new connection, outside the pool (LISTEN, migrations, the CLI)."""
    url = url or database_url()
    kwargs.setdefault("application_name", "roastq")
    params = peer_params(url)
    if "options" in kwargs:
        params["options"] = f"{params['options']} {kwargs.pop('options')}"
    return psycopg2.connect(url, **{**params, **kwargs})


class BlockingPool(ThreadedConnectionPool):
    """A thread-safe pool that waits for a free connection instead of raising at once.

    Its size can be raised after creation (``resize``): a worker learns its thread count only
    after the broker, and so the pool, exists.
    """

    def __init__(self, maxconn: int, dsn: str, *, wait_s: float = 30.0, **kwargs):
        super().__init__(0, maxconn, dsn, **kwargs)
        self._available = threading.Condition()
        self._wait_s = wait_s
        self.minconn = maxconn  # dramatiq-pg's pool sanitizer walks up to minconn connections

    def resize(self, maxconn: int) -> None:
        with self._available:
            self.maxconn = max(self.maxconn, maxconn)
            self.minconn = self.maxconn
            self._available.notify_all()

    def getconn(self, key=None):
        with self._available:
            deadline = None
            while True:
                try:
                    return super().getconn(key)
                except PoolError:
                    if self.closed:
                        raise
                    now = time.monotonic()
                    deadline = deadline or now + self._wait_s
                    if now >= deadline:
                        raise PoolError(
                            f"no database connection free after {self._wait_s:.0f} s (pool of {self.maxconn})"
                        ) from None
                    self._available.wait(deadline - now)

    def discard_idle(self) -> None:
        """Close every idle connection: after one connection broke (a database restart, say),
        the others are most likely broken too, and a retry must not pick one of them."""
        with self._available:
            idle, self._pool = self._pool, []
            for conn in idle:
                try:
                    conn.close()
                except psycopg2.Error:
                    pass

    def putconn(self, conn, key=None, close=False):
        with self._available:
            super().putconn(conn, key, close)
            self._available.notify()


def pool() -> BlockingPool:
    """The process's pool, created on first use (and anew in a forked child)."""
    global _pool, _pool_pid
    with _lock:
        if _pool is None or _pool_pid != os.getpid():
            settings = get_settings()
            size = min(settings.worker_threads + 12, settings.db_pool_max)  # threads + 2 a queue + spare
            _pool = BlockingPool(size, database_url(), application_name="roastq", **peer_params(database_url()))
            _pool_pid = os.getpid()
        return _pool


@contextmanager
def transaction(conn=None) -> Iterator[psycopg2.extras.RealDictCursor]:
    """A cursor in a transaction: on the caller's connection if given, else a pooled one.

    With the caller's connection nothing is committed here: the caller's transaction decides.
    """
    if conn is not None:
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            yield cur
        return
    p = pool()
    conn = p.getconn()
    broken = False
    try:
        with conn:  # commit on success, roll back on error
            with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                yield cur
    except (psycopg2.OperationalError, psycopg2.InterfaceError):
        broken = conn.closed != 0
        raise
    finally:
        p.putconn(conn, close=broken or conn.closed != 0)
        if broken:
            p.discard_idle()


class LeanCursor:
    """The cursor of ``lean_transaction()``: its BEGIN goes out with its first statement, and the
    writes it ``defer``s (statements whose answer nobody reads) go out with the next statement or
    with the COMMIT. ``prepared=True`` sends a statement as this session's prepared statement
    (``execute_prepared``). Otherwise a ``RealDictCursor`` (``fetchone``, ``rowcount``, ...)."""

    def __init__(self, cur):
        self._cur = cur
        self._pending: list[bytes] = [b"BEGIN"]
        self._settings = False  # PREPARED_SETTINGS sent in this transaction
        self._preparing: list[str] = []  # PREPAREs in the text not yet sent: known once it has run
        self.begun = False

    def __getattr__(self, name):
        return getattr(self._cur, name)

    def defer(self, sql: str, params=None, *, prepared: bool = False) -> None:
        """Send this write later, before the next statement or with the COMMIT: an error in it
        fails the transaction there."""
        self._pending.append(self._text(sql, params, prepared).rstrip().rstrip(b";"))

    def execute(self, sql: str, params=None, *, prepared: bool = False) -> None:
        self._send(self._text(sql, params, prepared))

    def _text(self, sql: str, params, prepared: bool) -> bytes:
        if not prepared:
            return self._cur.mogrify(sql, params)
        name, prepare, execute = _prepared_parts(self._cur.connection, sql)
        text = self._cur.mogrify(execute, params)
        if not self._settings:
            self._settings = True
            text = PREPARED_SETTINGS.encode() + b"; " + text
        if prepare is None or name in self._preparing:
            return text
        self._preparing.append(name)
        return prepare.encode() + b"; " + text

    def _send(self, last: bytes) -> None:
        text = b"; ".join([*self._pending, last])
        self._pending = []
        self.begun = True
        self._cur.execute(text)
        if self._preparing:
            _mark_prepared(self._cur.connection, self._preparing)
            self._preparing = []

    def commit(self) -> None:
        if self.begun or len(self._pending) > 1:
            self._send(b"COMMIT")


@contextmanager
def lean_transaction() -> Iterator[LeanCursor]:
    """A transaction on a pooled connection in fewer round trips than ``transaction()``: BEGIN is
    sent with the first statement and the deferred writes with the COMMIT (``LeanCursor``). A
    job's result (lock, writes, COMMIT) is two round trips instead of five. Rolled back on error."""
    p = pool()
    conn = p.getconn()
    broken = False
    try:
        conn.autocommit = True  # BEGIN and COMMIT are ours, in the query strings
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as raw:
            cur = LeanCursor(raw)
            try:
                yield cur
                cur.commit()
            except BaseException:
                if cur.begun and conn.closed == 0:
                    # A PREPARE that ran before the error outlives the ROLLBACK (it is not
                    # transactional), one after it never ran: the session starts afresh.
                    forget_prepared(conn)
                    try:
                        raw.execute("ROLLBACK; DEALLOCATE ALL")
                    except psycopg2.Error:
                        broken = True
                raise
    except (psycopg2.OperationalError, psycopg2.InterfaceError):
        broken = broken or conn.closed != 0
        raise
    finally:
        if conn.closed == 0 and not broken:
            conn.autocommit = False
        p.putconn(conn, close=broken or conn.closed != 0)
        if broken:
            p.discard_idle()


class DeferredWrites:
    """The cursor of ``grouped_transaction()``: it only defers (``LeanCursor.defer``); nothing is
    sent before the block ends, so no answer can be read in it."""

    __slots__ = ("writes",)

    def __init__(self):
        self.writes: list[tuple[str, object, bool]] = []

    def defer(self, sql: str, params=None, *, prepared: bool = False) -> None:
        self.writes.append((sql, params, prepared))

    def execute(self, sql: str, params=None, **_) -> None:
        raise TypeError("a grouped transaction only defers its writes: nothing can be read in it")


class _Member:
    """One request waiting in a ``Grouped``."""

    __slots__ = ("request", "event", "leads", "done", "result", "error")

    def __init__(self, request):
        self.request = request
        self.event = threading.Event()
        self.leads = False
        self.done = False
        self.result = None
        self.error: BaseException | None = None


class Grouped:
    """Requests of many threads served together: one round trip for all that are waiting when
    it goes out. No thread of its own: a request that arrives while fewer than ``max_leaders``
    groups are in flight sends the group itself (it leads), with every request waiting then (at
    most ``max_batch``); the others wait, and each leader hands the lead to the oldest waiting
    request once its own is served. A lone request goes at once, as one of its own.

    ``_serve(group)`` sets each member's ``result`` or ``error``; each caller returns its own
    result or raises its own error. A thread interrupted while it waits (dramatiq's time limit
    and shutdown raise in the thread) withdraws a request no group has taken yet, and passes on
    a lead handed to it."""

    def __init__(self, *, max_batch: int = 64, max_leaders: int = 2):
        self.max_batch = max_batch
        self.max_leaders = max_leaders
        self._lock = threading.Lock()
        self._pending: list[_Member] = []
        self._leaders = 0
        self.groups = 0  # groups sent (a count for tests and profiles)

    def waiting(self) -> int:
        """Requests waiting for a group."""
        with self._lock:
            return len(self._pending)

    def in_flight(self) -> int:
        """Groups being sent now (their leaders)."""
        with self._lock:
            return self._leaders

    def submit(self, request):
        member = _Member(request)
        with self._lock:
            self._pending.append(member)
            if self._leaders < self.max_leaders:
                self._leaders += 1
                member.leads = True
        try:
            # In slices: an exception raised in the thread (dramatiq's time limit, a shutdown)
            # arrives only as it runs Python again.
            while not member.leads and not member.event.wait(0.1):
                pass
        except BaseException:  # interrupted while it waits
            self._withdraw(member)
            raise
        if member.leads:
            self._lead(member)
        if member.error is not None:
            error, member.error = member.error, None
            raise error
        return member.result

    def _lead(self, member: _Member) -> None:
        member.event.clear()  # set when it was handed the lead: from now on, set when its own is done
        try:
            while not member.done:
                with self._lock:
                    group = self._pending[: self.max_batch]
                    del self._pending[: self.max_batch]
                if group:
                    self._send(group, member)
                else:  # its own is in another leader's group, under way (a set left from the
                    member.event.wait()  # hand-over only costs one more look)
                    member.event.clear()
        finally:
            self._hand_over()

    def _hand_over(self) -> None:
        """A leader is done: the oldest waiting request that does not lead already (one that
        has just arrived may) leads next, or there is one leader fewer."""
        with self._lock:
            successor = next((m for m in self._pending if not m.leads), None)
            if successor is not None:
                successor.leads = True
            else:
                self._leaders -= 1
        if successor is not None:
            successor.event.set()

    def _withdraw(self, member: _Member) -> None:
        """Its thread was interrupted while it waited: a request not yet taken into a group is
        dropped (the caller raises, as a transaction interrupted before its COMMIT would); a lead
        handed to it meanwhile is handed on, so that the others do not wait for it."""
        with self._lock:
            if any(m is member for m in self._pending):
                self._pending.remove(member)
            promoted = member.leads
        if promoted:
            self._hand_over()

    def _send(self, group: list[_Member], leader: _Member) -> None:
        try:
            self.groups += 1
            self._serve(group, leader)
        except BaseException as exc:  # the serving itself failed (``_serve`` sets results last)
            for m in group:
                m.result = None
                if m.error is None:
                    m.error = exc if m is leader or len(group) == 1 else _unserved(exc)
        finally:
            for m in group:
                m.done = True
                m.event.set()

    def _serve(self, group: list[_Member], leader: _Member) -> None:
        raise NotImplementedError

    @staticmethod
    def _each_alone(group: list[_Member], serve_one, *, leader=None, failed: BaseException | None = None) -> None:
        """Serve each request of ``group`` on its own (``serve_one(request)``), so that only the
        one at fault fails: after the group ``failed`` whole, or when it cannot go as one. A
        leader whose own thread was interrupted (``failed`` not an ``Exception``) keeps that."""
        for m in group:
            if m is leader and failed is not None and not isinstance(failed, Exception):
                m.error = failed
                continue
            try:
                m.result = serve_one(m.request)
            except BaseException as own:
                m.error = own


def _unserved(exc: BaseException) -> BaseException:
    """The error a group's other members raise when serving the group failed outside any one
    request (the leader's own thread interrupted, say): an error of their own, not the leader's
    object shared between threads."""
    return RuntimeError(f"the group this request was in could not be sent: {exc!r}")


class GroupCommit(Grouped):
    """Commit the write-only transactions of many threads together (group commit): one round
    trip, one transaction and one WAL flush for all that are waiting when it goes out.

    A group that fails is undone whole, and each of its transactions is then run alone: the one
    at fault fails with its own error, the others commit (a failure in one never fails another).
    Each caller returns once its own writes are committed, or raises its transaction's error."""

    def commit(self, writes: list) -> None:
        self.submit(writes)

    def _serve(self, group: list[_Member], leader: _Member) -> None:
        try:
            _commit_writes([m.request for m in group])
        except BaseException as exc:
            if len(group) == 1:
                group[0].error = exc
            else:  # undone whole: each alone now
                self._each_alone(group, lambda writes: _commit_writes([writes]), leader=leader, failed=exc)


def _commit_writes(transactions: list[list]) -> None:
    with lean_transaction() as cur:
        for writes in transactions:
            for sql, params, prepared in writes:
                cur.defer(sql, params, prepared=prepared)


_group_commit = GroupCommit()


@contextmanager
def grouped_transaction(group: GroupCommit | None = None) -> Iterator[DeferredWrites]:
    """A write-only transaction on a pooled connection, committed in a group with those of other
    threads that are ready at the same moment (``GroupCommit``): statements are ``defer``red, and
    go out when the block ends; it returns once they are committed, or raises their error. For a
    result whose writes read nothing back (a job's bookkeeping): the drain's results then cost a
    round trip and a commit a group instead of one each."""
    cur = DeferredWrites()
    yield cur
    if cur.writes:
        (group or _group_commit).commit(cur.writes)


@contextmanager
def autocommit() -> Iterator[psycopg2.extras.RealDictCursor]:
    """A cursor on a pooled connection in autocommit: each statement is its own transaction and
    costs one round trip. ``transaction()`` costs two more for a single statement: psycopg2 sends
    BEGIN and COMMIT each on its own."""
    p = pool()
    conn = p.getconn()
    broken = False
    try:
        conn.autocommit = True
        try:
            with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
                yield cur
        finally:
            if conn.closed == 0:
                conn.autocommit = False
    except (psycopg2.OperationalError, psycopg2.InterfaceError):
        broken = conn.closed != 0
        raise
    finally:
        p.putconn(conn, close=broken or conn.closed != 0)
        if broken:
            p.discard_idle()


@contextmanager
def statement(conn=None) -> Iterator[psycopg2.extras.RealDictCursor]:
    """A cursor for one statement: on the caller's connection, in the caller's transaction
    (nothing is committed here), or else on a pooled connection in autocommit, where the
    statement is its own commit: one round trip either way (``autocommit()``)."""
    if conn is not None:
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            yield cur
        return
    with autocommit() as cur:
        yield cur


_PARAM = re.compile(r"%\((\w+)\)s")
_CAST = re.compile(r"%\((\w+)\)s::(\w+(?:\[\])?)")
#: connection -> names of the statements prepared in its session (gone with the connection)
_prepared: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_prepared_lock = threading.Lock()


@functools.lru_cache(maxsize=64)
def _as_prepared(sql: str) -> tuple[str, str, str]:
    """A statement with psycopg2's named parameters as a server-side one: its name (from its
    text), its text with ``$n`` for each distinct name, and the EXECUTE that runs it (a named
    placeholder a parameter, cast as the statement casts it: psycopg2 sends a list as
    ``ARRAY[...]``, a text[] that would not become a uuid[] on its own)."""
    order: list[str] = []

    def number(match):
        if match.group(1) not in order:
            order.append(match.group(1))
        return f"${order.index(match.group(1)) + 1}"

    text = _PARAM.sub(number, sql)
    casts = dict(_CAST.findall(sql))
    name = "roastq_" + hashlib.sha1(sql.encode()).hexdigest()[:16]
    args = ", ".join(f"%({n})s" + (f"::{casts[n]}" if n in casts else "") for n in order)
    return name, text, f"EXECUTE {name} ({args})" if order else f"EXECUTE {name}"


#: Sent before every prepared statement's EXECUTE (and with a lean transaction's first prepared
#: one): no sequential scan where an index serves. Postgres plans a prepared statement once a
#: session (its generic plan, from the sixth execution) and keeps that plan for the session's
#: life: planned while the tables were tiny (a worker started on a quiet system), a sequential
#: scan is the cheapest plan, and it stays one while the tables grow to millions of rows, until an
#: ANALYZE renews it. The job path's statements touch a few rows each, by primary key, one table
#: at a time (a join could walk another index in full): tests/test_query_plans.py caches their
#: plans on tiny tables, fills the tables, and counts the rows each reads.
PREPARED_SETTINGS = "SET LOCAL enable_seqscan = off"


def _prepared_parts(conn, sql: str) -> tuple[str, str | None, str]:
    """``sql``'s prepared statement on ``conn``'s session: its name, the PREPARE to send first
    (None when the session has it already) and the EXECUTE (psycopg2's named parameters)."""
    name, text, execute = _as_prepared(sql)
    with _prepared_lock:
        known = name in _prepared.setdefault(conn, set())
    # The PREPARE's text goes as it is, never through psycopg2's interpolation (the EXECUTE does).
    return name, None if known else f"PREPARE {name} AS {text}", execute


def _mark_prepared(conn, names) -> None:
    with _prepared_lock:
        _prepared.setdefault(conn, set()).update(names)


def forget_prepared(conn) -> None:
    """The session's prepared statements are unknown again (after ``DEALLOCATE ALL``)."""
    with _prepared_lock:
        _prepared.pop(conn, None)


def execute_prepared(cur, sql: str, params: dict, *, prefix: str = "") -> None:
    """Run ``sql`` as a server-side prepared statement of this session: parsed and planned once
    a session (its PREPARE rides in the same round trip as the first EXECUTE), then only
    executed. Parsing and planning were half of Postgres's time on the job path (a profile,
    docs/benchmarks.md). For the hot statements of the pooled and consuming connections (the
    one-statement enqueue, a job's start and result, a consume), never on a caller's
    connection, whose session is the caller's. ``prefix``: statements sent before the EXECUTE in
    the same query string (``SET LOCAL ...``). Its plan: ``PREPARED_SETTINGS``."""
    name, prepare, execute = _prepared_parts(cur.connection, sql)
    run = f"{PREPARED_SETTINGS}; {prefix}{execute}"
    if prepare is not None:
        try:
            cur.execute(f"{prepare.replace('%', '%%')}; {run}", params)
        except psycopg2.errors.DuplicatePreparedStatement:  # prepared by a call whose EXECUTE failed
            cur.execute(run, params)
        finally:
            _mark_prepared(cur.connection, [name])
        return
    try:
        cur.execute(run, params)
    except psycopg2.errors.InvalidSqlStatementName:  # the session lost it (DISCARD ALL, say)
        with _prepared_lock:
            _prepared[cur.connection].discard(name)
        execute_prepared(cur, sql, params, prefix=prefix)


def execute_one(sql: str, params=None, *, durable: bool = True, fetch: str | None = "one", prepared: bool = False):
    """One statement as its own transaction, in one round trip; return its row (``fetch="one"``),
    its rows (``"all"``) or None. ``prepared``: as this pooled session's prepared statement
    (``execute_prepared``; ``params`` a dict).

    ``durable=False`` sends ``SET LOCAL synchronous_commit = off`` in the same query string: the
    commit does not wait for the WAL flush, and a crash of Postgres may lose it (a later durable
    commit flushes it too). Only for writes that recovery repairs or that may be lost:
    docs/architecture.md lists them."""
    prefix = "" if durable else "SET LOCAL synchronous_commit = off; "
    with autocommit() as cur:
        if prepared:
            execute_prepared(cur, sql, params, prefix=prefix)
        else:
            cur.execute(prefix + sql, params)
        if fetch == "one":
            return cur.fetchone()
        if fetch == "all":
            return cur.fetchall()
        return None


def migrate(conn=None) -> list[str]:
    """Apply the numbered migrations not yet applied; return the names applied (idempotent)."""
    own = conn is None
    conn = conn or connect()
    applied = []
    try:
        with conn:
            with conn.cursor() as cur:
                # One migrator at a time (two workers starting together must not race).
                cur.execute("SELECT pg_advisory_xact_lock(hashtext('roastq.migrate'))")
                cur.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations ("
                    " version integer PRIMARY KEY, name text NOT NULL,"
                    " applied_at timestamptz NOT NULL DEFAULT now())"
                )
                cur.execute("SELECT version FROM schema_migrations")
                done = {row[0] for row in cur.fetchall()}
                for number, name, sql in migrations():
                    if number in done:
                        continue
                    cur.execute(sql)
                    cur.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)",
                        (number, name),
                    )
                    applied.append(f"{number:04d}_{name}")
    finally:
        if own:
            conn.close()
    return applied
