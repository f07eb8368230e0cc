"""The error classes and the retry decision, from exception types alone."""

import random
import subprocess
import sys
import textwrap
import time
from email.utils import formatdate

import anthropic
import httpx2
import psycopg2
import pytest
from dramatiq.middleware.time_limit import TimeLimitExceeded

from roastq.exceptions import BadLLMOutput, InputError, JobCancelled, JobTimeLimit, LLMRefusal
from roastq.failures import CLASS_POLICIES, Action, ErrorClass, RetryPolicy, classify, server_delay_s

POLICY = RetryPolicy()
MAX_WAITS = POLICY.max_waits
decide = POLICY.decide

REQUEST = httpx2.Request("POST", "http://sim/v1/messages")


def status_error(cls, status, headers=None, body=None):
    response = httpx2.Response(status, headers=headers or {}, request=REQUEST)
    return cls("boom", response=response, body=body)


@pytest.mark.parametrize(
    "exc,expected",
    [
        (status_error(anthropic.RateLimitError, 429), ErrorClass.RATE_LIMITED),
        (status_error(anthropic.EnforcedSpendLimitReachedError, 429), ErrorClass.SPEND_LIMIT),
        (status_error(anthropic.ContractSpendLimitReachedError, 429), ErrorClass.SPEND_LIMIT),
        (status_error(anthropic.PaymentRequiredError, 402), ErrorClass.SPEND_LIMIT),
        (status_error(anthropic.OverloadedError, 529), ErrorClass.OVERLOADED),
        (status_error(anthropic.InternalServerError, 500), ErrorClass.UPSTREAM),
        (status_error(anthropic.ServiceUnavailableError, 503), ErrorClass.UPSTREAM),
        (anthropic.APIConnectionError(request=REQUEST), ErrorClass.NETWORK),
        (anthropic.APITimeoutError(request=REQUEST), ErrorClass.NETWORK),
        (httpx2.ReadError("reset"), ErrorClass.NETWORK),
        (status_error(anthropic.AuthenticationError, 401), ErrorClass.AUTH),
        (status_error(anthropic.PermissionDeniedError, 403), ErrorClass.AUTH),
        (status_error(anthropic.BadRequestError, 400), ErrorClass.INVALID_REQUEST),
        (status_error(anthropic.NotFoundError, 404), ErrorClass.INVALID_REQUEST),
        (status_error(anthropic.UnprocessableEntityError, 422), ErrorClass.INVALID_REQUEST),
        (status_error(anthropic.ContentTooLargeError, 413), ErrorClass.INVALID_REQUEST),
        (BadLLMOutput("bad", step="analysis"), ErrorClass.BAD_LLM_OUTPUT),
        (LLMRefusal("declined", step="analysis"), ErrorClass.REFUSAL),
        (psycopg2.OperationalError("db down"), ErrorClass.DATABASE),
        (psycopg2.InterfaceError("closed"), ErrorClass.DATABASE),
        (TimeLimitExceeded(), ErrorClass.TIMEOUT),
        (JobTimeLimit("no time"), ErrorClass.TIMEOUT),
        (InputError("no content"), ErrorClass.INPUT),
        (JobCancelled("x"), ErrorClass.CANCELLED),
        (ZeroDivisionError(), ErrorClass.UNKNOWN),
    ],
)
def test_classified_by_type(exc, expected):
    assert classify(exc) is expected


