"""The Claude simulator, exercised over HTTP with the real anthropic SDK (no mocks)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import anthropic
import pydantic
import pytest

from roastq.simulator.server import ALL_RANDOM_FAULTS, FAULT_KINDS, SimConfig, Simulator

DOC_LINES = [
    "# Why minimum wage debates stall",
    "Economists often disagree about the long run effects of minimum wage increases on employment.",
    "",
    "We estimate that roughly forty percent of the benefit accrues to the top decile of earners.",
    "Short line here.",
    "The evidence from  the 1990s natural experiments is mixed, and most studies have small samples.",
    "Critics argue that automation, not wages, is the dominant driver of job losses in retail.",
]
DOCUMENT = "\n".join(f"Line {i}: {text}" for i, text in enumerate(DOC_LINES, 1))
SCHEMA = {
    "type": "object",
    "properties": {
        "summary": {"type": "string"},
        "grade": {"type": "integer", "minimum": 0, "maximum": 100},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "publishable": {"type": "boolean"},
        "comments": {
            "type": "array",
            "minItems": 2,
            "maxItems": 6,
            "items": {"$ref": "#/$defs/Comment"},
        },
    },
    "required": ["summary", "grade", "confidence", "publishable", "comments"],
    "$defs": {
        "Comment": {
            "type": "object",
            "properties": {
                "title": {"type": "string"},
                "description": {"type": "string"},
                "quoted_text": {"type": "string"},
                "start_line": {"type": "integer", "minimum": 1},
                "end_line": {"type": "integer", "minimum": 1},
                "importance": {"type": "integer", "minimum": 1, "maximum": 10},
                "severity": {"enum": ["low", "medium", "high"]},
            },
            "required": ["title", "description", "quoted_text", "start_line", "end_line", "importance", "severity"],
        }
    },
}
TOOL = {"name": "submit_review", "description": "Submit the review.", "input_schema": SCHEMA}
FAST = SimConfig(latency_ms=1, jitter_ms=0)


def validate(schema: dict, value, root: dict | None = None, path: str = "$") -> list[str]:
    """Tiny JSON-schema validator (the subset SCHEMA uses); returns error strings."""
    root = root or schema
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    if "enum" in schema:
        return [] if value in schema["enum"] else [f"{path}: {value!r} not in enum"]
    kind = schema.get("type")
    checks = {"object": dict, "array": list, "string": str, "boolean": bool, "integer": int, "number": (int, float)}
    if kind in checks and (not isinstance(value, checks[kind]) or (kind != "boolean" and isinstance(value, bool))):
        return [f"{path}: expected {kind}, got {value!r}"]
    errors = []
    if kind == "object":
        errors += [f"{path}.{k}: missing" for k in schema.get("required", []) if k not in value]
        for k, sub in schema.get("properties", {}).items():
            if k in value:
                errors += validate(sub, value[k], root, f"{path}.{k}")
    elif kind == "array":
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", 10**9):
            errors.append(f"{path}: {len(value)} items")
        for i, item in enumerate(value):
            errors += validate(schema["items"], item, root, f"{path}[{i}]")
    elif kind in ("integer", "number"):
        if not schema.get("minimum", -1e300) <= value <= schema.get("maximum", 1e300):
            errors.append(f"{path}: {value} out of range")
    return errors


def norm(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip().lower()


@pytest.fixture
def sim():
    with Simulator(FAST) as s:
        yield s


@pytest.fixture
def client(sim):
    with anthropic.Anthropic(base_url=sim.url, api_key="sk-sim", max_retries=0) as c:
        yield c


def review(client, note: str = "", **kw):
    return client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=4000,
        tools=[TOOL],
        tool_choice={"type": "tool", "name": "submit_review"},
        messages=[{"role": "user", "content": f"Review this.\n<document>\n{DOCUMENT}\n</document>\n{note}"}],
        **kw,
    )


def simple(client, text: str = "hello", **kw):
    return client.messages.create(
        model="claude-haiku-4-5", max_tokens=100, messages=[{"role": "user", "content": text}], **kw
    )


def get_json(url: str, data: dict | None = None):
    body = None if data is None else json.dumps(data).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=body), timeout=5) as resp:
        return json.load(resp)


def test_forced_tool_use_satisfies_schema_and_quotes_document(client):
    quotes = perturbed = 0
    for i in range(25):
        msg = review(client, f"attempt {i}")
        assert msg.stop_reason == "tool_use" and len(msg.content) == 1
        block = msg.content[0]
        assert block.type == "tool_use" and block.name == "submit_review" and block.id.startswith("toolu_")
        assert validate(SCHEMA, block.input) == []
        for comment in block.input["comments"]:
            line = DOC_LINES[comment["start_line"] - 1]
            assert comment["end_line"] == comment["start_line"]
            assert norm(comment["quoted_text"]) in norm(line), comment
            assert 4 <= len(comment["quoted_text"].split()) <= 14
            quotes += 1
            perturbed += comment["quoted_text"] not in line
        assert msg.usage.input_tokens > 0 and msg.usage.output_tokens > 0
        assert "lorem" not in block.input["summary"].lower() and block.input["summary"].endswith(".")
    assert 0 < perturbed < quotes * 0.3, (perturbed, quotes)  # ~1 in 8 quotes is fuzzed


class Highlight(pydantic.BaseModel):
    quoted_text: str = pydantic.Field(max_length=300)
    start_line: int = pydantic.Field(ge=1)
    end_line: int
    kind: str = pydantic.Field(pattern="^(error|praise)$", json_schema_extra={"enum": ["error", "praise"]})
    note: str | None = None


class Evaluation(pydantic.BaseModel):
    grade: float = pydantic.Field(gt=0, le=100)
    tags: list[str] = pydantic.Field(min_length=1, max_length=3)
    verdict: Literal["accept", "reject"] | None
    highlights: list[Highlight]
    quotes: list[str]
    version: Literal[2] = 2


def test_pydantic_generated_schema_round_trips(client):
    """$defs/$ref, anyOf-with-null, exclusiveMinimum, const and enums, as pydantic emits them."""
    tool = {"name": "evaluate", "input_schema": Evaluation.model_json_schema()}
    for i in range(15):
        msg = client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=2000,
            tools=[tool],
            tool_choice={"type": "tool", "name": "evaluate"},
            messages=[{"role": "user", "content": f"<document>\n{DOCUMENT}\n</document> {i}"}],
        )
        evaluation = Evaluation.model_validate(msg.content[0].input)
        for quote in evaluation.quotes + [h.quoted_text for h in evaluation.highlights]:
            assert any(norm(quote) in norm(line) for line in DOC_LINES), quote


def test_text_answer_and_usage(client, sim):
    msg = simple(client, "x" * 400)
    assert msg.content[0].type == "text" and len(msg.content[0].text.split()) >= 5
    assert msg.stop_reason == "end_turn" and msg.model == "claude-haiku-4-5"
    assert msg.usage.input_tokens == 100  # 400 chars / 4
    assert msg.usage.cache_read_input_tokens == 0 and msg.usage.cache_creation_input_tokens == 0
    entry = sim.requests()[-1]
    assert entry["kind"] == "ok" and entry["status"] == 200 and entry["tool"] is None
    assert entry["output_tokens"] == msg.usage.output_tokens


def test_response_headers(client):
    raw = client.messages.with_raw_response.create(
        model="claude-sonnet-4-6", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
    )
    assert raw.headers["request-id"].startswith("req_")
    for kind in ("requests", "input-tokens", "output-tokens"):
        for part in ("limit", "remaining", "reset"):
            assert raw.headers[f"anthropic-ratelimit-{kind}-{part}"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", raw.headers["anthropic-ratelimit-requests-reset"])
    assert raw.parse().content[0].type == "text"


@pytest.mark.parametrize(
    "kind, exc",
    [
        ("rate_limit", anthropic.RateLimitError),
        ("spend_limit", anthropic.EnforcedSpendLimitReachedError),
        ("overloaded", anthropic.OverloadedError),
        ("server_error", anthropic.InternalServerError),
        ("invalid_request", anthropic.BadRequestError),
        ("auth", anthropic.AuthenticationError),
        ("permission", anthropic.PermissionDeniedError),
        ("drop", anthropic.APIConnectionError),
        # a 200 with a truncated JSON body: the SDK does not wrap the decode error
        ("malformed", json.JSONDecodeError),
    ],
)
def test_fault_kinds_raise_sdk_exceptions(client, sim, kind, exc):
    sim.configure(retry_after_s=2.5)
    sim.script(kind)
    with pytest.raises(exc) as info:
        review(client)
    assert type(info.value) is exc
    if isinstance(info.value, anthropic.APIStatusError):
        body = info.value.body
        assert body["type"] == "error" and body["request_id"].startswith("req_") and body["error"]["message"]
        assert info.value.request_id == body["request_id"]
    if kind == "rate_limit":
        headers = info.value.response.headers
        assert headers["retry-after"] == "3" and headers["retry-after-ms"] == "2500"
        assert info.value.type == "rate_limit_error"
    if kind == "spend_limit":
        assert info.value.error_code == "enforced_spend_limit_reached"
    entry = sim.requests()[-1]
    assert entry["kind"] == kind
    assert entry["status"] == (None if kind == "drop" else getattr(info.value, "status_code", 200))
    assert entry["retry_after_s"] == (2.5 if kind == "rate_limit" else None)
    assert review(client).content[0].type == "tool_use"  # the script is used up: back to normal


def test_hang_times_out_the_client(client, sim):
    sim.configure(hang_s=1.5)
    sim.script("hang")
    started = time.monotonic()
    with pytest.raises(anthropic.APITimeoutError):
        simple(client, timeout=0.5)
    assert time.monotonic() - started < 1.4
    assert sim.requests()[-1]["kind"] == "hang" and sim.requests()[-1]["status"] is None


def test_bad_tool_input_violates_schema(client, sim):
    sim.script("bad_tool_input")
    msg = review(client)
    assert msg.stop_reason == "tool_use"
    assert any(e.endswith("missing") for e in validate(SCHEMA, msg.content[0].input))


def test_script_is_consumed_fifo(client, sim):
    sim.script("overloaded", "ok", "server_error")
    sim.configure(fault_rate=1.0, faults=("auth",))  # the script still comes first
    with pytest.raises(anthropic.OverloadedError):
        simple(client)
    assert simple(client).content
    with pytest.raises(anthropic.InternalServerError):
        simple(client)
    with pytest.raises(anthropic.AuthenticationError):
        simple(client)
    assert [e["kind"] for e in sim.requests()] == ["overloaded", "ok", "server_error", "auth"]


def _random_kinds(seed: int) -> list[str]:
    faults = tuple(k for k in ALL_RANDOM_FAULTS if k != "hang")
    with Simulator(SimConfig(latency_ms=0, jitter_ms=0, fault_rate=0.5, faults=faults, seed=seed)) as s:
        with anthropic.Anthropic(base_url=s.url, api_key="sk-sim", max_retries=0) as c:
            for i in range(40):
                try:
                    simple(c, f"request {i}")
                except (anthropic.APIError, ValueError):
                    pass
        return [e["kind"] for e in s.requests()]


def test_random_faults_are_reproducible_under_a_seed():
    first, second = _random_kinds(7), _random_kinds(7)
    assert first == second
    assert 8 <= first.count("ok") <= 32 and len(set(first)) >= 5
    assert _random_kinds(8) != first


def test_rpm_limit(client, sim):
    sim.configure(rpm_limit=3)
    for remaining in ("2", "1", "0"):
        raw = client.messages.with_raw_response.create(
            model="m", max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.headers["anthropic-ratelimit-requests-limit"] == "3"
        assert raw.headers["anthropic-ratelimit-requests-remaining"] == remaining
    with pytest.raises(anthropic.RateLimitError) as info:
        simple(client)
    assert 58 <= int(info.value.response.headers["retry-after"]) <= 60
    assert sim.requests()[-1]["kind"] == "rpm_limit" and sim.stats()["by_status"]["429"] == 1
    sim.configure(rpm_limit=None)
    assert simple(client).content


def test_prompt_caching_reports_creation_then_read(client):
    system = [{"type": "text", "text": "You are a careful reviewer. " * 40, "cache_control": {"type": "ephemeral"}}]
    first = simple(client, "doc one", system=system).usage
    second = simple(client, "a different document", system=system).usage
    assert first.cache_creation_input_tokens > 200 and first.cache_read_input_tokens == 0
    assert second.cache_read_input_tokens == first.cache_creation_input_tokens
    assert second.cache_creation_input_tokens == 0
    assert first.input_tokens == 2 and second.input_tokens == 5  # only the uncached suffix
    tool = {**TOOL, "cache_control": {"type": "ephemeral"}}  # tools come first in the prefix
    usage = client.messages.create(
        model="m", max_tokens=9, tools=[tool], system=system, messages=[{"role": "user", "content": "hi"}]
    ).usage
    assert usage.cache_read_input_tokens == 0 and usage.cache_creation_input_tokens > first.cache_creation_input_tokens


def test_same_request_same_answer(client, sim):
    a, b = review(client, "same"), review(client, "same")
    assert a.id != b.id and a.content[0].input == b.content[0].input
    assert review(client, "other").content[0].input != a.content[0].input
    sim.configure(seed=99)
    assert review(client, "same").content[0].input != a.content[0].input


def test_http_control_endpoints_and_job_headers(client, sim):
    assert get_json(f"{sim.url}/_sim/health")["ok"] is True
    get_json(f"{sim.url}/_sim/script", {"kinds": ["overloaded"]})
    assert get_json(f"{sim.url}/_sim/config", {"latency_ms": 2, "faults": ["drop"]})["faults"] == ["drop"]
    assert sim.config.latency_ms == 2 and sim.config.faults == ("drop",)
    headers = {"x-roastq-job-id": "job-42", "x-roastq-attempt": "3", "x-roastq-step": "highlights"}
    with pytest.raises(anthropic.OverloadedError):
        review(client, extra_headers=headers)
    review(client, extra_headers=headers)
    stats = get_json(f"{sim.url}/_sim/stats")
    assert stats == sim.stats()
    assert stats["requests"] == 2 and stats["by_kind"] == {"overloaded": 1, "ok": 1}
    assert stats["by_status"] == {"529": 1, "200": 1} and stats["by_tool"] == {"submit_review": 2}
    assert stats["by_model"] == {"claude-sonnet-4-6": 2} and stats["input_tokens"] > 0
    log = get_json(f"{sim.url}/_sim/requests")
    assert [e["seq"] for e in log] == [1, 2] and log == sim.requests()
    assert {(e["job_id"], e["attempt"], e["step"]) for e in log} == {("job-42", "3", "highlights")}
    assert set(log[1]) >= {
        "time",
        "model",
        "tool",
        "kind",
        "status",
        "retry_after_s",
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
    }
    get_json(f"{sim.url}/_sim/reset", {})
    assert sim.stats()["requests"] == 0 and sim.requests() == []
    for path, data in (("/_sim/script", {"kinds": ["nope"]}), ("/_sim/config", {"bogus": 1})):
        with pytest.raises(urllib.error.HTTPError) as info:
            get_json(sim.url + path, data)
        assert info.value.code == 400
    with pytest.raises(urllib.error.HTTPError) as info:
        get_json(f"{sim.url}/_sim/nothing")
    assert info.value.code == 404


def test_requests_the_real_api_would_reject_get_a_400(sim):
    req = urllib.request.Request(f"{sim.url}/v1/messages", data=json.dumps({"model": "m", "messages": []}).encode())
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=5)
    body = json.load(info.value)
    assert info.value.code == 400 and body["error"] == {
        "type": "invalid_request_error",
        "message": "max_tokens: Field required",
    }


def test_config_validation(sim):
    with pytest.raises(ValueError):
        SimConfig(faults=("nope",))
    with pytest.raises(ValueError):
        sim.configure(colour="blue")
    with pytest.raises(ValueError):
        sim.script("ok", "nope")
    assert set(ALL_RANDOM_FAULTS) <= set(FAULT_KINDS)


def test_concurrent_requests_are_not_serialised(sim):
    sim.configure(latency_ms=400, jitter_ms=0)
    with anthropic.Anthropic(base_url=sim.url, api_key="sk-sim", max_retries=0) as c:
        started = time.monotonic()
        with ThreadPoolExecutor(200) as pool:
            results = list(pool.map(lambda i: simple(c, f"n{i}"), range(200)))
        elapsed = time.monotonic() - started
    assert len(results) == 200 and elapsed < 5, elapsed  # serialised would take 80 s
    assert sim.stats()["by_status"] == {"200": 200}


def test_cli_serves_until_sigterm():
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "roastq.simulator.server",
            "--port",
            "0",
            "--latency-ms",
            "1",
            "--jitter-ms",
            "0",
            "--seed",
            "3",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line: list[str] = []
        reader = threading.Thread(target=lambda: line.append(proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(10)
        match = re.fullmatch(r"simulator listening on (http://127\.0\.0\.1:(\d+))\n", line[0] if line else "")
        assert match and int(match.group(2)) > 0, line
        with anthropic.Anthropic(base_url=match.group(1), api_key="sk-sim", max_retries=0) as c:
            assert simple(c).content[0].type == "text"
        assert get_json(match.group(1) + "/_sim/stats")["requests"] == 1
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


# -- strict tools, sloppiness, max_tokens, refusal, count_tokens (issue 12) -----------------------


def strict_review(client, note: str = "", **kw):
    tool = {**TOOL, "strict": True, "input_schema": anthropic.transform_schema(SCHEMA)}
    return client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=4000,
        tools=[tool],
        tool_choice={"type": "tool", "name": TOOL["name"]},
        messages=[{"role": "user", "content": f"Review this.\n<document>\n{DOCUMENT}\n</document>\n{note}"}],
        **kw,
    )


@pytest.mark.parametrize(
    "keyword,schema",
    [
        (
            "maxLength",
            {"type": "object", "properties": {"a": {"type": "string", "maxLength": 5}}, "additionalProperties": False},
        ),
        (
            "minimum",
            {"type": "object", "properties": {"a": {"type": "integer", "minimum": 1}}, "additionalProperties": False},
        ),
        (
            "maxItems",
            {
                "type": "object",
                "properties": {"a": {"type": "array", "items": {"type": "string"}, "maxItems": 3}},
                "additionalProperties": False,
            },
        ),
        ("additionalProperties", {"type": "object", "properties": {"a": {"type": "string"}}}),
    ],
)
def test_a_strict_tool_with_a_keyword_the_grammar_does_not_take_is_a_400(client, keyword, schema):
    with pytest.raises(anthropic.BadRequestError, match=keyword):
        client.messages.create(
            model="claude-sonnet-4-6",
            max_tokens=100,
            messages=[{"role": "user", "content": "x"}],
            tools=[{"name": "t", "input_schema": schema, "strict": True}],
            tool_choice={"type": "tool", "name": "t"},
        )
    # The same schema without strict is taken.
    client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=100,
        messages=[{"role": "user", "content": "x"}],
        tools=[{"name": "t", "input_schema": schema}],
        tool_choice={"type": "tool", "name": "t"},
    )


def test_strict_answers_keep_the_shape_and_read_bounds_from_descriptions(sim, client):
    sim.configure(sloppiness=0.0)
    value = strict_review(client).content[0].input
    assert validate(SCHEMA, value) == []  # the bounds in the descriptions were honoured too
    sim.configure(sloppiness=1.0)
    for i in range(40):
        value = strict_review(client, note=f"take {i}").content
        if value[0].type != "tool_use":
            continue  # a refusal
        shape = [
            e
            for e in validate(anthropic.transform_schema(SCHEMA), value[0].input)
            if "out of range" not in e and "items" not in e
        ]
        assert shape == [], shape  # only bounds broken, never the shape
    kinds = set(sim.stats()["by_sloppy_kind"])
    assert kinds and not kinds & {"string_number", "unknown_enum", "extra_property", "missing_required", "wrong_type"}


def test_sloppiness_breaks_non_strict_answers_in_every_way_and_is_deterministic(sim, client):
    sim.configure(sloppiness=1.0, seed=5)
    first = [review(client, note=f"take {i}").model_dump(exclude={"id"}) for i in range(80)]
    kinds = set(sim.stats()["by_sloppy_kind"])
    assert kinds >= {
        "out_of_range",
        "string_number",
        "unknown_enum",
        "extra_property",
        "missing_required",
        "wrong_type",
        "altered_quote",
        "lines_off",
        "absent_quote",
    }
    again = [review(client, note=f"take {i}").model_dump(exclude={"id"}) for i in range(80)]

    def strip_ids(m):
        return [{k: v for k, v in b.items() if k != "id"} for b in m["content"]]

    assert [strip_ids(m) for m in first] == [strip_ids(m) for m in again]  # same seed and request, same answer


def test_sloppiness_zero_changes_nothing_underneath(sim, client):
    """A tidy answer is the answer a sloppy request would have had without its violations."""
    sim.configure(sloppiness=0.0)
    tidy = review(client).content[0].input
    sim.configure(sloppiness=1.0)
    sim.script("sloppy:extra_property")
    sloppy = review(client).content[0].input

    def known(value, like):  # ``value`` without the properties ``like`` does not have
        if isinstance(value, dict):
            return {k: known(v, like[k]) for k, v in value.items() if k in like}
        if isinstance(value, list):
            return [known(v, w) for v, w in zip(value, like)]
        return value

    assert sloppy != tidy and known(sloppy, tidy) == tidy


def test_answers_are_cut_at_max_tokens(client):
    r = client.messages.create(
        model="claude-sonnet-4-6",
        max_tokens=60,
        tools=[TOOL],
        tool_choice={"type": "tool", "name": "submit_review"},
        messages=[{"role": "user", "content": f"Review this.\n<document>\n{DOCUMENT}\n</document>"}],
    )
    assert r.stop_reason == "max_tokens" and r.usage.output_tokens == 60
    assert r.content[0].type == "tool_use" and validate(SCHEMA, r.content[0].input)  # incomplete


def test_refusal(sim, client):
    sim.script("refusal")
    r = review(client)
    assert r.stop_reason == "refusal" and r.content[0].type == "text" and r.usage.output_tokens > 0
    assert sim.requests()[-1]["kind"] == "refusal"


def test_count_tokens_is_free_and_agrees_with_the_bill(sim, client):
    args = dict(
        model="claude-sonnet-4-6",
        tools=[TOOL],
        messages=[{"role": "user", "content": f"<document>\n{DOCUMENT}\n</document>"}],
    )
    counted = client.messages.count_tokens(**args).input_tokens
    billed = client.messages.create(max_tokens=4000, tool_choice={"type": "tool", "name": TOOL["name"]}, **args)
    assert counted == billed.usage.input_tokens
    assert sim.stats()["count_tokens"] == 1 and sim.stats()["requests"] == 1  # not a billed request
