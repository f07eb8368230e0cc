"""A local stand-in for Claude's Messages API, for tests and benchmarks.

``Simulator`` serves ``POST /v1/messages`` well enough for the real ``anthropic``
SDK (``anthropic.Anthropic(base_url=sim.url, api_key="sk-sim", max_retries=0)``):

* latency ``latency_ms`` +/- ``jitter_ms`` per request (one thread per connection,
  so hundreds of in-flight requests overlap);
* faults (``FAULT_KINDS``): scripted with ``script()`` (FIFO, consumed first) or
  drawn at random with probability ``fault_rate`` from ``faults``, seeded;
* an optional sliding-window ``rpm_limit`` (429s logged with kind "rpm_limit");
* forced tools (``tool_choice`` "tool" or "any") get one ``tool_use`` block whose
  input satisfies the tool's ``input_schema`` (bounds that ``anthropic.transform_schema``
  moved into a description included: a model reads them); strings whose property name
  contains "quote" are real spans of the ``Line N: text`` lines found between
  ``<document>`` tags (about 1 in 8 slightly perturbed) and sibling
  ``start_line``/``end_line`` integers name that line. Content is deterministic
  in (seed, request body);
* usage at ~4 characters per token, with prompt caching: the prefix (tools,
  system, messages) up to each ``cache_control`` block is created once, then read
  for 5 minutes. Not modelled: minimum cacheable length, streaming (400),
  token-based rate limits;
* ``max_tokens`` is enforced: a longer answer is cut (``stop_reason: "max_tokens"``, the
  tool input cut short, ``max_tokens`` output tokens billed);
* strict tools (``"strict": true``): a schema holding a keyword the strict grammar does not
  take (numeric, length and size bounds; objects without ``additionalProperties: false``)
  is a 400 ``invalid_request_error``; a strict tool's answers never break the shape;
* ``sloppiness`` (``roastq/simulator/sloppy.py``): with that probability an answer carries
  the schema violations real models make; scripted with ``"sloppy"`` or
  ``"sloppy:KIND,KIND"``;
* ``POST /v1/messages/count_tokens`` (free, not logged as a request: ``count_tokens`` in stats).

Control endpoints: ``GET /_sim/health``, ``GET /_sim/stats``, ``GET /_sim/requests``,
``POST /_sim/script`` ``{"kinds": [...]}``, ``POST /_sim/config`` ``{field: value}``,
``POST /_sim/reset``. Standalone: ``python -m roastq.simulator.server --port 8788``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import random
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections import Counter, deque
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from roastq.simulator import sloppy
from roastq.simulator.batches import BatchLane

# kind -> (HTTP status, Anthropic error type, message). The SDK picks its exception
# class from the status (and error.details.error_code for spend_limit).
ERROR_FAULTS: dict[str, tuple[int, str, str]] = {
    "rate_limit": (429, "rate_limit_error", "Number of request tokens has exceeded your per-minute rate limit."),
    "spend_limit": (429, "rate_limit_error", "You have reached your specified API usage limits."),
    "overloaded": (529, "overloaded_error", "Overloaded"),
    "server_error": (500, "api_error", "Internal server error"),
    "invalid_request": (400, "invalid_request_error", "messages: simulated invalid request"),
    "auth": (401, "authentication_error", "invalid x-api-key"),
    "permission": (403, "permission_error", "Your API key does not have permission to use the specified resource."),
}
#: Every fault kind. ``hang`` sleeps ``hang_s`` then closes without answering,
#: ``drop`` closes at once, ``malformed`` is a 200 whose body is truncated JSON,
#: ``bad_tool_input`` is a 200 whose tool_use input lacks a required field (a fault: strict or
#: not), ``refusal`` a 200 with ``stop_reason: "refusal"`` and no tool call (billed).
FAULT_KINDS: tuple[str, ...] = (*ERROR_FAULTS, "hang", "drop", "malformed", "bad_tool_input", "refusal")
#: Kinds drawn from when a random fault fires: all of them, ``hang`` included
#: (it ties a client up for ``min(hang_s, client timeout)``; drop it from
#: ``SimConfig.faults`` for pure-throughput benchmarks).
ALL_RANDOM_FAULTS: tuple[str, ...] = FAULT_KINDS
LOG_LIMIT = 100_000
CACHE_TTL_S = 300.0  # Anthropic's ephemeral cache lives 5 minutes, refreshed on hit
REQUESTS_LIMIT, INPUT_TOKENS_LIMIT, OUTPUT_TOKENS_LIMIT = 4000, 2_000_000, 400_000


@dataclasses.dataclass
class SimConfig:
    """Simulator knobs; change them on a running Simulator with ``configure()``."""

    latency_ms: float = 50.0  # mean latency per request
    jitter_ms: float = 20.0  # uniform +/- jitter
    fault_rate: float = 0.0  # probability that a request gets a random fault
    faults: tuple[str, ...] = ALL_RANDOM_FAULTS  # kinds drawn from when a random fault fires
    seed: int = 0  # seeds random faults and generated content
    retry_after_s: float = 1.0  # retry-after of "rate_limit" 429s
    hang_s: float = 30.0  # how long "hang" waits before closing the connection
    rpm_limit: int | None = None  # requests per sliding 60 s window; excess -> 429 (kind "rpm_limit")
    sloppiness: float = 0.0  # probability that an answer carries model-like schema violations (sloppy.py)

    def __post_init__(self) -> None:
        self.faults = tuple(self.faults)
        unknown = [f for f in self.faults if f not in FAULT_KINDS]
        if unknown:
            raise ValueError(f"unknown fault kinds {unknown}; known: {FAULT_KINDS}")
        if not 0.0 <= self.fault_rate <= 1.0:
            raise ValueError("fault_rate must be within [0, 1]")
        if not 0.0 <= self.sloppiness <= 1.0:
            raise ValueError("sloppiness must be within [0, 1]")


def _rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- content generation
_SUBJECTS = [
    "The argument",
    "This claim",
    "The second section",
    "The author's estimate",
    "This paragraph",
    "The conclusion",
    "The cited evidence",
    "The framing here",
    "This comparison",
    "The proposed model",
]
_VERBS = [
    "relies on",
    "overstates",
    "understates",
    "does not address",
    "would benefit from",
    "conflates",
    "is supported by",
    "sits uneasily with",
    "glosses over",
    "clearly explains",
]
_OBJECTS = [
    "an unstated assumption",
    "the base rate",
    "the counterfactual",
    "a single anecdote",
    "the main uncertainty",
    "prior work in the field",
    "the cost estimate",
    "the sample size",
    "alternative explanations",
    "the key mechanism",
]
_TAILS = [
    "",
    " in a way readers may miss",
    " without quantifying it",
    ", which weakens the overall case",
    ", and this deserves a citation",
    " more than the data allows",
]
_ADJS = ["Unsupported", "Missing", "Overstated", "Unclear", "Strong", "Questionable", "Helpful", "Vague"]
_NOUNS = ["claim", "base rate", "causal link", "estimate", "framing", "citation", "definition", "comparison"]
_SHORT_NAMES = ("title", "name", "header", "heading", "label", "category")


def _sentence(rng: random.Random) -> str:
    return f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}{rng.choice(_TAILS)}."


def _texts(req: dict) -> list[str]:
    """All text of system + messages, in prompt order."""
    out: list[str] = []
    for part in [req.get("system")] + [m.get("content") for m in req.get("messages") or [] if isinstance(m, dict)]:
        if isinstance(part, str):
            out.append(part)
        elif isinstance(part, list):
            out += [b.get("text", "") for b in part if isinstance(b, dict) and isinstance(b.get("text"), str)]
    return out


def _doc_lines(req: dict) -> list[tuple[int, str]]:
    """(line number, text) pairs of every ``Line N: text`` inside <document> tags."""
    lines = []
    for text in _texts(req):
        for doc in re.findall(r"<document>(.*?)</document>", text, re.S):
            lines += [(int(n), t) for n, t in re.findall(r"(?m)^[ \t]*Line (\d+):[ \t]?(.*?)[ \t]*$", doc)]
    return lines


class _Gen:
    """Generates a value satisfying a (practical subset of) JSON Schema."""

    def __init__(self, rng: random.Random, root: dict, lines: list[tuple[int, str]]):
        self.rng, self.root = rng, root
        self.lines = [ln for ln in lines if len(ln[1].split()) >= 5] or [ln for ln in lines if ln[1].strip()]

    def resolve(self, s: Any) -> dict:
        """The schema ``s`` names, with the bounds its description states (a strict tool's)."""
        while isinstance(s, dict) and isinstance(s.get("$ref"), str) and s["$ref"].startswith("#/"):
            node: Any = self.root
            for part in s["$ref"][2:].split("/"):
                node = node.get(part, {})
            s = node
        return {**sloppy.described_bounds(s), **s} if isinstance(s, dict) else {}

    def type_of(self, s: dict) -> str:
        t = s.get("type")
        if isinstance(t, list):
            t = next((x for x in t if x != "null"), "null")
        return t or ("object" if "properties" in s else "array" if "items" in s else "string")

    def gen(self, s: Any, name: str = "") -> Any:
        s, rng = self.resolve(s), self.rng
        if "const" in s:
            return s["const"]
        if s.get("enum"):
            return rng.choice(s["enum"])
        for key in ("anyOf", "oneOf", "allOf"):
            if s.get(key):  # prefer a non-null branch: nullable fields get real values
                options = [o for o in s[key] if self.resolve(o).get("type") != "null"] or s[key]
                return self.gen(options[0] if key == "allOf" else rng.choice(options), name)
        t = self.type_of(s)
        if t == "object":
            return self.obj(s)
        if t == "array":
            lo = s.get("minItems", 0)
            hi = s.get("maxItems", max(lo, 1) + 3)
            return [self.gen(s.get("items", {}), name) for _ in range(rng.randint(max(lo, min(1, hi)), hi))]
        if t in ("integer", "number"):
            step = 1 if t == "integer" else 0.01
            lo = s.get("minimum", s["exclusiveMinimum"] + step if "exclusiveMinimum" in s else None)
            hi = s.get("maximum", s["exclusiveMaximum"] - step if "exclusiveMaximum" in s else None)
            lo = lo if lo is not None else (0 if hi is None else min(0, hi))
            hi = hi if hi is not None else lo + 100
            if t == "integer":
                return rng.randint(math.ceil(lo), math.floor(hi))
            return round(rng.uniform(lo, hi), 2)
        if t == "boolean":
            return rng.random() < 0.5
        if t == "null":
            return None
        if "quote" in name.lower() and self.lines:  # e.g. items of a "quotes" array
            return self.quote(rng.choice(self.lines)[1], s.get("maxLength"))
        if any(k in name.lower() for k in _SHORT_NAMES):
            text = f"{rng.choice(_ADJS)} {rng.choice(_NOUNS)}"
        else:
            text = " ".join(_sentence(rng) for _ in range(rng.randint(1, 2)))
        while len(text) < s.get("minLength", 0):
            text += " " + _sentence(rng)
        return text[: s["maxLength"]] if "maxLength" in s else text

    def obj(self, s: dict) -> dict:
        props, required = s.get("properties") or {}, set(s.get("required") or [])
        line_keys = {"start_line", "end_line", "line", "line_number"}
        wants_line = any("quote" in k.lower() or k in line_keys for k in props)
        line = None
        if wants_line:  # without a document, invent a line so quote and line numbers still agree
            line = self.rng.choice(self.lines) if self.lines else (self.rng.randint(1, 60), _sentence(self.rng))
        out = {}
        for key, ps in props.items():
            if key not in required and self.rng.random() < 0.2:
                continue  # like Claude, sometimes omit optional fields
            r = self.resolve(ps)
            if line and key in line_keys and self.type_of(r) in ("integer", "number") and "enum" not in r:
                out[key] = line[0]
            elif line and "quote" in key.lower() and self.type_of(r) == "string" and "enum" not in r:
                out[key] = self.quote(line[1], r.get("maxLength"))
            else:
                out[key] = self.gen(ps, key)
        return out

    def quote(self, text: str, max_len: int | None) -> str:
        """4-14 consecutive words of ``text``, exact apart from a 1-in-8 perturbation."""
        rng, words = self.rng, list(re.finditer(r"\S+", text))
        k = rng.randint(min(4, len(words)), min(14, len(words)))
        i = rng.randint(0, len(words) - k)
        q = text[words[i].start() : words[i + k - 1].end()]
        while max_len and len(q) > max_len and " " in q:
            q = q.rsplit(" ", 1)[0]
        if rng.random() < 1 / 8:  # exercise the caller's fuzzy matching
            spaces = [m.start() for m in re.finditer(" ", q)]
            if spaces and rng.random() < 0.5 and not (max_len and len(q) >= max_len):
                j = rng.choice(spaces)
                q = q[:j] + " " + q[j:]
            else:
                ws = list(re.finditer(r"\S+", q))
                w = rng.choice(ws)
                q = q[: w.start()] + w.group().swapcase() + q[w.end() :]
        return q


def _break_input(schema: dict, value: dict) -> None:
    """Make ``value`` violate ``schema``: drop a required field, else mistype a property."""
    required = [k for k in schema.get("required") or [] if k in value]
    if required:
        del value[required[0]]
    elif value:
        key = next(iter(value))
        value[key] = 12345 if isinstance(value[key], str) else "not-the-right-type"
    else:
        value["unexpected"] = True


#: JSON-schema keywords the strict tool grammar does not take (Anthropic's structured outputs
#: documentation: no numeric, string-length or array-size bounds; ``minItems`` only 0 or 1).
STRICT_UNSUPPORTED = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "multipleOf",
    "minLength",
    "maxLength",
    "maxItems",
    "uniqueItems",
    "minProperties",
    "maxProperties",
    "patternProperties",
    "propertyNames",
    "dependentSchemas",
    "contains",
    "not",
    "if",
    "then",
    "else",
)