def test_sdk_types_are_classified_when_the_sdk_is_imported_after_the_policy():
    """The policy does not import the anthropic SDK (an app that only enqueues never needs it):
    its types are picked up once the SDK is imported, whenever that is."""
    code = textwrap.dedent("""
        import sys
        from roastq.failures import ErrorClass, classify
        assert "anthropic" not in sys.modules, "importing the policy imported the SDK"
        assert classify(ValueError("x")) is ErrorClass.UNKNOWN
        import anthropic, httpx2
        request = httpx2.Request("POST", "http://sim/v1/messages")
        def error(cls, status):
            return cls("boom", response=httpx2.Response(status, request=request), body=None)
        assert classify(error(anthropic.RateLimitError, 429)) is ErrorClass.RATE_LIMITED
        assert classify(error(anthropic.EnforcedSpendLimitReachedError, 429)) is ErrorClass.SPEND_LIMIT
        assert classify(anthropic.APITimeoutError(request=request)) is ErrorClass.NETWORK
        assert classify(error(anthropic.BadRequestError, 400)) is ErrorClass.INVALID_REQUEST
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_a_subclass_can_differ_from_its_parent():
    class MyLimit(anthropic.EnforcedSpendLimitReachedError):
        pass

    assert issubclass(MyLimit, anthropic.RateLimitError)
    assert classify(status_error(MyLimit, 429)) is ErrorClass.SPEND_LIMIT


def test_message_text_does_not_decide():
    """An error whose text says 'rate limit' or 'overloaded' is still classified by its type."""
    assert classify(ValueError("429 rate_limit_error: overloaded, retry later")) is ErrorClass.UNKNOWN
    assert (
        classify(status_error(anthropic.BadRequestError, 400, body={"error": {"type": "rate_limit_error"}}))
        is ErrorClass.INVALID_REQUEST
    )


@pytest.mark.parametrize(
    "headers,expected",
    [
        ({"retry-after": "7"}, 7.0),
        ({"retry-after-ms": "2500"}, 2.5),
        ({"retry-after": "1", "retry-after-ms": "1800"}, 1.8),  # the larger: never earlier than asked
        ({}, None),
    ],
)
def test_server_delay(headers, expected):
    assert server_delay_s(status_error(anthropic.RateLimitError, 429, headers)) == expected


def test_server_delay_http_date_and_reset_headers():
    date = formatdate(time.time() + 30, usegmt=True)
    assert 28 <= server_delay_s(status_error(anthropic.RateLimitError, 429, {"retry-after": date})) <= 31
    reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 20))
    exc = status_error(
        anthropic.RateLimitError,
        429,
        {
            "retry-after": "1",
            "anthropic-ratelimit-requests-remaining": "0",
            "anthropic-ratelimit-requests-reset": reset,
        },
    )
    assert 18 <= server_delay_s(exc) <= 21


@pytest.mark.parametrize(
    "cls,status",
    [
        (anthropic.EnforcedSpendLimitReachedError, 429),
        (anthropic.AuthenticationError, 401),
        (anthropic.BadRequestError, 400),
        (anthropic.PermissionDeniedError, 403),
    ],
)
def test_permanent_classes_fail_at_once(cls, status):
    decision = decide(status_error(cls, status, {"retry-after": "1"}), {})
    assert decision.action is Action.FAIL


def test_a_refusal_fails_at_once():
    assert decide(LLMRefusal("declined", step="analysis"), {}).action is Action.FAIL


def test_fatal_levels():
    assert decide(status_error(anthropic.AuthenticationError, 401), {}).level == "fatal"
    assert decide(status_error(anthropic.EnforcedSpendLimitReachedError, 429), {}).level == "fatal"
    assert decide(status_error(anthropic.BadRequestError, 400), {}).level == "error"


def test_input_and_timeout_fail_at_once_unless_the_agent_allows_timeout_retries():
    assert decide(InputError("x"), {}).action is Action.FAIL
    assert decide(TimeLimitExceeded(), {}).action is Action.FAIL
    assert decide(TimeLimitExceeded(), {}, retry_on_timeout=True).action is Action.RETRY


def test_rate_limit_waits_at_least_what_the_server_asked_and_uses_no_attempt():
    exc = status_error(anthropic.RateLimitError, 429, {"retry-after": "3"})
    for seed in range(50):
        d = decide(exc, {"retries": 4}, rng=random.Random(seed))  # attempts nearly used up
        assert d.action is Action.RETRY and not d.counts_attempt
        assert 3.0 <= d.delay_s <= 3.3 and d.delay_reason == "server_requested"


def test_rate_limit_waits_are_bounded():
    exc = status_error(anthropic.RateLimitError, 429, {"retry-after": "3"})
    assert decide(exc, {"waits": MAX_WAITS}).action is Action.FAIL
    assert decide(exc, {"waits": 2, "waited_s": 1799.0}).action is Action.FAIL


def test_backoff_is_full_jitter_within_the_cap():
    policy = CLASS_POLICIES[ErrorClass.NETWORK]
    exc = anthropic.APIConnectionError(request=REQUEST)
    for retries in range(policy.max_attempts - 1):
        ceiling = min(policy.cap_s, policy.base_s * 2**retries)
        delays = [decide(exc, {"retries": retries}, rng=random.Random(s)).delay_s for s in range(200)]
        assert all(0 <= d <= ceiling for d in delays)
        assert max(delays) > 0.8 * ceiling and min(delays) < 0.2 * ceiling  # spread over the range
    assert decide(exc, {"retries": policy.max_attempts - 1}).action is Action.FAIL


def test_overloaded_honours_a_server_delay_longer_than_the_backoff():
    exc = status_error(anthropic.OverloadedError, 529, {"retry-after": "40"})
    d = decide(exc, {}, rng=random.Random(1))
    assert (d.delay_s, d.delay_reason) == (40.0, "server_requested")


def test_bad_llm_output_is_retried_at_most_twice():
    exc = BadLLMOutput("bad", step="analysis")
    assert decide(exc, {"retries": 0}).action is Action.RETRY
    assert decide(exc, {"retries": 1}).action is Action.RETRY
    assert decide(exc, {"retries": 2}).action is Action.FAIL


def test_unknown_is_retried_once():
    assert decide(KeyError("x"), {"retries": 0}).action is Action.RETRY
    assert decide(KeyError("x"), {"retries": 1}).action is Action.FAIL


def test_error_text_is_clean_and_bounded():
    exc = RuntimeError("key sk-ant-api03-SECRETSECRETSECRET at postgresql://u:hunter2@db/x " + "y" * 3000)
    text = decide(exc, {}).error
    assert "SECRETSECRET" not in text and "hunter2" not in text
    assert len(text) <= 1000 and text.startswith("RuntimeError: ")


def test_snooze_waits_the_given_delay_and_uses_no_attempt():
    from roastq.exceptions import Snooze

    d = decide(Snooze(120.0, "paused"), {"retries": 99, "waits": 99})
    assert (d.action, d.error_class, d.delay_s, d.delay_reason, d.counts_attempt) == (
        Action.SNOOZE,
        ErrorClass.SNOOZED,
        120.0,
        "paused",
        False,
    )
