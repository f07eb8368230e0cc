"""Process logging: loguru, one JSON object per line on stderr (``LOG_FORMAT=pretty`` for people).

Stdlib logging (dramatiq, dramatiq-pg, anthropic, httpx, our own ``logging.getLogger`` users) is
intercepted into the same stream. Every line emitted while a job runs carries the job's context
(``job_id``, ``evaluation_id``, ``message_id``, ``actor``, ``queue``, ``attempt``), read from the
context the job middleware publishes, and is also kept in a per-job buffer that the job-logs
middleware stores with the job (``jobs.logs``). Messages and exceptions are scrubbed of secrets;
tracebacks carry source lines only, never variable values (they may hold document text).

In a ``dramatiq`` worker process, dramatiq points ``sys.stderr`` at a pipe to its main process,
which writes what it reads to the real stderr: the sinks look ``sys.stderr`` up on every line so
that each line goes through that pipe whole.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import traceback
from collections import OrderedDict
from datetime import datetime, timezone

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


class InterceptHandler(logging.Handler):
    """Send stdlib log records to loguru (loguru's documented recipe).

    loguru's handlers are not re-entrant: a record logged by a signal handler that interrupted
    this thread inside loguru (dramatiq's workers log from their SIGTERM handler) is written
    directly as one JSON line instead.
    """

    _local = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._local, "busy", False):
            sys.stderr.write(json.dumps({
                "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(),
                "level": record.levelname, "logger": record.name, "message": redact(record.getMessage()),
                "process": record.process, "thread": record.threadName}) + "\n")
            return
        try:
            level = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        frame, depth = logging.currentframe(), 2
        while frame and frame.f_code.co_filename == logging.__file__:
            frame, depth = frame.f_back, depth + 1
        self._local.busy = True
        try:
            logger.opt(depth=depth, exception=record.exc_info).bind(logger_name=record.name).log(
                level, record.getMessage()
            )
        finally:
            self._local.busy = False


def _patch(record) -> None:
    job = current_job.get()
    if job is not None:
        for field in JOB_FIELDS:
            record["extra"].setdefault(field, getattr(job, field))
    record["message"] = redact(record["message"])


def _exception(record) -> dict | None:
    exc = record["exception"]
    if exc is None or exc.type is None:
        return None
    # format_exception prints source lines, never locals: no document text, no keys.
    text = "".join(traceback.format_exception(exc.type, exc.value, exc.traceback))
    return {"type": exc.type.__name__, "value": redact(str(exc.value))[:MAX_JOB_LINE_CHARS],
            "traceback": redact(text)}


def _entry(record) -> dict:
    entry = {
        "time": record["time"].isoformat(),
        "level": record["level"].name,
        "logger": record["extra"].get("logger_name", record["name"]),
        "message": record["message"],
        "process": record["process"].id,
        "thread": record["thread"].name,
    }
    entry.update({k: v for k, v in record["extra"].items() if k != "logger_name"})
    exc = _exception(record)
    if exc is not None:
        entry["exception"] = exc
    return entry


def _json_sink(message) -> None:
    sys.stderr.write(json.dumps(_entry(message.record), default=str) + "\n")


# -- the job's own lines, kept for jobs.logs ----------------------------------------------------

_job_lines: "OrderedDict[str, dict]" = OrderedDict()
_job_lines_lock = threading.Lock()


def _job_sink(message) -> None:
    job = current_job.get()  # sinks run in the thread that logs: the job's own thread
    if job is None:
        return
    record = message.record
    line = {
        "time": record["time"].isoformat(),
        "level": record["level"].name,
        "logger": record["extra"].get("logger_name", record["name"]),
        "message": record["message"][:MAX_JOB_LINE_CHARS],
        "attempt": job.attempt,
    }
    exc = record["exception"]
    if exc is not None and exc.type is not None:
        line["exception"] = f"{exc.type.__name__}: {redact(str(exc.value))}"[:MAX_JOB_LINE_CHARS]
    with _job_lines_lock:
        buf = _job_lines.get(job.job_id)
        if buf is None:
            if len(_job_lines) >= MAX_BUFFERED_JOBS:
                _job_lines.popitem(last=False)
            buf = _job_lines[job.job_id] = {"lines": [], "dropped": 0}
        if len(buf["lines"]) < MAX_JOB_LINES:
            buf["lines"].append(line)
        else:
            buf["dropped"] += 1


def take_job_lines(job_id: str) -> list[dict]:
    """The lines logged by ``job_id``'s running attempt since the last call (and forget them)."""
    with _job_lines_lock:
        buf = _job_lines.pop(job_id, None)
    if buf is None:
        return []
    lines = buf["lines"]
    if buf["dropped"]:
        lines.append({"time": lines[-1]["time"], "level": "WARNING", "logger": "roastq.logs",
                      "message": f"{buf['dropped']} more lines of this attempt not stored",
                      "attempt": lines[-1]["attempt"]})
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
            logger.add(_json_sink, level=level, format="{message}")
        logger.add(_job_sink, level=level, format="{message}")
        # The stdlib level matches ours: records below it are never built (dramatiq logs a lot at DEBUG).
        logging.basicConfig(handlers=[InterceptHandler()], level=logging.getLevelName(level), force=True)
        for noisy in CHATTY:
            logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLevelName(level)))
        _done = True
