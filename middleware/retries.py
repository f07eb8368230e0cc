"""Retries by error class, with exponential backoff, full jitter and the server's Retry-After.

Used instead of dramatiq's ``Retries`` for our actors. The decision (``roastq.failures``: retry,
snooze, fail or cancel) is made once per failed attempt by ``decision_for`` and kept on the
message, so the job-state middleware, the logs, Sentry and the metrics all report the same one.
"""

from __future__ import annotations

from dramatiq.middleware import Middleware

from roastq.failures import Action, Decision, ErrorClass, RetryPolicy


def decision_for(message, exception: BaseException, policy: RetryPolicy) -> Decision:
    """The decision for this message's failed attempt, computed once and kept on the message."""
    decision = getattr(message, "roastq_decision", None)
    if decision is None:
        job = getattr(message, "roastq_job", None)
        decision = policy.decide(exception, message.options, retry_on_timeout=bool(job and job.retry_on_timeout))
        message.roastq_decision = decision
    return decision


class Retries(Middleware):
    """Retry failed messages according to their error class.

    A retry or a snooze re-enqueues the message with the chosen delay; a final failure marks the
    message failed, so the broker rejects it (a dead letter that stays queryable in
    ``dramatiq.queue``). Message options kept across retries: ``retries`` (counted failures),
    ``waits`` and ``waited_s`` (rate-limit waits), ``bypass_cache`` (the next attempt must not be
    served a cached answer: set after BAD_LLM_OUTPUT).

    Parameters:
      policy(RetryPolicy): the decision; the same object every middleware of the stack reports.
    """

    def __init__(self, policy: RetryPolicy):
        self.policy = policy

    def after_process_message(self, broker, message, *, result=None, exception=None):
        if exception is None:
            return
        decision = decision_for(message, exception, self.policy)
        if decision.final:
            message.fail()
            return
        if decision.action is Action.SNOOZE:
            pass  # a wait we chose ourselves: no attempt used, no rate-limit wait counted
        elif decision.counts_attempt:
            message.options["retries"] = message.options.get("retries", 0) + 1
        else:
            message.options["waits"] = message.options.get("waits", 0) + 1
            message.options["waited_s"] = message.options.get("waited_s", 0.0) + decision.delay_s
        message.options["bypass_cache"] = decision.error_class is ErrorClass.BAD_LLM_OUTPUT
        message.options.pop("traceback", None)
        if getattr(exception, "parks", False) and hasattr(broker, "park"):
            broker.park(message)  # a step waits in the batch lane, which wakes the job (roastq/llm/batch.py)
            return
        broker.enqueue(message, delay=max(1, int(decision.delay_s * 1000)))
