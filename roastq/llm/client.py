"""The Claude client: the real anthropic SDK, one forced tool call at a time, behind the cost layer.

A call goes: response cache (a hit returns at once: no HTTP, no budget, no rate limit) -> budget
guard -> shared rate limiter -> the API -> ledger and limiter settle -> validation -> cache store.
``docs/llm.md`` describes each part and its settings.

The SDK's own retries are off (``max_retries=0``): the queue owns retries, so a failure reaches
the failure middleware as the SDK's typed exception, with its response headers (Retry-After).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import anthropic
import httpx2 as httpx
import jsonschema

from roastq import db, events
from roastq.llm import budget
from roastq.llm import cache
from roastq.llm import ledger
from roastq.llm import ratelimit
from roastq.exceptions import BadLLMOutput, JobTimeLimit
from roastq.failures import ErrorClass, classify
from roastq.jobctx import current_job
from roastq.llm.pricing import Usage, cost_usd
from roastq.settings import Settings, get_settings

logger = logging.getLogger("roastq.llm.client")

#: Used against the simulator, which checks no key; a real deployment sets ANTHROPIC_API_KEY.
SIMULATOR_KEY = "sk-roastq-simulator"
#: Below this much time left, an LLM call is not worth starting.
MIN_CALL_TIMEOUT_S = 1.0
EPHEMERAL = {"type": "ephemeral"}


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


def with_prompt_cache(system: list[dict], tools: list[dict]) -> tuple[list[dict], list[dict]]:
    """One cache breakpoint at the end of the agent-level prefix: the API caches tools then system,
    which repeat for every document an agent evaluates, and reads them at 0.1x the input price
    (a write costs 1.25x, repaid by the first read within 5 minutes). The document, in the user
    message, is unique per job and never marked: marking it would pay the write premium for
    nothing. A prefix shorter than the model's minimum is simply not cached by the API, at no cost.
    """
    if system:
        return [*system[:-1], {**system[-1], "cache_control": EPHEMERAL}], tools
    if tools:
        return system, [*tools[:-1], {**tools[-1], "cache_control": EPHEMERAL}]
    return system, tools


class Claude:
    """A thin, typed wrapper over ``anthropic.Anthropic`` for forced tool calls."""

    def __init__(self, settings: Settings | None = None):
        settings = settings or get_settings()
        self.settings = settings
        proxy = settings.llm_proxy_base_url
        self.client = anthropic.Anthropic(
            api_key=settings.anthropic_api_key or SIMULATOR_KEY,
            base_url=proxy or settings.anthropic_base_url,
            default_headers=dict(settings.llm_proxy_headers) if proxy else None,
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
        cache_seed: str = "",
        bypass_cache: bool = False,
    ) -> ToolCall:
        """``cache_seed`` partitions the response cache (the pipeline passes the agent version);
        ``bypass_cache`` (or the job's ``bypass_cache``, set after bad output) skips the lookup."""
        settings = self.settings
        model = model or settings.analysis_model
        job = current_job.get()
        job_id = job.job_id if job is not None else None
        bypass = bypass_cache or (job is not None and job.bypass_cache)
        system = [{"type": "text", "text": system}] if isinstance(system, str) else list(system)
        messages = [{"role": "user", "content": prompt}]
        tools = [tool]
        tool_choice = {"type": "tool", "name": tool["name"]}
        seed = f"{cache_seed}|{settings.llm_cache_seed}"

        key = None
        if settings.llm_cache_enabled and not settings.llm_proxy_base_url:
            key = cache.cache_key(cache.canonical_request(model=model, system=system, messages=messages, tools=tools,
                                                          tool_choice=tool_choice, max_tokens=max_tokens), seed)
            hit = self._cached(key, step=step, model=model, tool=tool, job_id=job_id, bypass=bypass)
            if hit is not None:
                return hit

        budget.check(settings, model=model, step=step)
        if settings.prompt_caching:
            system, tools = with_prompt_cache(system, tools)
        estimate = ratelimit.estimate_input_tokens(system, messages, tools)
        ratelimit.acquire(settings, model, estimate)

        headers = {"x-roastq-step": step}
        if job is not None:
            # Correlation for the request log (simulator) and for support tickets.
            headers["x-roastq-job-id"] = job.job_id
            headers["x-roastq-attempt"] = str(job.attempt)
        if settings.llm_proxy_base_url:
            if settings.llm_proxy_seed_header:
                headers[settings.llm_proxy_seed_header] = seed
            if bypass:
                headers.update(settings.llm_proxy_bypass_headers)
        timeout, job_bound = self.call_timeout()
        started = time.monotonic()
        try:
            raw = self.client.messages.with_raw_response.create(
                model=model,
                max_tokens=max_tokens,
                system=system,
                messages=messages,
                tools=tools,
                tool_choice=tool_choice,
                timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                extra_headers=headers,
            )
            response = raw.parse()
        except Exception as exc:
            self._failed(exc, model=model, step=step, started=started, estimate=estimate)
            if isinstance(exc, anthropic.APITimeoutError) and job_bound:
                raise JobTimeLimit(f"{step}: the job's time limit ran out during the LLM call") from exc
            raise
        duration = time.monotonic() - started
        request_id = getattr(response, "_request_id", None)
        usage = Usage.from_api(response.usage)
        price = cost_usd(model, usage)
        # Billed whatever comes next: into the ledger and the limiter before validation.
        ledger.record_billed(job_id=job_id, step=step, model=model, usage=usage, price_usd=price)
        try:  # best effort: a paid answer is not thrown away for the limiter's bookkeeping
            ratelimit.settle(settings, model, input_estimate=estimate,
                             input_tokens=usage.input_tokens + usage.cache_write_tokens,
                             output_tokens=usage.output_tokens, headers=raw.headers, status=raw.status_code)
        except Exception:
            logger.exception("rate limiter settle failed after a %s response", step)
        try:
            payload = _tool_input(response.content, tool, step=step, request_id=request_id)
        except BadLLMOutput as exc:  # paid for, but unusable: never cached
            events.emit("llm_call", model=model, step=step, duration_s=duration, usage=usage, price_usd=price,
                        exception=exc, cached=False)
            raise
        events.emit("llm_call", model=model, step=step, duration_s=duration, usage=usage, price_usd=price,
                    exception=None, cached=False)
        if key is not None and cache.is_complete(response.stop_reason):
            try:  # best effort, like the settle above
                cache.store(key, model=model, step=step, seed=seed, response=response.model_dump(mode="json"),
                            usage=usage, price_usd=price, request_id=request_id, ttl_s=settings.llm_cache_ttl_s)
                events.emit("llm_cache", outcome="store", model=model, step=step, saved_usd=Decimal(0))
            except Exception:
                logger.exception("storing the %s answer in the response cache failed", step)
        return ToolCall(step=step, model=model, input=payload, usage=usage, price_usd=price, duration_s=duration,
                        request_id=request_id)

    def _cached(self, key: str, *, step: str, model: str, tool: dict, job_id, bypass: bool) -> ToolCall | None:
        if bypass:
            events.emit("llm_cache", outcome="bypass", model=model, step=step, saved_usd=Decimal(0))
            return None
        started = time.monotonic()
        with db.transaction() as cur:
            # One round trip for the hit and its saving, and no fsync on the hot path: a hit
            # counter or a saving lost in a database crash is not worth one.
            cur.execute("SET LOCAL synchronous_commit = off")
            hit = cache.lookup(key, cur)
            if hit is not None:
                try:
                    payload = _tool_input(hit.response.get("content") or [], tool, step=step,
                                          request_id=hit.request_id)
                except BadLLMOutput:  # cannot happen for a stored entry (the schema is in the key)
                    hit = None
                else:
                    ledger.record_saved(job_id=job_id, step=step, model=model, saved_usd=hit.price_usd, cur=cur)
        if hit is None:
            events.emit("llm_cache", outcome="miss", model=model, step=step, saved_usd=Decimal(0))
            return None
        duration = time.monotonic() - started
        events.emit("llm_cache", outcome="hit", model=model, step=step, saved_usd=hit.price_usd)
        events.emit("llm_call", model=model, step=step, duration_s=duration, usage=Usage(), price_usd=Decimal(0),
                    exception=None, cached=True)
        return ToolCall(step=step, model=model, input=payload, usage=Usage(), price_usd=Decimal(0),
                        duration_s=duration, request_id=hit.request_id, cached=True, saved_usd=hit.price_usd)

    def _failed(self, exc: Exception, *, model: str, step: str, started: float, estimate: int) -> None:
        """A call that raised: tell the limiter (a 429 closes the gate for everyone) and the listeners."""
        response = getattr(exc, "response", None)
        try:
            ratelimit.settle(self.settings, model, input_estimate=estimate, headers=getattr(response, "headers", None),
                             status=getattr(response, "status_code", None),
                             gate_allowed=classify(exc) is not ErrorClass.SPEND_LIMIT)  # waiting never helps
        except Exception:  # the call's own error is the one to classify and report
            logger.exception("rate limiter settle failed after %s", type(exc).__name__)
        finally:
            events.emit("llm_call", model=model, step=step, duration_s=time.monotonic() - started,
                        usage=None, price_usd=None, exception=exc, cached=False)


def _block(block, name: str):
    return block.get(name) if isinstance(block, dict) else getattr(block, name, None)


def _tool_input(content, tool: dict, *, step: str, request_id: str | None) -> dict:
    """The forced tool's input, validated against its schema, or BadLLMOutput."""
    blocks = [b for b in content if _block(b, "type") == "tool_use" and _block(b, "name") == tool["name"]]
    if not blocks:
        raise BadLLMOutput(f"{step}: no {tool['name']} tool call in the response", step=step, request_id=request_id)
    payload = _block(blocks[0], "input")
    if not isinstance(payload, dict):
        raise BadLLMOutput(f"{step}: tool input is not an object", step=step, request_id=request_id)
    error = jsonschema.exceptions.best_match(_validator(json.dumps(tool["input_schema"], sort_keys=True))
                                             .iter_errors(payload))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise BadLLMOutput(
            f"{step}: tool input invalid at {where}: {error.message[:200]}", step=step, request_id=request_id
        )
    return payload


@functools.lru_cache(maxsize=64)
def _validator(schema_json: str):
    """A validator per schema, its schema checked once: ``jsonschema.validate`` re-checks the schema
    against the metaschema on every call, which costs more than a cache hit may take."""
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


_default: tuple[int, Claude] | None = None
_default_lock = threading.Lock()


def default_claude() -> Claude:
    """The process's client (one connection pool to the API), made anew in a forked child."""
    global _default
    with _default_lock:
        if _default is None or _default[0] != os.getpid():
            _default = (os.getpid(), Claude())
        return _default[1]