def _strict_problem(schema: Any, where: str) -> str | None:
    """Why the strict grammar cannot compile ``schema``, or None."""
    if not isinstance(schema, dict):
        return None
    for kw in STRICT_UNSUPPORTED:
        if kw in schema:
            return f"{where}: for strict tools, the JSON schema keyword '{kw}' is not supported"
    if schema.get("minItems", 0) not in (0, 1):
        return f"{where}: for strict tools, 'minItems' must be 0 or 1"
    is_object = schema.get("type") == "object" or "properties" in schema
    if is_object and schema.get("additionalProperties") is not False:
        return f"{where}: for strict tools, objects must set 'additionalProperties' to false"
    children = [(f"{where}.properties.{k}", v) for k, v in (schema.get("properties") or {}).items()]
    children += [(f"{where}.items", schema["items"])] if "items" in schema else []
    for key in ("anyOf", "allOf", "oneOf"):
        children += [(f"{where}.{key}.{i}", v) for i, v in enumerate(schema.get(key) or [])]
    children += [(f"{where}.$defs.{k}", v) for k, v in (schema.get("$defs") or {}).items()]
    for path, child in children:
        problem = _strict_problem(child, path)
        if problem:
            return problem
    return None


def _problem(req: Any, *, count_only: bool = False) -> str | None:
    """A 400 message for requests the real API would reject, else None."""
    if not isinstance(req, dict):
        return "request body must be a JSON object"
    for field, typ in (("model", str), ("max_tokens", int), ("messages", list)):
        if count_only and field == "max_tokens":
            continue
        if not isinstance(req.get(field), typ):
            return f"{field}: Field required"
    for i, t in enumerate(req.get("tools") or []):
        if isinstance(t, dict) and t.get("strict"):
            problem = _strict_problem(t.get("input_schema") or {}, f"tools.{i}.custom.input_schema")
            if problem:
                return problem
    if req.get("stream"):
        return "stream: streaming is not supported by the simulator"
    choice, names = req.get("tool_choice") or {}, [t.get("name") for t in req.get("tools") or []]
    if choice.get("type") == "tool" and choice.get("name") not in names:
        return f"tool_choice: tool {choice.get('name')!r} is not in tools"
    if choice.get("type") == "any" and not names:
        return "tool_choice: 'any' requires tools"
    return None


