"""Error classes: every failure is classified by its exception's type, never by its text.

``POLICY`` maps exception types to an ``ErrorClass``. ``classify`` walks the exception's MRO and
takes the first type that has an entry, so the most specific type wins: the SDK's
``EnforcedSpendLimitReachedError`` is a ``RateLimitError`` subclass, yet it is ``SPEND_LIMIT``
(permanent, fatal), not ``RATE_LIMITED`` (wait and retry).

Each class has a ``ClassPolicy``: whether it is retried, its backoff and attempt limit, and how
loudly it is reported. ``docs/failures.md`` is the same table for people.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass

import anthropic
import httpx2
import psycopg2
from dramatiq.middleware.time_limit import TimeLimitExceeded

from roastq.exceptions import BadLLMOutput, InputError, JobCancelled, JobTimeLimit, LLMRefusal, MessageRejected, Snooze


class ErrorClass(str, enum.Enum):
    RATE_LIMITED = "RATE_LIMITED"
    SPEND_LIMIT = "SPEND_LIMIT"
    OVERLOADED = "OVERLOADED"
    UPSTREAM = "UPSTREAM"
    NETWORK = "NETWORK"
    AUTH = "AUTH"
    INVALID_REQUEST = "INVALID_REQUEST"
    BAD_LLM_OUTPUT = "BAD_LLM_OUTPUT"
    REFUSAL = "REFUSAL"  # the model declined (stop_reason "refusal"): asking again gets the same
    DATABASE = "DATABASE"
    TIMEOUT = "TIMEOUT"
    INPUT = "INPUT"
    CANCELLED = "CANCELLED"
    SNOOZED = "SNOOZED"  # not a failure: the job waits (pause, budget, shared rate limit)
    WORKER_LOST = "WORKER_LOST"  # no exception: its worker died under it JOB_CRASH_LIMIT times
    UNKNOWN = "UNKNOWN"

    def __str__(self) -> str:
        return self.value


def _spend_limit_types() -> tuple[type, ...]:
    # Every SDK error for spend limits, contract limits and billing: no retry can fix them.
    names = [
        "EnforcedSpendLimitReachedError",
        "ContractSpendLimitReachedError",
        "LinkedOrganizationSpendLimitReachedError",
        "LinkedOrganizationBillingUnavailableError",
        "PaymentRequiredError",
    ]
    return tuple(getattr(anthropic, n) for n in names if hasattr(anthropic, n))


#: Exception type -> class. Order does not matter: the exception's MRO decides.
POLICY: dict[type, ErrorClass] = {
    anthropic.RateLimitError: ErrorClass.RATE_LIMITED,
    **{t: ErrorClass.SPEND_LIMIT for t in _spend_limit_types()},
    anthropic.OverloadedError: ErrorClass.OVERLOADED,
    anthropic.InternalServerError: ErrorClass.UPSTREAM,
    anthropic.APIResponseValidationError: ErrorClass.UPSTREAM,  # a body that is not the API's
    json.JSONDecodeError: ErrorClass.UPSTREAM,
    anthropic.APIConnectionError: ErrorClass.NETWORK,  # includes APITimeoutError
    httpx2.TransportError: ErrorClass.NETWORK,
    anthropic.AuthenticationError: ErrorClass.AUTH,
    anthropic.PermissionDeniedError: ErrorClass.AUTH,
    anthropic.BadRequestError: ErrorClass.INVALID_REQUEST,
    anthropic.NotFoundError: ErrorClass.INVALID_REQUEST,
    anthropic.UnprocessableEntityError: ErrorClass.INVALID_REQUEST,
    anthropic.ContentTooLargeError: ErrorClass.INVALID_REQUEST,
    anthropic.RequestHeaderFieldsTooLargeError: ErrorClass.INVALID_REQUEST,
    BadLLMOutput: ErrorClass.BAD_LLM_OUTPUT,
    LLMRefusal: ErrorClass.REFUSAL,
    psycopg2.OperationalError: ErrorClass.DATABASE,
    psycopg2.InterfaceError: ErrorClass.DATABASE,
    TimeLimitExceeded: ErrorClass.TIMEOUT,
    JobTimeLimit: ErrorClass.TIMEOUT,
    InputError: ErrorClass.INPUT,
    MessageRejected: ErrorClass.INPUT,
    JobCancelled: ErrorClass.CANCELLED,
    Snooze: ErrorClass.SNOOZED,
}


def classify(exc: BaseException) -> ErrorClass:
    """The class of the most specific type in the exception's MRO that POLICY names."""
    for klass in type(exc).__mro__:
        found = POLICY.get(klass)
        if found is not None:
            return found
    return ErrorClass.UNKNOWN


@dataclass(frozen=True)
class ClassPolicy:
    """What a class means for a job.

    retry: whether a failure of this class is ever retried.
    max_attempts: attempts (counted ones) after which the job fails.
    base_s, cap_s: exponential backoff with full jitter: uniform(0, min(cap, base * 2**n)).
    counts_attempt: False for waits the server asked for (a 429): bounded separately.
    level: how a final failure is reported ("error" or "fatal").
    """

    retry: bool
    max_attempts: int = 1
    base_s: float = 2.0
    cap_s: float = 300.0
    counts_attempt: bool = True
    level: str = "error"


PERMANENT = ClassPolicy(retry=False)
BACKOFF = ClassPolicy(retry=True, max_attempts=5, base_s=2.0, cap_s=300.0)

CLASS_POLICIES: dict[ErrorClass, ClassPolicy] = {
    ErrorClass.RATE_LIMITED: ClassPolicy(retry=True, max_attempts=5, base_s=1.0, cap_s=60.0, counts_attempt=False),
    ErrorClass.SPEND_LIMIT: ClassPolicy(retry=False, level="fatal"),
    ErrorClass.OVERLOADED: ClassPolicy(retry=True, max_attempts=5, base_s=5.0, cap_s=300.0),
    ErrorClass.UPSTREAM: BACKOFF,
    ErrorClass.NETWORK: BACKOFF,
    ErrorClass.AUTH: ClassPolicy(retry=False, level="fatal"),
    ErrorClass.INVALID_REQUEST: PERMANENT,
    ErrorClass.BAD_LLM_OUTPUT: ClassPolicy(retry=True, max_attempts=3, base_s=1.0, cap_s=10.0),
    ErrorClass.REFUSAL: PERMANENT,
    ErrorClass.DATABASE: BACKOFF,
    ErrorClass.TIMEOUT: PERMANENT,  # per agent: agent_versions.retry_on_timeout
    ErrorClass.INPUT: PERMANENT,
    ErrorClass.CANCELLED: PERMANENT,
    ErrorClass.SNOOZED: ClassPolicy(retry=True, counts_attempt=False),  # delay given by the Snooze
    ErrorClass.WORKER_LOST: PERMANENT,  # set by JobState and the reaper, never by classify()
    ErrorClass.UNKNOWN: ClassPolicy(retry=True, max_attempts=2, base_s=5.0, cap_s=60.0),
}

#: TIMEOUT for an agent that allows a retry after its time limit.
TIMEOUT_RETRIED = ClassPolicy(retry=True, max_attempts=2, base_s=5.0, cap_s=60.0)
