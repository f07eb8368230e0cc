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


from dramatiq.errors import Retry as _DramatiqRetry  # noqa: E402


class LaneWait(Snooze, _DramatiqRetry):
    """A step waits in the batch lane (``roastq.llm.batch``): the job's message is parked, using no
    attempt and no thread, until the lane has the step's outcome or ``delay_s`` (the last moment
    to run it real-time) comes. (A dramatiq ``Retry`` too, only so that the worker does not log
    the expected wait as an unhandled exception with its traceback: it is classified SNOOZED.)"""

    parks = True  # the broker parks the message instead of delaying it

    def __init__(self, delay_s: float, step: str):
        super().__init__(delay_s, f"batch_lane:{step}")
        self.step = step
