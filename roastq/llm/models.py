"""What each model can take: its context window and its largest ``max_tokens``, in tokens.

Used before the first paid call of a step (is the prompt too long for the model?) and when an
answer is cut at ``max_tokens`` (how far may the next request raise it?). Anthropic's current
models have a 200k-token context window; Opus 4 and 4.1 answer at most 32k tokens, the others
64k. A model this table does not know gets the smallest figures of the family it names, or the
defaults: a check that errs towards "too long" costs one count, never a paid call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ModelLimits:
    context_window: int
    max_output: int


DEFAULT = ModelLimits(context_window=200_000, max_output=64_000)
LIMITS: dict[str, ModelLimits] = {
    "claude-opus-4-1": ModelLimits(200_000, 32_000),
    "claude-opus-4-0": ModelLimits(200_000, 32_000),
    "claude-opus-4": ModelLimits(200_000, 32_000),
}
_DATED = re.compile(r"^(?P<alias>.+)-\d{8}$")


def limits(model: str) -> ModelLimits:
    m = _DATED.match(model)
    return LIMITS.get(model) or (LIMITS.get(m.group("alias")) if m else None) or DEFAULT
