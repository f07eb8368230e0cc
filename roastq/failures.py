"""The failure policy: error classes by exception type (never by text), and the decision.

The core's, not the middleware's: the retry middleware, the job table, the logs, Sentry, the
metrics and the LLM client all use ``classify`` and ``RetryPolicy.decide`` from here.

``POLICY`` maps exception types to an ``ErrorClass``. ``classify`` walks the exception's MRO and
takes the first type that has an entry, so the most specific type wins: the SDK's
``EnforcedSpendLimitReachedError`` is a ``RateLimitError`` subclass, yet it is ``SPEND_LIMIT``
(permanent, fatal), not ``RATE_LIMITED`` (wait and retry).

Each class has a ``ClassPolicy``: whether it is retried, its backoff and attempt limit, and how
loudly it is reported. ``RetryPolicy.decide`` turns one failed attempt into a ``Decision`` whose
``Action`` is retry, snooze, fail or cancel; every report of the attempt takes its words from it
(``Action.outcome``). ``docs/failures.md`` is the same table for people.
"""

from __future__ import annotations

import enum
import json
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime

import psycopg2
from dramatiq.middleware.time_limit import TimeLimitExceeded

from roastq.exceptions import BadLLMOutput, InputError, JobCancelled, JobTimeLimit, LLMRefusal, Snooze
from roastq.redact import clean_error


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


#: The SDKs' exception types, by module and name: entered into ``POLICY`` once their module is
#: imported. An exception of a type cannot exist before its module is loaded, so classifying by
#: them needs no import of ours: importing the policy does not import the anthropic SDK (2 s and
#: 50 MiB), which an app that only enqueues, the CLI and the scheduler never use.
SDK_POLICY: dict[str, dict[str, ErrorClass]] = {
    "anthropic": {
        "RateLimitError": ErrorClass.RATE_LIMITED,
        # Every SDK error for spend limits, contract limits and billing: no retry can fix them
        # (names this SDK version lacks are skipped).
        "EnforcedSpendLimitReachedError": ErrorClass.SPEND_LIMIT,
        "ContractSpendLimitReachedError": ErrorClass.SPEND_LIMIT,
        "LinkedOrganizationSpendLimitReachedError": ErrorClass.SPEND_LIMIT,
        "LinkedOrganizationBillingUnavailableError": ErrorClass.SPEND_LIMIT,
        "PaymentRequiredError": ErrorClass.SPEND_LIMIT,
        "OverloadedError": ErrorClass.OVERLOADED,
        "InternalServerError": ErrorClass.UPSTREAM,
        "APIResponseValidationError": ErrorClass.UPSTREAM,  # a body that is not the API's
        "APIConnectionError": ErrorClass.NETWORK,  # includes APITimeoutError
        "AuthenticationError": ErrorClass.AUTH,
        "PermissionDeniedError": ErrorClass.AUTH,
        "BadRequestError": ErrorClass.INVALID_REQUEST,
        "NotFoundError": ErrorClass.INVALID_REQUEST,
        "UnprocessableEntityError": ErrorClass.INVALID_REQUEST,
        "ContentTooLargeError": ErrorClass.INVALID_REQUEST,
        "RequestHeaderFieldsTooLargeError": ErrorClass.INVALID_REQUEST,
    },
    "httpx2": {"TransportError": ErrorClass.NETWORK},
}

#: Exception type -> class. Order does not matter: the exception's MRO decides. The SDKs' types
#: join it when their module has been imported (``_enter_sdk_types``).
POLICY: dict[type, ErrorClass] = {
    json.JSONDecodeError: ErrorClass.UPSTREAM,
    BadLLMOutput: ErrorClass.BAD_LLM_OUTPUT,
    LLMRefusal: ErrorClass.REFUSAL,
    psycopg2.OperationalError: ErrorClass.DATABASE,
    psycopg2.InterfaceError: ErrorClass.DATABASE,
    TimeLimitExceeded: ErrorClass.TIMEOUT,
    JobTimeLimit: ErrorClass.TIMEOUT,
    InputError: ErrorClass.INPUT,
    JobCancelled: ErrorClass.CANCELLED,
    Snooze: ErrorClass.SNOOZED,
}

_sdk_pending = set(SDK_POLICY)


def _enter_sdk_types() -> None:
    """Enter the types of every SDK module imported by now into ``POLICY``. A module still being
    imported (by another thread) is left for a later call."""
    for name in list(_sdk_pending):
        module = sys.modules.get(name)
        if module is None or getattr(getattr(module, "__spec__", None), "_initializing", False):
            continue
        for type_name, error_class in SDK_POLICY[name].items():
            klass = getattr(module, type_name, None)
            if klass is not None:
                POLICY[klass] = error_class
        _sdk_pending.discard(name)


def classify(exc: BaseException) -> ErrorClass:
    """The class of the most specific type in the exception's MRO that POLICY names."""
    if _sdk_pending:
        _enter_sdk_types()
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


# -- the decision ----------------------------------------------------------------------------------


