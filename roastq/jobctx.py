"""The running job's context, set by the job middleware and read by the pipeline and the logs."""

from __future__ import annotations

import os
import socket
import time
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass
class JobContext:
    job_id: str
    message_id: str
    actor: str
    queue: str
    attempt: int
    evaluation_id: str | None = None
    agent_id: str | None = None
    #: time.monotonic() by which the job must be done (its time limit)
    deadline: float = field(default_factory=lambda: time.monotonic() + 240)
    #: set by the retry decision: skip cached LLM answers (a retry after bad output)
    bypass_cache: bool = False
    #: the agent allows a retry after its time limit
    retry_on_timeout: bool = False
    #: set when the job's result was saved: that transaction also closed the attempt and marked
    #: the broker message done, so the ack needs no round trip of its own
    finished_with_result: bool = False

    def time_left(self) -> float:
        return self.deadline - time.monotonic()


current_job: ContextVar[JobContext | None] = ContextVar("roastq_current_job", default=None)
#: Why the job middleware could not start the job (e.g. the database was down): the actor
#: raises it, so the failure is classified and retried like any other.
start_error: ContextVar[BaseException | None] = ContextVar("roastq_start_error", default=None)


_worker_id: tuple[int, str] | None = None


def worker_host() -> str:
    """This host's name in worker ids: WORKER_HOST, else the hostname (containers and network
    namespaces may share a hostname: set WORKER_HOST to tell their workers apart)."""
    from roastq.settings import get_settings

    return get_settings().worker_host or socket.gethostname()


def worker_id() -> str:
    """This process's identity in ``worker_heartbeats`` and ``jobs.worker_id``: host:pid."""
    global _worker_id
    if _worker_id is None or _worker_id[0] != os.getpid():  # anew in a forked child
        _worker_id = (os.getpid(), f"{worker_host()}:{os.getpid()}")
    return _worker_id[1]


def worker_stale_after_s() -> float:
    """A worker whose heartbeat is older than this is gone: three missed beats."""
    from roastq.settings import get_settings

    return 3 * get_settings().heartbeat_interval_s
