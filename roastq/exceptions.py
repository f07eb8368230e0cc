"""roastq's own exception types. The failure middleware classifies by these types, never by text."""


class RoastqError(Exception):
    """Base of roastq's own errors."""


class InputError(RoastqError):
    """The job's document or agent is missing or unusable: no retry can fix it."""


class BadLLMOutput(RoastqError):
    """Claude answered, but its tool result failed validation."""

    def __init__(self, message: str, *, step: str, request_id: str | None = None):
        super().__init__(message)
        self.step = step
        self.request_id = request_id


class JobCancelled(RoastqError):
    """The job was cancelled while it ran; raised at the next step boundary."""


class JobTimeLimit(RoastqError):
    """The job's time limit left no time for the next LLM call."""


class Snooze(RoastqError):
    """Not a failure: the job must wait (system paused, budget spent, rate limit) and run again
    after ``delay_s``. It uses up no attempt and is not bounded like a rate-limit wait."""

    def __init__(self, delay_s: float, reason: str):
        super().__init__(f"waiting {delay_s:.1f} s: {reason}")
        self.delay_s = delay_s
        self.reason = reason
