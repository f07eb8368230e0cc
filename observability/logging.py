"""Process logging: loguru, one JSON object per line on stderr (``LOG_FORMAT=pretty`` for people).

Stdlib logging (dramatiq, dramatiq-pg, anthropic, httpx, our own ``logging.getLogger`` users) is
intercepted into the same stream. Every line emitted while a job runs carries the job's context
(``job_id``, ``evaluation_id``, ``message_id``, ``actor``, ``queue``, ``attempt``), read from the
context the job middleware publishes, and is also kept in a per-job buffer that the job-logs
middleware stores with the job (``job_logs``). Messages and exceptions are scrubbed of secrets;
tracebacks carry source lines only, never variable values (they may hold document text).

In a ``dramatiq`` worker process, dramatiq points ``sys.stderr`` at a pipe to its main process,
which writes what it reads to the real stderr: the sinks look ``sys.stderr`` up on every line so
that each line goes through that pipe whole.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import sys
import threading
import time
import traceback
from datetime import UTC, datetime

import orjson
from loguru import logger

from roastq.jobctx import current_job
from roastq.redact import redact
from roastq.settings import get_settings

JOB_FIELDS = ("job_id", "evaluation_id", "message_id", "actor", "queue", "attempt")
#: Third-party loggers that log request bodies (the document) at DEBUG: never below INFO.
CHATTY = ("httpx", "httpx2", "httpcore", "httpcore2", "anthropic", "anthropic._base_client")
#: Lines kept for one job attempt; the rest are counted, not kept.
MAX_JOB_LINES = 200
#: Longest message kept in a stored job line.
MAX_JOB_LINE_CHARS = 2000
#: Jobs whose lines are buffered at once in one process (a bound, not a tuning knob).
MAX_BUFFERED_JOBS = 10_000

_configured = threading.Lock()
_done = False
#: Set by setup_logging: the level's number (records below it are not serialised) and whether
#: the JSON sink is the one in use.
_state = {"min_level": 0, "json": True, "sink": None}
#: Where the patcher leaves a record's JSON line for the sink.
_LINE = "_roastq_json_line"


def _dumps(entry: dict) -> str:
    """One JSON line: orjson (several times faster than json), anything unknown as str()."""
    return orjson.dumps(entry, default=str).decode() + "\n"


#: loguru loggers bound to a stdlib logger's name, one a name.
_bound: dict = {}


class InterceptHandler(logging.Handler):
    """Send stdlib log records to loguru (loguru's documented recipe).

    loguru's handlers are not re-entrant: a record logged by a signal handler that interrupted
    this thread inside loguru (dramatiq's workers log from their SIGTERM handler) is written
    directly as one JSON line instead.
    """

    _local = threading.local()

    def createLock(self) -> None:
        # No handler lock: stdlib would hold it across all of loguru's work, so the worker threads
        # queued behind one another on every line (63% of a 10-thread profile waited in
        # Handler.acquire). loguru serialises what needs it, the write, under its own lock.
        self.lock = None

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._local, "busy", False):
            sys.stderr.write(
                _dumps(
                    {
                        "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
                        "level": record.levelname,
                        "logger": record.name,
                        "message": redact(record.getMessage()),
                        "process": record.process,
                        "thread": record.threadName,
                    }
                )
            )
            return
        try:
            level = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        bound = _bound.get(record.name)
        if bound is None:
            bound = _bound[record.name] = logger.bind(logger_name=record.name)
        self._local.busy = True
        try:
            # Our lines name the stdlib logger (logger_name), not loguru's caller frame: no frame
            # walk, and a logger bound once a name rather than two built a record.
            (bound.opt(exception=record.exc_info) if record.exc_info else bound).log(level, record.getMessage())
        finally:
            self._local.busy = False


class HotLogger:
    """The stdlib logger ``name``'s calls (``%``-style arguments), for the lines a worker logs
    for every job (JobState's "job started" and "job completed").

    In a process that ``setup_logging`` configured (a worker), a line skips stdlib logging, and
    while our JSON sink is loguru's only one, loguru's record too: the line, the same JSON object
    as loguru's path builds, is built here once and queued for the writer thread, and kept with
    the job. loguru's record building was half a line's cost, stdlib's record a third of the rest
    (``bench/bench_logging.py``): 155 us of CPU a job for the two lines before, 25 now. A line with
    an exception, with ``LOG_FORMAT=pretty``, or with another loguru sink added (a test's, yours)
    goes through loguru.
    In a process whose logging is its own (an app running a worker in-process), the lines go to
    the stdlib logger, to that app's handlers, as any other.
    """

    __slots__ = ("name", "std", "_bound")

    def __init__(self, name: str):
        self.name = name
        self.std = logging.getLogger(name)
        self._bound = None

    def _log(self, level: str, levelno: int, msg: str, args: tuple, exc_info) -> None:
        if not _done:
            self.std.log(levelno, msg, *args, exc_info=exc_info)
            return
        if levelno < _state["min_level"]:
            return
        try:
            message = msg % args if args else msg
        except (TypeError, ValueError):  # stdlib logs a line whose arguments do not fit, too
            message = f"{msg} {args!r}"
        if not exc_info and _only_our_sink():
            _direct_line(self.name, level, message)
            return
        bound = self._bound
        if bound is None:
            bound = self._bound = logger.bind(logger_name=self.name)
        (bound.opt(exception=exc_info) if exc_info else bound).log(level, message)

    def info(self, msg: str, *args) -> None:
        self._log("INFO", logging.INFO, msg, args, None)

    def warning(self, msg: str, *args, exc_info=None) -> None:
        self._log("WARNING", logging.WARNING, msg, args, exc_info)

    def error(self, msg: str, *args, exc_info=None) -> None:
        self._log("ERROR", logging.ERROR, msg, args, exc_info)


def _only_our_sink() -> bool:
    """Whether loguru's one sink is the JSON writer that setup_logging added (its handler table
    is loguru's own attribute: if a loguru release renames it, every line takes loguru's path)."""
    handlers = getattr(getattr(logger, "_core", None), "handlers", None)
    return _state["sink"] is not None and handlers is not None and len(handlers) == 1 and _state["sink"] in handlers


def _direct_line(name: str, level: str, message: str) -> None:
    """The JSON line and the job's own line of one record, as ``_patch`` and ``_entry`` build
    them for a record that loguru made (tests/test_logging.py compares the two)."""
    message = redact(message)
    time_iso = datetime.now().astimezone().isoformat()  # loguru's: local time, with its offset
    entry = {
        "time": time_iso,
        "level": level,
        "logger": name,
        "message": message,
        "process": os.getpid(),
        "thread": threading.current_thread().name,
    }
    job = current_job.get()
    if job is not None:
        for field in JOB_FIELDS:
            entry[field] = getattr(job, field)
    _writer.put(_dumps(entry))
    if job is not None:
        _keep_line(job, time_iso, level, name, message, None)


def _patch(record) -> None:
    """Runs once a record, before any sink and outside their locks: the job context, the
    scrubbing, and (at or above the configured level) the JSON line and the job's own line,
    each built once. The sinks only write what is built here."""
    job = current_job.get()
    if job is not None:
        for field in JOB_FIELDS:
            record["extra"].setdefault(field, getattr(job, field))
    record["message"] = redact(record["message"])
    if record["level"].no < _state["min_level"]:
        return  # an extra sink below our level (a test's) sees the record; we build nothing
    if _state["json"]:
        record["extra"][_LINE] = _dumps(_entry(record))
    if job is not None:
        _keep_job_line(job, record)


def _exception(record) -> dict | None:
    exc = record["exception"]
    if exc is None or exc.type is None:
        return None
    # format_exception prints source lines, never locals: no document text, no keys.
    text = "".join(traceback.format_exception(exc.type, exc.value, exc.traceback))
    return {"type": exc.type.__name__, "value": redact(str(exc.value))[:MAX_JOB_LINE_CHARS], "traceback": redact(text)}


def _entry(record) -> dict:
    entry = {
        "time": record["time"].isoformat(),
        "level": record["level"].name,
        "logger": record["extra"].get("logger_name", record["name"]),
        "message": record["message"],
        "process": record["process"].id,
        "thread": record["thread"].name,
    }
    entry.update({k: v for k, v in record["extra"].items() if k != "logger_name" and k != _LINE})
    exc = _exception(record)
    if exc is not None:
        entry["exception"] = exc
    return entry


def _json_sink(message) -> None:
    """Write the record's JSON line (built once, by the patcher) to stderr, synchronously."""
    record = message.record
    line = record["extra"].get(_LINE)
    sys.stderr.write(line if line is not None else _dumps(_entry(record)))


class _LineWriter:
    """The configured JSON sink: hands each line to one writer thread a process.

    loguru calls a sink under its handler's lock; a sink that writes (a system call, the GIL
    released) there makes the worker threads convoy behind the lock (50% of a 10-thread profile
    waited in loguru's ``_protected_lock``). Here the lock covers only a ``SimpleQueue.put``; the
    writer thread writes what has queued up, many lines a write, to ``sys.stderr`` as it is at
    that moment (in a dramatiq worker, the pipe to the main process). Lines still queued are
    written at exit; a process killed outright (SIGKILL) loses at most the last few milliseconds.
    """

    GATHER_S = 0.005
    MAX_BATCH = 8000  # characters a write: one pipe message, under multiprocessing's one-write limit

    def __init__(self):
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # the thread does not survive a fork
        atexit.register(self.drain)

    def _reset(self):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # lines (str), and drain markers
        self._write_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()

    def __call__(self, message) -> None:
        line = message.record["extra"].get(_LINE)
        self.put(line if line is not None else _dumps(_entry(message.record)))

    def put(self, line: str) -> None:
        self._queue.put(line)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="roastq-log-writer", daemon=True)
            self._thread.start()

    def _run(self):
        while True:
            first = self._queue.get()
            # Let a few milliseconds of lines gather: one wake-up and one write for all of them,
            # rather than a thread switch a line.
            time.sleep(self.GATHER_S)
            self._write_queued(first)

    def _write_queued(self, first) -> None:
        """Write ``first`` and what is queued behind it, many lines a write; a drain's marker (an
        Event) is set once every line queued before it is written."""
        batch, size, item = [], 0, first
        while True:
            if isinstance(item, threading.Event):
                self._write(batch)
                batch, size = [], 0
                item.set()
            else:
                batch.append(item)
                size += len(item)
                if size >= self.MAX_BATCH:
                    self._write(batch)
                    batch, size = [], 0
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
        self._write(batch)

    def _write(self, batch: list[str]) -> None:
        if not batch:
            return
        with self._write_lock:
            try:
                sys.stderr.write("".join(batch))
                sys.stderr.flush()
            except (OSError, ValueError):  # stderr closed under us (shutdown): nothing to do
                pass

    def drain(self, timeout_s: float = 2.0) -> None:
        """Write every line queued so far (at exit, or for a test). The writer thread may hold a
        line it took while it waits for more: a marker queued behind the lines is set when it has
        written them all. With no writer thread, or one that does not answer, the lines still
        queued are written from the calling thread."""
        thread = self._thread
        if thread is not None and thread.is_alive() and thread is not threading.current_thread():
            marker = threading.Event()
            self._queue.put(marker)
            if marker.wait(timeout_s):
                return
        try:
            first = self._queue.get_nowait()
        except queue.Empty:
            return
        self._write_queued(first)


_writer = _LineWriter()


def flush_logs() -> None:
    """Write the JSON lines still queued for the writer thread."""
    _writer.drain()


# -- the job's own lines, kept for job_logs ----------------------------------------------------

# One buffer a running job, written only by the job's own thread (its context is a contextvar)
# and taken by it after the attempt: single dict operations, atomic under the GIL, and no lock.
_job_lines: dict[str, dict] = {}


def _keep_job_line(job, record) -> None:
    exc, exc_line = record["exception"], None
    if exc is not None and exc.type is not None:
        exc_line = f"{exc.type.__name__}: {redact(str(exc.value))}"
    _keep_line(
        job,
        record["time"].isoformat(),
        record["level"].name,
        record["extra"].get("logger_name", record["name"]),
        record["message"],
        exc_line,
    )


def _keep_line(job, time_iso: str, level: str, name: str, message: str, exc_line: str | None) -> None:
    buf = _job_lines.get(job.job_id)
    if buf is None:
        if len(_job_lines) >= MAX_BUFFERED_JOBS:  # only if attempts were never taken: forget the oldest
            try:
                _job_lines.pop(next(iter(_job_lines)), None)
            except (StopIteration, RuntimeError):
                pass
        buf = _job_lines.setdefault(job.job_id, {"lines": [], "dropped": 0})
    if len(buf["lines"]) >= MAX_JOB_LINES:
        buf["dropped"] += 1
        return
    line = {
        "time": time_iso,
        "level": level,
        "logger": name,
        "message": message[:MAX_JOB_LINE_CHARS],
        "attempt": job.attempt,
    }
    if exc_line is not None:
        line["exception"] = exc_line[:MAX_JOB_LINE_CHARS]
    buf["lines"].append(line)


def take_job_lines(job_id: str) -> list[dict]:
    """The lines logged by ``job_id``'s running attempt since the last call (and forget them)."""
    buf = _job_lines.pop(job_id, None)
    if buf is None:
        return []
    lines = buf["lines"]
    if buf["dropped"]:
        lines.append(
            {
                "time": lines[-1]["time"],
                "level": "WARNING",
                "logger": "roastq.logs",
                "message": f"{buf['dropped']} more lines of this attempt not stored",
                "attempt": lines[-1]["attempt"],
            }
        )
    return lines


def setup_logging(level: str | None = None, fmt: str | None = None) -> None:
    """Configure loguru and the stdlib interception for this process (idempotent)."""
    global _done
    with _configured:
        if _done:
            return
        settings = get_settings()
        level = level or settings.log_level
        fmt = fmt or settings.log_format
        logger.remove()
        _state["sink"] = None
        _state["min_level"] = logger.level(level).no
        _state["json"] = fmt != "pretty"
        logger.configure(patcher=_patch)
        if fmt == "pretty":
            logger.add(
                lambda m: sys.stderr.write(m),
                level=level,
                format="<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
                "<cyan>{extra[job_id]!s:.8}</cyan> {message}",
                filter=lambda r: r["extra"].setdefault("job_id", "-") or True,
                colorize=False,
                backtrace=False,
                diagnose=False,  # loguru's diagnose prints variable values: documents, keys
            )
        else:
            _state["sink"] = logger.add(_writer, level=level, format="{message}")
        # The job's own lines are kept by the patcher: no second sink (and lock) a line.
        # The stdlib level matches ours: records below it are never built (dramatiq logs a lot at DEBUG).
        logging.basicConfig(handlers=[InterceptHandler()], level=logging.getLevelName(level), force=True)
        for noisy in CHATTY:
            logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLevelName(level)))
        _done = True
