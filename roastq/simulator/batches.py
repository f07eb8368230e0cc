"""The simulator's Message Batches API, as documented for ``client.messages.batches``.

* ``POST /v1/messages/batches`` ``{"requests": [{"custom_id", "params"}]}``: a batch, ``in_progress``
  (``custom_id`` must match ``^[a-zA-Z0-9_-]{1,64}$`` and be unique in the batch; at most 100,000
  requests or 256 MB);
* ``GET /v1/messages/batches/{id}``: ``processing_status``, ``request_counts`` (all ``processing``
  until the batch ends, as documented), ``created_at``, ``ended_at``, ``expires_at``,
  ``cancel_initiated_at``, ``results_url`` (once ended);
* ``GET /v1/messages/batches/{id}/results``: one JSON line a request, in no particular order:
  ``succeeded`` (a Message, with ``usage``), ``errored`` (an error response of any of the API's
  error types), ``canceled``, ``expired``;
* ``POST /v1/messages/batches/{id}/cancel``: ``canceling``, then ended with the unprocessed
  requests ``canceled``; ``DELETE /v1/messages/batches/{id}`` (an ended batch only);
* ``GET /v1/messages/batches?limit=&after_id=&before_id=``: newest first, paginated.

A batch ends ``end_after_s`` after its creation; a request's outcome is drawn at the end:
scripted ones first (``script_outcomes``), else with probability ``error_rate`` one of
``outcomes``, else ``succeeded``. A batch whose end would come after ``expire_after_s`` expires
then: its requests ``expired``. Endpoint faults (``script_faults`` or ``fault_rate``):
``server_error`` (a 500), ``cut_results`` (the results stream closes halfway), ``stall_results``
(half the results, then ``stall_s`` of silence), ``slow_create`` (the batch is created, the answer
comes ``create_delay_s`` later). ``max_processing`` caps the requests in unfinished batches, as
the API's batch queue limit does (a 429 over it). ``stats()`` bills results at batch prices.
"""

from __future__ import annotations

import dataclasses
import json
import random
import re
import threading
import time
import uuid
from collections import Counter, deque
from datetime import UTC
from decimal import Decimal
from typing import Any

MAX_REQUESTS = 100_000
MAX_BYTES = 256 * 1024 * 1024
CUSTOM_ID = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
OUTCOMES = (
    "succeeded",
    "expired",
    "canceled",
    "errored:rate_limit",
    "errored:overloaded",
    "errored:server_error",
    "errored:invalid_request",
    "errored:auth",
    "errored:permission",
    "errored:spend_limit",
    "errored:not_found",
    "errored:timeout",
    "errored:billing",
)
#: Extra error kinds only a batch result carries (the messages endpoint's are in server.ERROR_FAULTS).
EXTRA_ERRORS = {
    "not_found": (404, "not_found_error", "Not found"),
    "timeout": (504, "timeout_error", "Request timed out"),
    "billing": (402, "billing_error", "Your credit balance is too low."),
}
ENDPOINT_FAULTS = ("server_error", "cut_results", "stall_results", "slow_create")


@dataclasses.dataclass
class BatchConfig:
    end_after_s: float = 2.0
    expire_after_s: float = 86400.0
    error_rate: float = 0.0
    outcomes: tuple[str, ...] = (
        "expired",
        "errored:overloaded",
        "errored:server_error",
        "errored:rate_limit",
        "errored:invalid_request",
    )
    fault_rate: float = 0.0  # endpoint faults drawn from `faults`
    faults: tuple[str, ...] = ("server_error",)
    stall_s: float = 30.0
    create_delay_s: float = 30.0
    max_processing: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.outcomes, self.faults = tuple(self.outcomes), tuple(self.faults)
        bad = [o for o in self.outcomes if o not in OUTCOMES] + [f for f in self.faults if f not in ENDPOINT_FAULTS]
        if bad:
            raise ValueError(f"unknown batch outcomes or faults {bad}")


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    from datetime import datetime

    return datetime.fromtimestamp(t, UTC).isoformat().replace("+00:00", "Z")


@dataclasses.dataclass
class _Batch:
    id: str
    created: float
    ends: float
    expires: float
    requests: list[tuple[str, dict]]
    outcomes: list[str]
    cancel_at: float | None = None
    ended: float | None = None
    results: list[dict] | None = None


#: Anthropic's list prices, $ per million tokens (input, output), by model family: the simulator
#: bills like the API, independently of roastq's own price table. Cache writes 1.25x, reads 0.1x
#: the input price; batch results half of everything.
LIST_PRICES = {
    "opus": (Decimal(5), Decimal(25)),
    "sonnet": (Decimal(3), Decimal(15)),
    "haiku": (Decimal(1), Decimal(5)),
}
MICRO = Decimal("0.000001")


