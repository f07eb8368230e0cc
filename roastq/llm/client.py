"""The Claude client: the real anthropic SDK, one forced tool call at a time, behind the cost layer.

A call goes: response cache (a hit returns at once: no HTTP, no budget, no rate limit) -> budget
guard -> context-window check -> shared rate limiter -> the API -> ledger and limiter settle ->
validation (the step's check; a failure is sent back to the model once, in the same attempt; an
answer cut at max_tokens is asked again with more room) -> cache store.
``docs/llm.md`` describes each part and its settings.

The SDK's own retries are off (``max_retries=0``): the queue owns retries, so a failure reaches
the failure middleware as the SDK's typed exception, with its response headers (Retry-After).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import anthropic
import httpx2 as httpx
import jsonschema

from roastq import db, events
from roastq.exceptions import BadLLMOutput, InputError, JobTimeLimit, LLMRefusal
from roastq.failures import ErrorClass, classify
from roastq.jobctx import current_job
from roastq.llm import batch, budget, cache, ledger, models, ratelimit
from roastq.llm.pricing import Usage, cost_usd
from roastq.llm.strict import strict_tool
from roastq.llm.toolcall import ToolCall, tool_input
from roastq.settings import Settings, get_settings

logger = logging.getLogger("roastq.llm.client")

#: Used against the simulator, which checks no key; a real deployment sets ANTHROPIC_API_KEY.
SIMULATOR_KEY = "sk-roastq-simulator"
#: Below this much time left, an LLM call is not worth starting.
MIN_CALL_TIMEOUT_S = 1.0
EPHEMERAL = {"type": "ephemeral"}
#: Tokens that must be left for the answer: a prompt leaving fewer cannot be evaluated.
MIN_ANSWER_TOKENS = 1024
#: Answers cut at max_tokens that a call asks again for (more room, then a shorter answer).
MAX_CUTS = 2
SHORTER_NOTE = (
    "Your previous answer was cut off at the output limit. Answer again, more briefly: shorter "
    "analysis and descriptions, the same tool."
)
RETRY_NOTE = (
    "An earlier answer to this request could not be used. Follow the tool's schema exactly and "
    "respect every bound its descriptions state."
)


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
        max_tokens: int | None = None,
        cache_seed: str = "",
        bypass_cache: bool = False,
        check: Callable[[dict], Any] | None = None,
    ) -> ToolCall:
        """One forced tool call, as many requests as it takes within this attempt (each billed and
        in the ledger): an answer that fails ``check`` (the step's hard tier, raising BadLLMOutput;
        by default the tool's JSON schema) is sent back once as an ``is_error`` tool result; an
        answer cut at ``max_tokens`` is asked again with more room, then for a shorter answer; a
        refusal raises LLMRefusal at once. ``cache_seed`` partitions the response cache (the
        pipeline passes the agent version); ``bypass_cache`` (or the job's ``bypass_cache``, set
        after bad output) skips the lookup. The returned input is the raw tool input, which passed
        ``check``."""
        settings = self.settings
        model = model or settings.analysis_model
        max_tokens = max_tokens or settings.llm_max_tokens
        job = current_job.get()
        job_id = job.job_id if job is not None else None
        bypass = bypass_cache or (job is not None and job.bypass_cache)
        if check is None:
            check = functools.partial(_schema_check, tool=tool, step=step)
        system = [{"type": "text", "text": system}] if isinstance(system, str) else list(system)
        if job is not None and job.bypass_cache:  # an earlier attempt's answer was unusable: ask differently
            prompt = f"{prompt}\n\n{RETRY_NOTE}"
        messages: list[dict] = [{"role": "user", "content": prompt}]
        tools = [strict_tool(tool) if settings.strict_tools else tool]
        tool_choice = {"type": "tool", "name": tool["name"]}
        seed = f"{cache_seed}|{settings.llm_cache_seed}"

        key = None
        if settings.llm_cache_enabled and not settings.llm_proxy_base_url:
            key = cache.cache_key(
                cache.canonical_request(
                    model=model,
                    system=system,
                    messages=messages,
                    tools=tools,
                    tool_choice=tool_choice,
                    max_tokens=max_tokens,
                ),
                seed,
            )
            hit = self._cached(key, step=step, model=model, tool=tool, check=check, job_id=job_id, bypass=bypass)
            if hit is not None:
                return hit

        budget.check(settings, model=model, step=step)
        if settings.prompt_caching:
            system, tools = with_prompt_cache(system, tools)
        # The batch lane (roastq/llm/batch.py): a batch job with time to spare waits for a Message Batch.
        lane = batch.lane_call(
            settings,
            step=step,
            model=model,
            max_tokens=max_tokens,
            system=system,
            messages=messages,
            tools=tools,
            tool_choice=tool_choice,
            tool=tool,
            cache_key=key,
            cache_seed=seed,
        )
        if lane is not None:  # the pipeline checks and repairs its input like any answer's
            return ToolCall(
                step=step,
                model=lane.model,
                input=lane.input,
                usage=lane.usage,
                price_usd=lane.price_usd,
                duration_s=lane.duration_s,
                request_id=lane.request_id,
            )
        room = self._context_room(step=step, model=model, system=system, messages=messages, tools=tools)
        max_tokens = min(max_tokens, room)

        usage, price, duration, cuts, corrected = Usage(), Decimal(0), 0.0, 0, False
        while True:
            response, raw, call_usage, call_price, call_duration = self._send(
                step=step,
                model=model,
                system=system,
                messages=messages,
                tools=tools,
                tool_choice=tool_choice,
                max_tokens=max_tokens,
                bypass=bypass,
                seed=seed,
            )
            usage, price, duration = usage + call_usage, price + call_price, duration + call_duration
            request_id = getattr(response, "_request_id", None)
            stop = response.stop_reason
            billed = dict(
                model=model, step=step, duration_s=call_duration, usage=call_usage, price_usd=call_price, cached=False
            )
            if stop == "refusal":
                exc = LLMRefusal(
                    f"{step}: the model declined to answer (stop_reason refusal)", step=step, request_id=request_id
                )
                events.emit("llm_call", exception=exc, **billed)
                raise exc
            if stop in ("max_tokens", "model_context_window_exceeded"):
                cuts += 1
                exc = BadLLMOutput(
                    f"{step}: the answer was cut at max_tokens ({max_tokens}), {cuts} times",
                    step=step,
                    request_id=request_id,
                )
                events.emit("llm_call", exception=exc, **billed)
                if cuts > MAX_CUTS:
                    raise exc
                limit = min(models.limits(model).max_output, room)
                if stop == "max_tokens" and max_tokens < limit:  # more room first, up to the model's limit
                    reason, max_tokens = "max_tokens_raised", min(limit, max_tokens * 2)
                else:  # no more room: ask for less
                    reason, messages = "shorter_answer", _with_user_text(messages, SHORTER_NOTE)
                logger.info(
                    "%s: answer cut at max_tokens (%s): asking again (%s, max_tokens %d)",
                    step,
                    stop,
                    reason,
                    max_tokens,
                )
                events.emit("llm_retry", model=model, step=step, reason=reason)
                continue
            try:
                payload = tool_input(response.content, tool, step=step, request_id=request_id)
                check(payload)
            except BadLLMOutput as exc:  # paid for, but unusable: never cached
                exc.request_id = exc.request_id or request_id
                events.emit("llm_call", exception=exc, **billed)
                if corrected:
                    raise
                corrected = True
                logger.warning(
                    "%s: the answer fails validation (%s): asking again with the error, in the same attempt", step, exc
                )
                messages = messages + _correction(response.content, exc.feedback)
                events.emit("llm_retry", model=model, step=step, reason="corrective")
                continue
            events.emit("llm_call", exception=None, **billed)
            break
        if key is not None and cache.is_complete(stop):
            try:  # best effort, like the settle in _send
                cache.store(
                    key,
                    model=model,
                    step=step,
                    seed=seed,
                    response=response.model_dump(mode="json"),
                    usage=usage,
                    price_usd=price,
                    request_id=request_id,
                    ttl_s=settings.llm_cache_ttl_s,
                )
                events.emit("llm_cache", outcome="store", model=model, step=step, saved_usd=Decimal(0))
            except Exception:
                logger.exception("storing the %s answer in the response cache failed", step)
        return ToolCall(
            step=step,
            model=model,
            input=payload,
            usage=usage,
            price_usd=price,
            duration_s=duration,
            request_id=request_id,
        )

    def _send(
        self,
        *,
        step: str,
        model: str,
        system: list,
        messages: list,
        tools: list,
        tool_choice: dict,
        max_tokens: int,
        bypass: bool,
        seed: str,
    ):
        """One paid request: rate limiter, the API, ledger and limiter settled. Returns the response,
        the raw response, its usage, price and duration."""
        settings = self.settings
        job = current_job.get()
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
        usage = Usage.from_api(response.usage)
        price = cost_usd(model, usage)
        # Billed whatever comes next: into the ledger and the limiter before validation.
        ledger.record_billed(
            job_id=job.job_id if job is not None else None, step=step, model=model, usage=usage, price_usd=price
        )
        try:  # best effort: a paid answer is not thrown away for the limiter's bookkeeping
            ratelimit.settle(
                settings,
                model,
                input_estimate=estimate,
                input_tokens=usage.input_tokens + usage.cache_write_tokens,
                output_tokens=usage.output_tokens,
                headers=raw.headers,
                status=raw.status_code,
            )
        except Exception:
            logger.exception("rate limiter settle failed after a %s response", step)
        return response, raw, usage, price, duration

    def _context_room(self, *, step: str, model: str, system: list, messages: list, tools: list) -> int:
        """The tokens the model's context window leaves for the answer, or InputError when the
        prompt cannot fit. Every token is at least one byte, so a prompt whose JSON has fewer bytes
        than the window leaves is not counted at all; a longer one is counted by the API's free
        ``count_tokens`` endpoint (or, when that fails, estimated at 3 characters a token)."""
        window = models.limits(model).context_window
        size = len(json.dumps([system, messages, tools]).encode())
        if size + MIN_ANSWER_TOKENS <= window:
            return window - size
        how = "counted"
        try:
            timeout, _ = self.call_timeout()
            counted = self.client.messages.count_tokens(
                model=model,
                system=system,
                messages=messages,
                tools=tools,
                timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
                extra_headers={"x-roastq-step": step},
            ).input_tokens
        except anthropic.APIError as exc:
            counted, how = math.ceil(size / 3), "estimated"
            logger.warning("%s: counting the prompt's tokens failed (%s): estimated", step, type(exc).__name__)
        if counted + MIN_ANSWER_TOKENS > window:
            raise InputError(
                f"{step}: the document is too long for {model}: the prompt is {counted} tokens "
                f"({how}) and the model's context window {window}, with at least "
                f"{MIN_ANSWER_TOKENS} needed for the answer"
            )
        return window - counted

    def _cached(self, key: str, *, step: str, model: str, tool: dict, check, job_id, bypass: bool) -> ToolCall | None:
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
                    payload = tool_input(hit.response.get("content") or [], tool, step=step, request_id=hit.request_id)
                    check(payload)
                except BadLLMOutput:  # stored before the step's checks changed: a miss
                    hit = None
                else:
                    ledger.record_saved(job_id=job_id, step=step, model=model, saved_usd=hit.price_usd, cur=cur)
        if hit is None:
            events.emit("llm_cache", outcome="miss", model=model, step=step, saved_usd=Decimal(0))
            return None
        duration = time.monotonic() - started
        events.emit("llm_cache", outcome="hit", model=model, step=step, saved_usd=hit.price_usd)
        events.emit(
            "llm_call",
            model=model,
            step=step,
            duration_s=duration,
            usage=Usage(),
            price_usd=Decimal(0),
            exception=None,
            cached=True,
        )
        return ToolCall(
            step=step,
            model=model,
            input=payload,
            usage=Usage(),
            price_usd=Decimal(0),
            duration_s=duration,
            request_id=hit.request_id,
            cached=True,
            saved_usd=hit.price_usd,
        )

    def _failed(self, exc: Exception, *, model: str, step: str, started: float, estimate: int) -> None:
        """A call that raised: tell the limiter (a 429 closes the gate for everyone) and the listeners."""
        response = getattr(exc, "response", None)
        try:
            ratelimit.settle(
                self.settings,
                model,
                input_estimate=estimate,
                headers=getattr(response, "headers", None),
                status=getattr(response, "status_code", None),
                gate_allowed=classify(exc) is not ErrorClass.SPEND_LIMIT,
            )  # waiting never helps
        except Exception:  # the call's own error is the one to classify and report
            logger.exception("rate limiter settle failed after %s", type(exc).__name__)
        finally:
            events.emit(
                "llm_call",
                model=model,
                step=step,
                duration_s=time.monotonic() - started,
                usage=None,
                price_usd=None,
                exception=exc,
                cached=False,
            )


def _schema_check(payload: dict, *, tool: dict, step: str) -> None:
    """The default check: the tool's full JSON schema, bounds included."""
    error = jsonschema.exceptions.best_match(
        _validator(json.dumps(tool["input_schema"], sort_keys=True)).iter_errors(payload)
    )
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(root)"
        raise BadLLMOutput(
            f"{step}: tool input invalid at {where}: {error.message[:200]}",
            step=step,
            feedback=f"The {tool['name']} input is invalid at {where}: {error.message[:200]}. "
            f"Call {tool['name']} again with an input that follows its schema.",
        )


def _with_user_text(messages: list[dict], text: str) -> list[dict]:
    """``messages`` with ``text`` added to the last (user) turn."""
    *head, last = messages
    content = last["content"]
    content = f"{content}\n\n{text}" if isinstance(content, str) else [*content, {"type": "text", "text": text}]
    return [*head, {**last, "content": content}]


def _correction(content, feedback: str) -> list[dict]:
    """The turns that continue the conversation after an unusable answer: the model's own answer,
    then an ``is_error`` tool result for each of its tool calls, naming what was wrong."""
    blocks = [b.model_dump(mode="json") if hasattr(b, "model_dump") else dict(b) for b in content]
    blocks = [
        {k: b[k] for k in ("type", "id", "name", "input", "text") if k in b}
        for b in blocks
        if b.get("type") in ("tool_use", "text") and (b.get("type") != "text" or b.get("text"))
    ]
    uses = [b for b in blocks if b["type"] == "tool_use"]
    if not uses:
        return [*([{"role": "assistant", "content": blocks}] if blocks else []), {"role": "user", "content": feedback}]
    return [
        {"role": "assistant", "content": blocks},
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": b["id"], "is_error": True, "content": feedback} for b in uses
            ],
        },
    ]


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


def made_default_claude() -> Claude | None:
    """The process's client if this process has made it, else None (nothing is made)."""
    with _default_lock:
        return _default[1] if _default is not None and _default[0] == os.getpid() else None
