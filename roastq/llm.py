"""The Claude client: the real anthropic SDK, one forced tool call at a time.

The SDK's own retries are off (``max_retries=0``): the queue owns retries, so a failure reaches
the failure middleware as the SDK's typed exception, with its response headers (Retry-After).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import anthropic
import httpx2 as httpx
import jsonschema

from . import events
from .exceptions import BadLLMOutput, JobTimeLimit
from .jobctx import current_job
from .pricing import Usage, cost_usd
from .settings import Settings, get_settings

#: Used against the simulator, which checks no key; a real deployment sets ANTHROPIC_API_KEY.
SIMULATOR_KEY = "sk-roastq-simulator"
#: Below this much time left, an LLM call is not worth starting.
MIN_CALL_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class ToolCall:
    """One completed, validated tool call."""

    step: str
    model: str
    input: dict[str, Any]
    usage: Usage
    price_usd: Decimal
    duration_s: float
    request_id: str | None


class Claude:
    """A thin, typed wrapper over ``anthropic.Anthropic`` for forced tool calls."""

    def __init__(self, settings: Settings | None = None):
        settings = settings or get_settings()
        self.settings = settings
        self.client = anthropic.Anthropic(
            api_key=settings.anthropic_api_key or SIMULATOR_KEY,
            base_url=settings.anthropic_base_url,
            max_retries=0,
        )

    def call_timeout(self) -> tuple[float, bool]:
        """The smaller of the job's time left and the per-call cap; and whether the job's time
        limit is the binding one (then a timeout is the job's TIMEOUT, not a network fault)."""
        cap = self.settings.llm_call_timeout_s
        job = current_job.get()
        if job is None:
            return cap, False
        left = job.time_left()
        if left < MIN_CALL_TIMEOUT_S:
            raise JobTimeLimit(f"{left:.1f} s left of the job's time limit: no time for another LLM call")
        return min(cap, left), left <= cap

    def call_tool(
        self,
        *,
        step: str,
        system: list[dict] | str,
        prompt: str,
        tool: dict,
        model: str | None = None,
        max_tokens: int = 4096,
    ) -> ToolCall:
        model = model or self.settings.analysis_model
        job = current_job.get()
        headers = {"x-roastq-step": step}
        if job is not None:
            # Correlation for the request log (simulator) and for support tickets.
            headers["x-roastq-job-id"] = job.job_id
            headers["x-roastq-attempt"] = str(job.attempt)
        timeout, job_bound = self.call_timeout()
        started = time.monotonic()
        try:
            response = self.client.messages.create(
                model=model,
                max_tokens=max_tokens,
                system=system,
                messages=[{"role": "user", "content": prompt}],
                tools=[tool],
                tool_choice={"type": "tool", "name": tool["name"]},
                timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                extra_headers=headers,
            )
        except anthropic.APITimeoutError as exc:
            events.emit("llm_call", model=model, step=step, duration_s=time.monotonic() - started,
                        usage=None, price_usd=None, exception=exc, cached=False)
            if job_bound:
                raise JobTimeLimit(f"{step}: the job's time limit ran out during the LLM call") from exc
            raise
        except Exception as exc:
            events.emit("llm_call", model=model, step=step, duration_s=time.monotonic() - started,
                        usage=None, price_usd=None, exception=exc, cached=False)
            raise
        duration = time.monotonic() - started
        request_id = getattr(response, "_request_id", None)
        usage = Usage(
            input_tokens=response.usage.input_tokens or 0,
            output_tokens=response.usage.output_tokens or 0,
            cache_read_tokens=getattr(response.usage, "cache_read_input_tokens", 0) or 0,
            cache_write_tokens=getattr(response.usage, "cache_creation_input_tokens", 0) or 0,
        )
        price = cost_usd(model, usage)
        try:
            payload = _tool_input(response, tool, step=step, request_id=request_id)
        except BadLLMOutput as exc:  # paid for, but unusable
            events.emit("llm_call", model=model, step=step, duration_s=duration, usage=usage, price_usd=price,
                        exception=exc, cached=False)
            raise
        events.emit("llm_call", model=model, step=step, duration_s=duration, usage=usage, price_usd=price,
                    exception=None, cached=False)
        return ToolCall(
            step=step,
            model=model,
            input=payload,
            usage=usage,
            price_usd=price,
            duration_s=duration,
            request_id=request_id,
        )


def _tool_input(response, tool: dict, *, step: str, request_id: str | None) -> dict:
    """The forced tool's input, validated against its schema, or BadLLMOutput."""
    blocks = [b for b in response.content if getattr(b, "type", None) == "tool_use" and b.name == tool["name"]]
    if not blocks:
        raise BadLLMOutput(f"{step}: no {tool['name']} tool call in the response", step=step, request_id=request_id)
    payload = blocks[0].input
    if not isinstance(payload, dict):
        raise BadLLMOutput(f"{step}: tool input is not an object", step=step, request_id=request_id)
    try:
        jsonschema.validate(payload, tool["input_schema"])
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "(root)"
        raise BadLLMOutput(
            f"{step}: tool input invalid at {where}: {exc.message[:200]}", step=step, request_id=request_id
        ) from None
    return payload


_default: tuple[int, Claude] | None = None
_default_lock = threading.Lock()


def default_claude() -> Claude:
    """The process's client (one connection pool to the API), made anew in a forked child."""
    global _default
    with _default_lock:
        if _default is None or _default[0] != os.getpid():
            _default = (os.getpid(), Claude())
        return _default[1]