def _forced_tool(req: dict) -> str | None:
    choice = req.get("tool_choice") or {}
    if choice.get("type") == "tool":
        return choice.get("name")
    return req["tools"][0].get("name") if choice.get("type") == "any" else None


# ---------------------------------------------------------------- HTTP plumbing
class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 1024  # default 5 drops SYNs when hundreds of clients connect at once
    sim: Simulator

    def handle_error(self, request: Any, client_address: Any) -> None:
        if not isinstance(sys.exc_info()[1], OSError):  # peers vanishing mid keep-alive is routine
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the SDK pools connections
    server_version = "roastq-sim/1"
    timeout = 120  # idle keep-alive connections eventually release their thread

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence stderr access log
        pass

    def setup(self) -> None:
        super().setup()
        # headers and body go out as separate writes; Nagle + delayed ACK would add ~40 ms to each
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.server.sim._conns.add(self.connection)

    def finish(self) -> None:
        self.server.sim._conns.discard(self.connection)
        super().finish()

    def send(self, status: int, body: bytes, headers: list[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _dispatch(self, method: str) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0)) if method == "POST" else b""
        try:
            if self.path.startswith(("/v1/messages/batches", "/_sim/batches")):
                self.server.sim.batches.handle(self, method, raw)  # the Batches API: batches.py
            elif method == "POST" and self.path.split("?")[0] == "/v1/messages":
                self.server.sim._messages(self, raw)
            elif method == "POST" and self.path.split("?")[0] == "/v1/messages/count_tokens":
                self.server.sim._count_tokens(self, raw)
            else:
                self.server.sim._control(self, method, raw)
        except (BrokenPipeError, ConnectionResetError):  # client gave up (e.g. its timeout fired)
            self.close_connection = True
        except Exception as e:  # a simulator bug should surface as a 500, not a silent dropped socket
            self.close_connection = True
            self.send(500, _error_body("api_error", f"simulator error: {e!r}", "req_sim"))

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")


