"""The response cache: validated Claude answers in Postgres, with a caching proxy's semantics.

The key is a SHA-256 of the canonical request (model, system, messages, tools, tool choice,
temperature when set, max tokens) plus a seed: by default the agent version, so a new version of an
agent never gets an older version's answers, and ``LLM_CACHE_SEED`` on top (change it to start
from an empty cache). ``cache_control`` markers are left out of the key: turning prompt caching on
or off changes what a call costs, not what it answers.

Only complete responses whose tool input passed validation are stored (``store`` is called after
validation, and only for ``stop_reason`` "tool_use"/"end_turn"); an entry lives ``LLM_CACHE_TTL_S``
(7 days by default). A hit costs one indexed ``UPDATE ... RETURNING`` and no HTTP request.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from dataclasses import dataclass
from decimal import Decimal

import psycopg2.extras

from roastq import db
from roastq.llm.pricing import Usage
from roastq.sql import load_queries

logger = logging.getLogger("roastq.llm.cache")

Q = load_queries("llm.sql", __package__)

#: Expired entries are deleted at most this often per process, in batches (lookups ignore them).
PURGE_INTERVAL_S = 3600.0
PURGE_BATCH = 1000
#: Responses that are complete: anything else (max_tokens, refusal...) is never stored.
COMPLETE_STOP_REASONS = ("tool_use", "end_turn")


@dataclass(frozen=True)
class CachedResponse:
    response: dict  # the API's message, as JSON
    model: str
    usage: Usage  # of the original call
    price_usd: Decimal  # what the original call cost: what this hit saves
    request_id: str | None


def _without_cache_control(value):
    if isinstance(value, dict):
        return {k: _without_cache_control(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_without_cache_control(v) for v in value]
    return value


def canonical_request(
    *,
    model: str,
    system,
    messages: list,
    tools: list,
    tool_choice: dict | None,
    max_tokens: int,
    temperature: float | None = None,
) -> dict:
    """What decides the answer, in a stable form: a plain-string system prompt and the same text
    as one text block are the same request."""
    if isinstance(system, str):
        system = [{"type": "text", "text": system}]
    request = {
        "model": model,
        "system": system or [],
        "messages": messages,
        "tools": tools or [],
        "tool_choice": tool_choice,
        "max_tokens": max_tokens,
    }
    if temperature is not None:  # this SDK's messages.create has none; kept for when it does
        request["temperature"] = temperature
    return _without_cache_control(request)


def cache_key(request: dict, seed: str) -> str:
    body = json.dumps({"request": request, "seed": seed}, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(body.encode()).hexdigest()


def lookup(key: str, cur) -> CachedResponse | None:
    """The live entry for ``key`` (its hit counted), or None, in the caller's transaction (the
    caller records the saving in the same one)."""
    cur.execute(Q.cache_hit, {"key": key})
    row = cur.fetchone()
    if row is None:
        return None
    return CachedResponse(
        response=row["response"],
        model=row["model"],
        usage=Usage(row["input_tokens"], row["output_tokens"], row["cache_read_tokens"], row["cache_write_tokens"]),
        price_usd=row["price_usd"],
        request_id=row["request_id"],
    )


_last_purge = 0.0
_purge_lock = threading.Lock()


def store(
    key: str,
    *,
    model: str,
    step: str,
    seed: str,
    response: dict,
    usage: Usage,
    price_usd: Decimal,
    request_id: str | None,
    ttl_s: float,
) -> None:
    """Keep a validated, complete response for ``ttl_s`` seconds (replacing any older entry)."""
    with db.transaction() as cur:
        cur.execute(
            Q.cache_store,
            {
                "key": key,
                "model": model,
                "step": step,
                "seed": seed,
                "response": psycopg2.extras.Json(response),
                "input_tokens": usage.input_tokens,
                "output_tokens": usage.output_tokens,
                "cache_read_tokens": usage.cache_read_tokens,
                "cache_write_tokens": usage.cache_write_tokens,
                "price_usd": price_usd,
                "request_id": request_id,
                "ttl_s": ttl_s,
            },
        )
    _maybe_purge()


def _maybe_purge() -> None:
    global _last_purge
    with _purge_lock:
        if time.monotonic() - _last_purge < PURGE_INTERVAL_S:
            return
        _last_purge = time.monotonic()
    try:
        purge_expired()
    except Exception:  # housekeeping must never fail a call
        logger.exception("purging expired cache entries failed")


def purge_expired(limit: int = PURGE_BATCH) -> int:
    """Delete up to ``limit`` expired entries; return how many (a scheduler may call it too)."""
    with db.transaction() as cur:
        cur.execute(Q.cache_purge_expired, {"limit": limit})
        return cur.rowcount


def is_complete(stop_reason: str | None) -> bool:
    return stop_reason in COMPLETE_STOP_REASONS