class Action(str, enum.Enum):
    """What happens after a failed attempt."""

    RETRY = "retry"  # run again after a backoff or the server's Retry-After; uses an attempt or a wait
    SNOOZE = "snooze"  # not a failure: run again after the delay we chose (pause, budget, limiter)
    FAIL = "fail"  # for good: FAILED, a dead letter, one Sentry event
    CANCEL = "cancel"  # the job was cancelled while it ran

    def __str__(self) -> str:
        return self.value

    @property
    def final(self) -> bool:
        return self in (Action.FAIL, Action.CANCEL)

    @property
    def outcome(self) -> str:
        """The attempt's outcome, as ``job_attempts``, the logs and the metrics say it."""
        return _OUTCOMES[self]


_OUTCOMES = {Action.RETRY: "retried", Action.SNOOZE: "snoozed", Action.FAIL: "failed", Action.CANCEL: "cancelled"}


@dataclass(frozen=True)
class Decision:
    action: Action
    error_class: ErrorClass
    error: str  # clean: no secrets, at most 1,000 characters
    level: str = "error"
    delay_s: float = 0.0
    delay_reason: str | None = None  # "backoff", "server_requested", or a snooze's reason
    counts_attempt: bool = True

    @property
    def final(self) -> bool:
        return self.action.final

    @property
    def waits(self) -> bool:
        """The job runs again after ``delay_s`` (a retry or a snooze)."""
        return not self.action.final


def server_delay_s(exc: BaseException) -> float | None:
    """The delay the server asked for, in seconds: the largest of retry-after-ms, retry-after
    (seconds or an HTTP date) and the reset time of any exhausted rate limit. None if it asked
    for nothing."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    asked: list[float] = []
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            asked.append(float(ms) / 1000)
        except ValueError:
            pass
    if (ra := headers.get("retry-after")) is not None:
        try:
            asked.append(float(ra))
        except ValueError:
            try:
                asked.append(parsedate_to_datetime(ra).timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    for kind in ("requests", "tokens", "input-tokens", "output-tokens"):
        if headers.get(f"anthropic-ratelimit-{kind}-remaining") == "0":
            reset = headers.get(f"anthropic-ratelimit-{kind}-reset")
            if reset:
                try:
                    asked.append(datetime.fromisoformat(reset.replace("Z", "+00:00")).timestamp() - time.time())
                except ValueError:
                    pass
    return max(0.0, max(asked)) if asked else None


@dataclass(frozen=True)
class RetryPolicy:
    """Decides what one failed attempt leads to, from its exception and the message's counters.

    backoff_scale: multiplies every backoff (``BACKOFF_SCALE``: tests and demos shorten waits).
    max_waits, max_wait_total_s: rate-limit waits use no attempt, but are bounded.
    classes: the policy of each error class.
    """

    backoff_scale: float = 1.0
    max_waits: int = 20
    max_wait_total_s: float = 1800.0
    classes: dict = field(default_factory=lambda: dict(CLASS_POLICIES))

    def policy_for(self, error_class: ErrorClass, *, retry_on_timeout: bool = False) -> ClassPolicy:
        if error_class is ErrorClass.TIMEOUT and retry_on_timeout:
            return TIMEOUT_RETRIED
        return self.classes[error_class]

    def decide(self, exc: BaseException, options: dict, *, retry_on_timeout: bool = False, rng=random) -> Decision:
        """The decision for one failed attempt, given the message's retry counters in ``options``
        (``retries``: counted failures; ``waits``, ``waited_s``: rate-limit waits)."""
        error_class = classify(exc)
        policy = self.policy_for(error_class, retry_on_timeout=retry_on_timeout)
        error = clean_error(exc)
        if error_class is ErrorClass.CANCELLED:
            return Decision(Action.CANCEL, error_class, error)
        if error_class is ErrorClass.SNOOZED:
            return Decision(
                Action.SNOOZE, error_class, error, delay_s=exc.delay_s, delay_reason=exc.reason, counts_attempt=False
            )
        if not policy.retry:
            return Decision(Action.FAIL, error_class, error, level=policy.level)

        server = server_delay_s(exc)
        if not policy.counts_attempt:
            waits, waited = options.get("waits", 0), options.get("waited_s", 0.0)
            delay = server if server is not None else self.backoff(policy, waits + 1, rng)
            if waits >= self.max_waits or waited + delay > self.max_wait_total_s:
                return Decision(
                    Action.FAIL, error_class, f"{error} (gave up after {waits} rate-limit waits)", level=policy.level
                )
            # A little jitter on top, never below what the server asked, so workers don't stampede.
            delay += rng.uniform(0, min(1.0, 0.1 * delay))
            return Decision(
                Action.RETRY,
                error_class,
                error,
                delay_s=delay,
                delay_reason="server_requested" if server is not None else "backoff",
                counts_attempt=False,
            )

        counted = options.get("retries", 0) + 1
        if counted >= policy.max_attempts:
            return Decision(Action.FAIL, error_class, error, level=policy.level)
        backoff = self.backoff(policy, counted, rng)
        if server is not None and server >= backoff:
            return Decision(Action.RETRY, error_class, error, delay_s=server, delay_reason="server_requested")
        return Decision(Action.RETRY, error_class, error, delay_s=backoff, delay_reason="backoff")

    def backoff(self, policy: ClassPolicy, n: int, rng=random) -> float:
        """Full jitter (AWS): uniform(0, min(cap, base * 2**(n-1))), times ``backoff_scale``."""
        return rng.uniform(0, self.backoff_scale * min(policy.cap_s, policy.base_s * 2 ** (n - 1)))
