"""One completed tool call, and the forced tool's input read from a response: shared by the
real-time client and the batch lane's collector."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from roastq.exceptions import BadLLMOutput
from roastq.llm.pricing import Usage


@dataclass(frozen=True)
class ToolCall:
    """One completed, validated tool call."""

    step: str
    model: str
    input: dict[str, Any]
    usage: Usage  # billed by this call (zero for a cache hit)
    price_usd: Decimal  # billed by this call (zero for a cache hit)
    duration_s: float
    request_id: str | None
    cached: bool = False  # served from the response cache
    saved_usd: Decimal = field(default=Decimal(0))  # what the cache hit saved
    memoised: bool = False  # restored from an earlier attempt of the same job


def block_of(block, name: str):
    return block.get(name) if isinstance(block, dict) else getattr(block, name, None)


def tool_input(content, tool: dict, *, step: str, request_id: str | None) -> dict:
    """The forced tool's input (an object), or BadLLMOutput."""
    blocks = [b for b in content if block_of(b, "type") == "tool_use" and block_of(b, "name") == tool["name"]]
    if not blocks:
        raise BadLLMOutput(
            f"{step}: no {tool['name']} tool call in the response",
            step=step,
            request_id=request_id,
            feedback=f"Call the {tool['name']} tool with your answer.",
        )
    payload = block_of(blocks[0], "input")
    if not isinstance(payload, dict):
        raise BadLLMOutput(
            f"{step}: tool input is not an object",
            step=step,
            request_id=request_id,
            feedback=f"The {tool['name']} input must be a JSON object.",
        )
    return payload
