"""roastq's own exception types. The failure middleware classifies by these types, never by text."""


class RoastqError(Exception):
    """Base of roastq's own errors."""


class InputError(RoastqError):
    """The job's document or agent is missing or unusable: no retry can fix it."""


class BadLLMOutput(RoastqError):
    """Claude answered, but its tool result lacks what the step needs (the hard tier of
    ``roastq/evaluation/answers.py``), or was cut short. ``feedback`` is what to tell the model
    in the corrective tool result."""

    def __init__(self, message: str, *, step: str, request_id: str | None = None, feedback: str | None = None):
        super().__init__(message)
        self.step = step
        self.request_id = request_id
        self.feedback = feedback or message


class LLMRefusal(RoastqError):
    """Claude declined to answer (``stop_reason: "refusal"``): asking again does not help."""

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