def list_price_usd(model: str, usage: dict, *, batch: bool) -> Decimal:
    family = next((f for f in LIST_PRICES if f in model), "sonnet")
    inp, out = LIST_PRICES[family]
    total = (
        (usage.get("input_tokens") or 0) * inp
        + (usage.get("output_tokens") or 0) * out
        + (usage.get("cache_creation_input_tokens") or 0) * inp * Decimal("1.25")
        + (usage.get("cache_read_input_tokens") or 0) * inp * Decimal("0.1")
    ) / 1_000_000
    return (total * Decimal("0.5") if batch else total).quantize(MICRO)


class BatchLane:
    """The batches of one Simulator (``sim.batches``). The server hands it what it shares with
    the messages endpoint: its error kinds, its request check and its forced-tool rule."""

    def __init__(self, sim, *, error_faults: dict, problem, forced_tool):
        self.sim = sim
        self.error_faults, self.problem, self.forced_tool = error_faults, problem, forced_tool
        self.config = BatchConfig()
        self._lock = threading.Lock()
        self.reset()

    # ------------------------------------------------------------ control
    def reset(self) -> None:
        with self._lock:
            self._batches: dict[str, _Batch] = {}
            self._order: list[str] = []  # creation order
            self._outcome_script: deque[str] = deque()
            self._fault_script: deque[str] = deque()
            self._rng = random.Random(self.config.seed)
            self._stats = Counter()
            self._usd = Decimal(0)
            self._usd_full = Decimal(0)

    def configure(self, **changes: Any) -> None:
        unknown = set(changes) - {f.name for f in dataclasses.fields(BatchConfig)}
        if unknown:
            raise ValueError(f"unknown batch config fields {sorted(unknown)}")
        with self._lock:
            self.config = dataclasses.replace(self.config, **changes)
            if "seed" in changes:
                self._rng = random.Random(self.config.seed)

    def script_outcomes(self, *outcomes: str) -> None:
        """The outcomes of the next requests, in the order batches receive them."""
        bad = [o for o in outcomes if o not in OUTCOMES]
        if bad:
            raise ValueError(f"unknown outcomes {bad}")
        with self._lock:
            self._outcome_script.extend(outcomes)

    def script_faults(self, *faults: str) -> None:
        """Faults of the next batch endpoint calls ("ok" for none)."""
        bad = [f for f in faults if f != "ok" and f not in ENDPOINT_FAULTS]
        if bad:
            raise ValueError(f"unknown batch faults {bad}")
        with self._lock:
            self._fault_script.extend(faults)

    def stats(self) -> dict:
        with self._lock:
            return {
                **self._stats,
                "billed_usd": str(self._usd),
                "full_price_usd": str(self._usd_full),
                "open": sum(1 for b in self._batches.values() if self._status(b, time.time()) != "ended"),
            }

    def batch_ids(self) -> list[str]:
        with self._lock:
            return list(self._order)

    def custom_ids(self, batch_id: str) -> list[str]:
        with self._lock:
            return [c for c, _ in self._batches[batch_id].requests]

    # ------------------------------------------------------------ HTTP
    def handle(self, h, method: str, raw: bytes) -> None:
        path = h.path.split("?")[0].rstrip("/")
        query = dict(p.split("=", 1) for p in h.path.split("?", 1)[1].split("&") if "=" in p) if "?" in h.path else {}
        if path == "/_sim/batches/config" and method == "POST":
            self.configure(**json.loads(raw or b"{}"))
            return h.send(200, json.dumps(dataclasses.asdict(self.config)).encode())
        if path == "/_sim/batches/stats":
            return h.send(200, json.dumps(self.stats()).encode())
        parts = path.split("/")[4:]  # after /v1/messages/batches
        call = "create" if method == "POST" and not parts else "results" if parts[1:] == ["results"] else "other"
        fault = self._fault(call)
        self._stats[f"calls_{method.lower()}"] += 1
        if fault == "server_error":
            self._stats["faults_server_error"] += 1
            return h.send(500, _error("api_error", "Internal server error"))
        if method == "POST" and not parts:
            return self._create(h, raw, slow=fault == "slow_create")
        if method == "GET" and not parts:
            return self._list(h, query)
        with self._lock:
            batch = self._batches.get(parts[0])
        if batch is None:
            return h.send(404, _error("not_found_error", f"message batch {parts[0]!r} not found"))
        if method == "GET" and len(parts) == 1:
            with self._lock:
                view = self._view(batch)
            return h.send(200, json.dumps(view).encode())
        if method == "POST" and parts[1:] == ["cancel"]:
            with self._lock:
                if self._status(batch, time.time()) == "in_progress":
                    batch.cancel_at = time.time()
                    self._stats["cancels"] += 1
                view = self._view(batch)
            return h.send(200, json.dumps(view).encode())
        if method == "GET" and parts[1:] == ["results"]:
            return self._results(h, batch, fault)
        if method == "DELETE" and len(parts) == 1:
            with self._lock:
                if self._status(batch, time.time()) != "ended":
                    return h.send(
                        400,
                        _error(
                            "invalid_request_error", "Message batch is still processing: cancel it before deleting it."
                        ),
                    )
                del self._batches[batch.id]
                self._order.remove(batch.id)
            return h.send(200, json.dumps({"id": batch.id, "type": "message_batch_deleted"}).encode())
        return h.send(404, _error("not_found_error", f"{method} {path} not found"))

    def _fault(self, call: str) -> str:
        """The fault for this call: a scripted one waits for a call it applies to (a results fault
        for a results call, slow_create for a create)."""
        applies = (
            {"server_error", "ok"}
            | ({"cut_results", "stall_results"} if call == "results" else set())
            | ({"slow_create"} if call == "create" else set())
        )
        with self._lock:
            if self._fault_script:
                return self._fault_script.popleft() if self._fault_script[0] in applies else "ok"
            cfg = self.config
            if cfg.fault_rate and cfg.faults and self._rng.random() < cfg.fault_rate:
                fault = self._rng.choice(cfg.faults)
                return fault if fault in applies else "ok"
        return "ok"

    def _create(self, h, raw: bytes, *, slow: bool) -> None:
        if len(raw) > MAX_BYTES:
            return h.send(413, _error("request_too_large", "Request exceeds the maximum allowed number of bytes."))
        try:
            requests = json.loads(raw).get("requests")
        except (ValueError, AttributeError):
            requests = None
        if not isinstance(requests, list) or not requests:
            return h.send(400, _error("invalid_request_error", "requests: Field required (a non-empty list)"))
        if len(requests) > MAX_REQUESTS:
            return h.send(400, _error("invalid_request_error", f"requests: at most {MAX_REQUESTS} requests a batch"))
        ids = [r.get("custom_id") if isinstance(r, dict) else None for r in requests]
        if not all(isinstance(c, str) and CUSTOM_ID.match(c) for c in ids):
            return h.send(400, _error("invalid_request_error", "requests.custom_id: must match ^[a-zA-Z0-9_-]{1,64}$"))
        if len(set(ids)) != len(ids):
            return h.send(400, _error("invalid_request_error", "requests: custom_id values must be unique"))
        now = time.time()
        with self._lock:
            cfg = self.config
            processing = sum(len(b.requests) for b in self._batches.values() if self._status(b, now) != "ended")
            if cfg.max_processing is not None and processing + len(requests) > cfg.max_processing:
                self._stats["rejected_queue_limit"] += 1
                return h.send(
                    429,
                    _error(
                        "rate_limit_error", "Number of batch requests in the processing queue exceeds your rate limit."
                    ),
                    [("retry-after", "60")],
                )
            batch = _Batch(
                id="msgbatch_sim" + uuid.uuid4().hex[:20],
                created=now,
                ends=now + cfg.end_after_s,
                expires=now + cfg.expire_after_s,
                requests=[(r["custom_id"], r.get("params")) for r in requests],
                outcomes=[self._outcome(cfg) for _ in requests],
            )
            self._batches[batch.id] = batch
            self._order.append(batch.id)
            self._stats["batches"] += 1
            self._stats["requests"] += len(requests)
            view = self._view(batch)
        if slow:  # created: the answer is late (a client that dies meanwhile never learns the id)
            self.sim._stopping.wait(self.config.create_delay_s)
        h.send(200, json.dumps(view).encode())

    def _outcome(self, cfg: BatchConfig) -> str:
        if self._outcome_script:
            return self._outcome_script.popleft()
        if cfg.error_rate and cfg.outcomes and self._rng.random() < cfg.error_rate:
            return self._rng.choice(cfg.outcomes)
        return "succeeded"

    def _list(self, h, query: dict) -> None:
        limit = max(1, min(1000, int(query.get("limit", 20))))
        with self._lock:
            newest_first = list(reversed(self._order))
        if "after_id" in query and query["after_id"] in newest_first:
            newest_first = newest_first[newest_first.index(query["after_id"]) + 1 :]
        elif "before_id" in query and query["before_id"] in newest_first:
            newest_first = newest_first[: newest_first.index(query["before_id"])][-limit:]
        page = newest_first[:limit]
        with self._lock:
            data = [self._view(self._batches[i]) for i in page if i in self._batches]
        body = {
            "data": data,
            "has_more": len(newest_first) > limit,
            "first_id": page[0] if page else None,
            "last_id": page[-1] if page else None,
        }
        h.send(200, json.dumps(body).encode())

    # ------------------------------------------------------------ state
    def _status(self, b: _Batch, now: float) -> str:
        """Called under the lock."""
        if b.ended is not None:
            return "ended"
        if b.cancel_at is not None:
            if now >= b.cancel_at + 0.2:  # cancelling takes a moment
                b.ended = b.cancel_at + 0.2
                return "ended"
            return "canceling"
        end = min(b.ends, b.expires)
        if now >= end:
            b.ended = end
            return "ended"
        return "in_progress"

    def _view(self, b: _Batch) -> dict:
        """Called under the lock."""
        now = time.time()
        status = self._status(b, now)
        counts = dict(processing=len(b.requests), succeeded=0, errored=0, canceled=0, expired=0)
        if status == "ended":
            results = self._finish(b)
            counts = dict(
                processing=0,
                **{
                    k: sum(1 for r in results if r["result"]["type"] == k)
                    for k in ("succeeded", "errored", "canceled", "expired")
                },
            )
        return {
            "id": b.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "created_at": _iso(b.created),
            "expires_at": _iso(b.expires),
            "ended_at": _iso(b.ended),
            "archived_at": None,
            "cancel_initiated_at": _iso(b.cancel_at),
            "results_url": f"{self.sim.url}/v1/messages/batches/{b.id}/results" if status == "ended" else None,
        }

    def _finish(self, b: _Batch) -> list[dict]:
        """The results, made once when the batch has ended (under the lock)."""
        if b.results is not None:
            return b.results
        cfg = self.sim.config
        results = []
        for (custom_id, params), outcome in zip(b.requests, b.outcomes):
            if b.cancel_at is not None and b.ended == b.cancel_at + 0.2:
                outcome = "canceled"  # nothing had been processed when the cancel came
            elif b.expires <= b.ends:
                outcome = "expired"
            problem = self.problem(params)
            if problem and outcome == "succeeded":
                outcome = "errored:invalid_request"
            if outcome == "succeeded":
                message, usage, _sloppy = self.sim.answer(params, cfg, self.forced_tool(params), "")
                result = {"type": "succeeded", "message": message}
                self._bill(params["model"], usage)
            elif outcome.startswith("errored:"):
                kind = outcome.split(":", 1)[1]
                status, etype, text = {**self.error_faults, **EXTRA_ERRORS}[kind]
                error: dict[str, Any] = {
                    "type": etype,
                    "message": problem if problem and kind == "invalid_request" else text,
                }
                if kind == "spend_limit":
                    error["details"] = {"error_code": "enforced_spend_limit_reached"}
                result = {
                    "type": "errored",
                    "error": {"type": "error", "error": error, "request_id": "req_sim" + uuid.uuid4().hex[:20]},
                }
            else:
                result = {"type": outcome}
            self._stats[f"results_{result['type']}"] += 1
            results.append({"custom_id": custom_id, "result": result})
        self._rng.shuffle(results)  # results come in no particular order
        b.results = results
        return results

    def _bill(self, model: str, usage: dict) -> None:
        self._usd += list_price_usd(model, usage, batch=True)
        self._usd_full += list_price_usd(model, usage, batch=False)
        for k in ("input_tokens", "output_tokens", "cache_read_input_tokens", "cache_creation_input_tokens"):
            self._stats[k] += usage.get(k) or 0

    def _results(self, h, batch: _Batch, fault: str) -> None:
        with self._lock:
            if self._status(batch, time.time()) != "ended":
                return h.send(400, _error("invalid_request_error", "Message batch results are not yet available."))
            results = self._finish(batch)
        body = b"".join(json.dumps(r).encode() + b"\n" for r in results)
        h.send_response(200)
        h.send_header("content-type", "application/binary")
        h.send_header("content-length", str(len(body)))
        h.end_headers()
        if fault in ("cut_results", "stall_results"):
            half = body[: body.rfind(b"\n", 0, len(body) // 2) + 1]
            h.wfile.write(half)
            h.wfile.flush()
            self._stats[f"faults_{fault}"] += 1
            if fault == "stall_results":
                self.sim._stopping.wait(self.config.stall_s)
            h.close_connection = True  # the rest never comes: the client sees a short body
            return
        h.wfile.write(body)


def _error(etype: str, message: str) -> bytes:
    return json.dumps(
        {"type": "error", "error": {"type": etype, "message": message}, "request_id": "req_sim" + uuid.uuid4().hex[:20]}
    ).encode()