class Simulator:
    """Threaded HTTP server imitating the Anthropic Messages API. See module docstring."""

    def __init__(self, config: SimConfig | None = None, host: str = "127.0.0.1", port: int = 0):
        self.config = config or SimConfig()
        self.host, self.port = host, port
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._jitter = random.Random()  # latency needn't be reproducible
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self.batches = BatchLane(
            self, error_faults=ERROR_FAULTS, problem=_problem, forced_tool=_forced_tool
        )  # /v1/messages/batches
        self.reset()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Simulator:
        self._stopping.clear()
        self._server = _Server((self.host, self.port), _Handler)
        self._server.sim = self
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"roastq-sim-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is None:
            return
        self._stopping.set()  # wakes "hang" faults
        self._server.shutdown()
        self._server.server_close()
        for conn in list(self._conns):  # pooled keep-alive connections would otherwise keep being served
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._thread:
            self._thread.join(5)
        self._server = self._thread = None

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------ control API
    def script(self, *kinds: str) -> None:
        """Queue the next responses (FIFO, ahead of rpm limit and random faults); "ok" = normal,
        "sloppy" = an answer with violations drawn at random, "sloppy:KIND,KIND" = those violations
        (``sloppy.KINDS``)."""
        bad = [k for k in kinds if k != "ok" and k not in FAULT_KINDS and not _sloppy_script(k)]
        if bad:
            raise ValueError(f"unknown kinds {bad}")
        with self._lock:
            self._script.extend(kinds)

    def configure(self, **changes: Any) -> None:
        """Change SimConfig fields live; in-flight requests keep the config they started with."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(SimConfig)}
        if unknown:
            raise ValueError(f"unknown config fields {sorted(unknown)}")
        with self._lock:
            self.config = dataclasses.replace(self.config, **changes)
            if "seed" in changes:
                self._fault_rng = random.Random(self.config.seed)

    def stats(self) -> dict:
        with self._lock:
            return {**self._totals, **{k: dict(v) for k, v in self._by.items()}}

    def requests(self) -> list[dict]:
        with self._lock:
            return [dict(e) for e in self._log]

    def reset(self) -> None:
        """Clear stats, request log, script, rpm window and prompt cache; reseed random faults."""
        with self._lock:
            self._seq = 0
            self._log: deque[dict] = deque(maxlen=LOG_LIMIT)
            self._script: deque[str] = deque()
            self._window: deque[float] = deque()  # arrival times of admitted requests, last 60 s
            self._cache: dict[str, float] = {}  # prefix hash -> expiry
            self._fault_rng = random.Random(self.config.seed)
            self._totals = dict.fromkeys(
                (
                    "requests",
                    "input_tokens",
                    "output_tokens",
                    "cache_read_input_tokens",
                    "cache_creation_input_tokens",
                    "count_tokens",
                ),
                0,
            )
            self._by = {
                k: Counter()
                for k in ("by_kind", "by_status", "by_model", "by_tool", "by_stop_reason", "by_sloppy_kind")
            }
        self.batches.reset()

    def _control(self, h: _Handler, method: str, raw: bytes) -> None:
        path = h.path.split("?")[0]
        try:
            body = json.loads(raw) if raw.strip() else {}
            if method == "GET" and path == "/_sim/health":
                out: Any = {"ok": True, "url": self.url}
            elif method == "GET" and path == "/_sim/stats":
                out = self.stats()
            elif method == "GET" and path == "/_sim/requests":
                out = self.requests()
            elif method == "POST" and path == "/_sim/script":
                self.script(*body.get("kinds", []))
                out = {"ok": True, "queued": len(self._script)}
            elif method == "POST" and path == "/_sim/config":
                self.configure(**body)
                out = dataclasses.asdict(self.config)
            elif method == "POST" and path == "/_sim/reset":
                self.reset()
                out = {"ok": True}
            else:
                return h.send(404, _error_body("not_found_error", f"{method} {path} not found", "req_sim"))
        except (ValueError, TypeError, AttributeError) as e:
            return h.send(400, _error_body("invalid_request_error", str(e), "req_sim"))
        h.send(200, json.dumps(out).encode())

    # ------------------------------------------------------------ /v1/messages
    def _pick_kind(self, now: float, cfg: SimConfig) -> tuple[str, float | None]:
        """Called under the lock: script first, then the rpm limit, then a random fault."""
        while self._window and self._window[0] <= now - 60:
            self._window.popleft()
        if self._script:
            kind = self._script.popleft()
        elif cfg.rpm_limit is not None and len(self._window) >= cfg.rpm_limit:
            return "rpm_limit", float(max(1, math.ceil(self._window[0] + 60 - now)))
        elif cfg.fault_rate and cfg.faults and self._fault_rng.random() < cfg.fault_rate:
            kind = self._fault_rng.choice(cfg.faults)
        else:
            kind = "ok"
        self._window.append(now)
        return kind, None

    def _messages(self, h: _Handler, raw: bytes) -> None:
        now = time.time()
        try:
            req = json.loads(raw)
            problem = _problem(req)
        except ValueError:
            req, problem = None, "request body is not valid JSON"
        tool = None if problem else _forced_tool(req)
        with self._lock:
            cfg = self.config
            self._seq += 1
            entry = {
                "seq": self._seq,
                "time": now,
                "model": req.get("model") if isinstance(req, dict) else None,
                "tool": tool,
                "kind": "invalid_request",
                "status": None,
                "retry_after_s": None,
                **{k: h.headers.get(f"x-roastq-{k.replace('_', '-')}") for k in ("job_id", "attempt", "step")},
                "input_tokens": 0,
                "output_tokens": 0,
                "cache_read_input_tokens": 0,
                "cache_creation_input_tokens": 0,
                "stop_reason": None,
                "sloppy": [],
                **_shape(req),
            }
            kind, retry_after = ("invalid_request", None) if problem else self._pick_kind(now, cfg)
            used, oldest = len(self._window), (self._window[0] if self._window else now)
        entry["kind"] = kind
        if kind in ("drop", "hang"):
            self._record(entry)
            if kind == "hang":
                self._stopping.wait(cfg.hang_s)
            h.close_connection = True  # returning without writing = connection closed, no response
            return
        delay = cfg.latency_ms + self._jitter.uniform(-cfg.jitter_ms, cfg.jitter_ms)
        if delay > 0:
            time.sleep(delay / 1000)  # no lock held: concurrent requests overlap
        rid = "req_sim" + uuid.uuid4().hex[:20]
        limit = cfg.rpm_limit or REQUESTS_LIMIT
        headers = [
            ("request-id", rid),
            ("anthropic-ratelimit-requests-limit", str(limit)),
            ("anthropic-ratelimit-requests-remaining", str(max(0, limit - used))),
            ("anthropic-ratelimit-requests-reset", _rfc3339(oldest + 60)),
        ]
        if kind in ERROR_FAULTS or kind == "rpm_limit":
            status, etype, message = ERROR_FAULTS["rate_limit" if kind == "rpm_limit" else kind]
            if kind == "rpm_limit":
                message = f"This request would exceed your organization's rate limit of {limit} requests per minute."
            error: dict[str, Any] = {"type": etype, "message": problem or message}
            if kind == "spend_limit":  # no retry-after: waiting doesn't lift a spend limit
                error["details"] = {"error_code": "enforced_spend_limit_reached"}
            elif status == 429:
                ra = retry_after if kind == "rpm_limit" else cfg.retry_after_s
                headers[-1] = ("anthropic-ratelimit-requests-reset", _rfc3339(now + ra))
                headers += [("retry-after", str(math.ceil(ra))), ("retry-after-ms", str(int(ra * 1000)))]
                entry["retry_after_s"] = ra
            entry["status"] = status
            self._record(entry)
            return h.send(status, _error_body(etype, error, rid), headers)
        message, usage, slop = self.answer(req, cfg, tool, kind)
        if message["stop_reason"] == "refusal":
            kind = entry["kind"] = "refusal"
        elif kind.startswith("sloppy"):
            entry["kind"] = "ok"
        entry.update(status=200, stop_reason=message["stop_reason"], sloppy=slop, **usage)
        self._record(entry)
        headers += [
            ("anthropic-ratelimit-input-tokens-limit", str(INPUT_TOKENS_LIMIT)),
            ("anthropic-ratelimit-input-tokens-remaining", str(INPUT_TOKENS_LIMIT - usage["input_tokens"])),
            ("anthropic-ratelimit-input-tokens-reset", _rfc3339(now + 60)),
            ("anthropic-ratelimit-output-tokens-limit", str(OUTPUT_TOKENS_LIMIT)),
            ("anthropic-ratelimit-output-tokens-remaining", str(OUTPUT_TOKENS_LIMIT - usage["output_tokens"])),
            ("anthropic-ratelimit-output-tokens-reset", _rfc3339(now + 60)),
        ]
        body = json.dumps(message).encode()
        h.send(200, body[: len(body) // 2] if kind == "malformed" else body, headers)

    def answer(self, req: dict, cfg: SimConfig, tool: str | None, kind: str) -> tuple[dict, dict, list[str]]:
        """The message, its usage, and the sloppiness kinds it carries."""
        digest = hashlib.sha256(json.dumps(req, sort_keys=True).encode()).hexdigest()
        rng = random.Random(f"{cfg.seed}:{digest}")  # same request -> same content (ids stay unique)
        srng = random.Random(f"{cfg.seed}:sloppy:{digest}")  # sloppiness draws apart: same answer underneath
        tools = {t.get("name"): t for t in req.get("tools") or []}
        bad = kind == "bad_tool_input"
        tool = tool or (next(iter(tools)) if bad and tools else None)
        slop: list[str] = []
        if kind.startswith("sloppy:"):
            slop = [k for k in kind.split(":", 1)[1].split(",") if k]
        elif tool and (kind == "sloppy" or (cfg.sloppiness and srng.random() < cfg.sloppiness)):
            slop = sloppy.draw(srng, strict=bool(tools[tool].get("strict")))
            if slop and _asks_for_brevity(req):  # a model asked for a shorter answer gives one
                slop = [k for k in slop if k != "verbose"]
        stop_reason = "tool_use" if tool else "end_turn"
        if kind == "refusal" or "refusal" in slop:
            slop = ["refusal"] if slop else []
            content = [{"type": "text", "text": sloppy.REFUSAL_TEXT}]
            stop_reason = "refusal"
        elif tool:
            schema = tools[tool].get("input_schema") or {"type": "object"}
            lines = _doc_lines(req)
            gen = _Gen(rng, schema, lines)
            value = gen.gen(schema)
            if bad:
                _break_input(gen.resolve(schema), value)
            if slop:
                extra = _Gen(srng, schema, lines)
                slop = sloppy.Slop(
                    srng,
                    schema,
                    value,
                    resolve=gen.resolve,
                    generate=extra.gen,
                    lines=lines,
                    document_chars=sum(len(t) for _, t in lines),
                ).apply(slop)
            content = [{"type": "tool_use", "id": f"toolu_sim{uuid.uuid4().hex[:20]}", "name": tool, "input": value}]
        else:
            content = [{"type": "text", "text": " ".join(_sentence(rng) for _ in range(rng.randint(2, 4)))}]
        usage = self._usage(req, content)
        if usage["output_tokens"] > req["max_tokens"]:  # cut where max_tokens ran out
            block, budget = content[-1], req["max_tokens"] * 4 - 60
            if block["type"] == "tool_use":
                block["input"] = sloppy.truncate(block["input"], budget)
            else:
                block["text"] = block["text"][: max(0, budget)]
            usage["output_tokens"], stop_reason = req["max_tokens"], "max_tokens"
        return (
            {
                "id": f"msg_sim{uuid.uuid4().hex[:20]}",
                "type": "message",
                "role": "assistant",
                "model": req["model"],
                "content": content,
                "stop_reason": stop_reason,
                "stop_sequence": None,
                "usage": usage,
            },
            usage,
            slop,
        )

    def _count_tokens(self, h: _Handler, raw: bytes) -> None:
        """``POST /v1/messages/count_tokens``: the input tokens a request would have, free of charge."""
        try:
            req = json.loads(raw)
            problem = _problem(req, count_only=True)
        except ValueError:
            req, problem = None, "request body is not valid JSON"
        if problem:
            return h.send(400, _error_body("invalid_request_error", problem, "req_sim"))
        with self._lock:
            self._totals["count_tokens"] += 1
        req = {**req, "tools": [{k: v for k, v in t.items() if k != "cache_control"} for t in req.get("tools") or []]}
        usage = self._usage(req, [], cache=False)
        h.send(
            200,
            json.dumps({"input_tokens": usage["input_tokens"]}).encode(),
            [("request-id", "req_sim" + uuid.uuid4().hex[:20])],
        )

    def _usage(self, req: dict, content: list, cache: bool = True) -> dict:
        """~4 chars per token; cache_control breakpoints cache the prompt prefix (tools, system, messages)."""
        segments = [(t, True) for t in req.get("tools") or []]
        for part in [req.get("system")] + [m.get("content") for m in req["messages"] if isinstance(m, dict)]:
            segments += [(b, False) for b in (part if isinstance(part, list) else [part] if part else [])]
        hasher, chars, breakpoints = hashlib.sha256(req["model"].encode()), 0, []
        for seg, is_tool in segments:
            text = seg if isinstance(seg, str) else seg.get("text") if not is_tool and isinstance(seg, dict) else None
            chars += len(text) if isinstance(text, str) else len(json.dumps(seg))
            hasher.update(json.dumps(seg, sort_keys=True).encode())
            if isinstance(seg, dict) and seg.get("cache_control"):
                breakpoints.append((hasher.hexdigest(), math.ceil(chars / 4)))
        read = created = 0
        if breakpoints and cache:
            now = time.time()
            with self._lock:
                read = max((tok for h, tok in breakpoints if self._cache.get(h, 0) > now), default=0)
                created = breakpoints[-1][1] - read
                if len(self._cache) > LOG_LIMIT:
                    self._cache = {h: exp for h, exp in self._cache.items() if exp > now}
                self._cache.update((h, now + CACHE_TTL_S) for h, _ in breakpoints)
        return {
            "input_tokens": max(1, math.ceil(chars / 4) - read - created),
            "output_tokens": max(1, math.ceil(len(json.dumps(content)) / 4)),
            "cache_creation_input_tokens": created,
            "cache_read_input_tokens": read,
        }

    def _record(self, entry: dict) -> None:
        with self._lock:
            self._log.append(entry)
            self._totals["requests"] += 1
            for k in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
                self._totals[k] += entry[k]
            self._by["by_kind"][entry["kind"]] += 1
            self._by["by_status"][str(entry["status"]) if entry["status"] else "none"] += 1
            self._by["by_model"][str(entry["model"])] += 1
            self._by["by_tool"][entry["tool"] or "none"] += 1
            if entry.get("stop_reason"):
                self._by["by_stop_reason"][entry["stop_reason"]] += 1
            for k in entry.get("sloppy") or ():
                self._by["by_sloppy_kind"][k] += 1


def _asks_for_brevity(req: dict) -> bool:
    last = (req.get("messages") or [{}])[-1]
    texts = _texts({"messages": [last]}) if isinstance(last, dict) else []
    return any(re.search(r"\b(more briefly|shorter answer|be brief)\b", t, re.I) for t in texts)


def _shape(req: Any) -> dict:
    """What the request log keeps of a request's shape: its turns, its ``is_error`` tool results
    (a corrective retry), its ``max_tokens``, whether its tool is strict."""
    if not isinstance(req, dict):
        return {"turns": 0, "error_results": 0, "max_tokens": None, "strict": False}
    messages = [m for m in req.get("messages") or [] if isinstance(m, dict)]
    errors = sum(
        1
        for m in messages
        if isinstance(m.get("content"), list)
        for b in m["content"]
        if isinstance(b, dict) and b.get("type") == "tool_result" and b.get("is_error")
    )
    return {
        "turns": len(messages),
        "error_results": errors,
        "max_tokens": req.get("max_tokens"),
        "strict": any(isinstance(t, dict) and t.get("strict") for t in req.get("tools") or []),
    }


def _sloppy_script(kind: str) -> bool:
    if kind == "sloppy":
        return True
    head, _, kinds = kind.partition(":")
    return head == "sloppy" and bool(kinds) and all(k in sloppy.KINDS for k in kinds.split(","))


def _error_body(etype: str, error: dict | str, rid: str) -> bytes:
    error = error if isinstance(error, dict) else {"type": etype, "message": error}
    return json.dumps({"type": "error", "error": error, "request_id": rid}).encode()


def main(argv: list[str] | None = None) -> int:
    """CLI: serve until SIGINT/SIGTERM; prints "simulator listening on URL" once bound."""
    p = argparse.ArgumentParser(prog="python -m roastq.simulator.server", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8788, help="0 picks a free port (the URL printed is the real one)")
    p.add_argument("--latency-ms", type=float, default=50.0)
    p.add_argument("--jitter-ms", type=float, default=20.0)
    p.add_argument("--fault-rate", type=float, default=0.0)
    p.add_argument("--faults", default=",".join(ALL_RANDOM_FAULTS), help="comma-separated fault kinds")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retry-after", type=float, default=1.0, help="retry-after seconds of rate_limit 429s")
    p.add_argument("--hang-s", type=float, default=30.0)
    p.add_argument("--rpm-limit", type=int, default=None)
    p.add_argument(
        "--sloppiness",
        type=float,
        default=0.0,
        help="probability that an answer carries model-like schema violations (0 to 1)",
    )
    a = p.parse_args(argv)
    try:
        cfg = SimConfig(
            latency_ms=a.latency_ms,
            jitter_ms=a.jitter_ms,
            fault_rate=a.fault_rate,
            seed=a.seed,
            faults=tuple(f.strip() for f in a.faults.split(",") if f.strip()),
            retry_after_s=a.retry_after,
            hang_s=a.hang_s,
            rpm_limit=a.rpm_limit,
            sloppiness=a.sloppiness,
        )
    except ValueError as e:
        p.error(str(e))
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    sim = Simulator(cfg, a.host, a.port).start()
    print(f"simulator listening on {sim.url}", flush=True)
    try:
        while not done.wait(0.2):  # short waits keep the main thread responsive to signals
            pass
    finally:
        sim.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
