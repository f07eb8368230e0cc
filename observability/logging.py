"""Process logging: loguru, one JSON object per line on stderr (``LOG_FORMAT=pretty`` for people).

Stdlib logging (dramatiq, dramatiq-pg, anthropic, httpx, our own ``logging.getLogger`` users) is
intercepted into the same stream. Every line emitted while a job runs carries the job's context
(``job_id``, ``evaluation_id``, ``message_id``, ``actor``, ``queue``, ``attempt``), read from the
context the job middleware publishes. Messages are scrubbed of secrets.
"""

from __future__ import annotations

import json
import logging
import sys
import threading

from loguru import logger

from roastq.jobctx import current_job
from roastq.redact import redact
from roastq.settings import get_settings

JOB_FIELDS = ("job_id", "evaluation_id", "message_id", "actor", "queue", "attempt")

_configured = threading.Lock()
_done = False


class InterceptHandler(logging.Handler):
    """Send stdlib log records to loguru (loguru's documented recipe)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        frame, depth = logging.currentframe(), 2
        while frame and frame.f_code.co_filename == logging.__file__:
            frame, depth = frame.f_back, depth + 1
        logger.opt(depth=depth, exception=record.exc_info).bind(logger_name=record.name).log(
            level, record.getMessage()
        )


def _patch(record) -> None:
    job = current_job.get()
    if job is not None:
        for field in JOB_FIELDS:
            record["extra"].setdefault(field, getattr(job, field))
    record["message"] = redact(record["message"])


def _json_sink(message) -> None:
    record = message.record
    entry = {
        "time": record["time"].isoformat(),
        "level": record["level"].name,
        "logger": record["extra"].get("logger_name", record["name"]),
        "message": record["message"],
        "process": record["process"].id,
        "thread": record["thread"].name,
    }
    entry.update({k: v for k, v in record["extra"].items() if k != "logger_name"})
    if record["exception"] is not None:
        exc = record["exception"]
        entry["exception"] = {"type": exc.type.__name__ if exc.type else None, "value": redact(str(exc.value))}
    sys.stderr.write(json.dumps(entry, default=str) + "\n")


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
                sys.stderr,
                level=level,
                format="<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> "
                "<cyan>{extra[job_id]!s:.8}</cyan> {message}",
                filter=lambda r: r["extra"].setdefault("job_id", "-") or True,
            )
        else:
            logger.add(_json_sink, level=level, format="{message}")
        logging.basicConfig(handlers=[InterceptHandler()], level=0, force=True)
        for noisy in ("httpx", "httpx2", "httpcore", "httpcore2", "anthropic", "anthropic._base_client"):
            logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLevelName(level)))
        _done = True
