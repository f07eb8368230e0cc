"""The response cache: a caching proxy's semantics in Postgres, and the option of a real proxy instead."""

import threading
import urllib.request
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import one, rows, wait_for_status

from roastq import events
from roastq.api import enqueue_evaluation
from roastq.jobctx import JobContext, current_job
from roastq.llm import cache

TOOL = {
    "name": "submit",
    "description": "Submit.",
    "input_schema": {
        "type": "object",
        "properties": {"answer": {"type": "string", "minLength": 1}},
        "required": ["answer"],
    },
}


@pytest.fixture
def cached(llm_settings):
    """The response cache on (the suite runs with it off)."""
    return llm_settings(llm_cache_enabled=True)


@pytest.fixture
def cache_events():
    seen = []

    def listener(**e):
        seen.append(e)

    events.subscribe("llm_cache", listener)
    yield seen
    events.unsubscribe("llm_cache", listener)


pytestmark = pytest.mark.usefixtures("fast_backoff")  # retries in milliseconds (tests/conftest.py)


def critique_agent(db):
    return one(
        db, "SELECT agent_id FROM agent_versions WHERE self_critique_instructions IS NOT NULL ORDER BY name LIMIT 1"
    )


def first_doc(seeded):
    return next(iter(seeded.documents.values()))


def job_requests(sim, job_id):
    return [r for r in sim.requests() if r["job_id"] == job_id]


def call(claude, prompt="Say something.", **kw):
    return claude.call_tool(step="test", system="You answer.", prompt=prompt, tool=TOOL, **kw)


def test_a_repeated_evaluation_is_served_from_the_cache_without_a_request(
    db, seeded, worker, sim, cached, cache_events
):
    agent = critique_agent(db)
    first = enqueue_evaluation(first_doc(seeded), agent)
    assert wait_for_status(db, [first])[first] == "COMPLETED"
    second = enqueue_evaluation(first_doc(seeded), agent)
    assert wait_for_status(db, [second])[second] == "COMPLETED"

    assert len(job_requests(sim, first)) == 2
    assert job_requests(sim, second) == []  # no HTTP request at all
    paid = dict(rows(db, "SELECT name, price_usd FROM tasks WHERE job_id = %s", first))
    hit = {
        name: (price, is_cached, saved)
        for name, price, is_cached, saved in rows(
            db, "SELECT name, price_usd, cached, saved_usd FROM tasks WHERE job_id = %s", second
        )
    }
    for step in ("analysis", "self_critique"):  # a hit costs $0 and records what it saved
        assert hit[step] == (Decimal(0), True, paid[step])
    assert one(db, "SELECT price_usd FROM jobs WHERE id = %s", second) == 0
    assert one(db, "SELECT sum(saved_usd) FROM llm_spend_daily") == paid["analysis"] + paid["self_critique"]
    assert one(db, "SELECT sum(hits) FROM llm_cache") == 2
    # The same answers: the second evaluation is the first one again.
    assert one(db, "SELECT count(DISTINCT (summary, analysis, self_critique)) FROM evaluation_versions") == 1
    outcomes = [(e["outcome"], e["step"]) for e in cache_events]
    assert outcomes == [
        ("miss", "analysis"),
        ("store", "analysis"),
        ("miss", "self_critique"),
        ("store", "self_critique"),
        ("hit", "analysis"),
        ("hit", "self_critique"),
    ]
    assert sum(e["saved_usd"] for e in cache_events) == paid["analysis"] + paid["self_critique"]


def test_a_new_agent_version_is_a_new_seed(db, seeded, worker, sim, cached):
    agent = critique_agent(db)
    first = enqueue_evaluation(first_doc(seeded), agent)
    wait_for_status(db, [first])
    with db.cursor() as cur:  # same instructions, new version: the cache must not carry over
        cur.execute(
            "INSERT INTO agent_versions (agent_id, version, name, primary_instructions, "
            "self_critique_instructions, provides_grades) SELECT agent_id, version + 1, name, "
            "primary_instructions, self_critique_instructions, provides_grades FROM agent_versions "
            "WHERE agent_id = %s",
            (agent,),
        )
    second = enqueue_evaluation(first_doc(seeded), agent)
    wait_for_status(db, [second])
    assert sorted(r["step"] for r in job_requests(sim, second)) == ["analysis", "self_critique"]


def test_an_expired_entry_is_not_served_and_is_refreshed(db, seeded, simulator, sim, cached):
    before = len(sim.requests())
    call(cached)
    with db.cursor() as cur:
        cur.execute("UPDATE llm_cache SET expires_at = now() - interval '1 second'")
    call(cached)
    assert len(sim.requests()) == before + 2
    assert one(db, "SELECT count(*) FROM llm_cache WHERE expires_at > now() + interval '6 days'") == 1
    assert cache.purge_expired() == 0  # the refreshed entry is live again


def test_the_ttl_setting_sets_expiry_and_purge_deletes_expired_entries(db, simulator, sim, llm_settings):
    claude = llm_settings(llm_cache_enabled=True, llm_cache_ttl_s=60)
    call(claude, "one")
    call(claude, "two")
    left = one(db, "SELECT max(EXTRACT(EPOCH FROM expires_at - now())) FROM llm_cache")
    assert 50 < left <= 60
    with db.cursor() as cur:
        cur.execute("UPDATE llm_cache SET expires_at = now() - interval '1 second'")
    assert cache.purge_expired() == 2
    assert one(db, "SELECT count(*) FROM llm_cache") == 0


def test_an_answer_that_fails_validation_is_never_stored(db, seeded, worker, sim, cached):
    sim.script("bad_tool_input")  # the first analysis is billed but unusable
    first = enqueue_evaluation(first_doc(seeded), critique_agent(db))
    assert wait_for_status(db, [first])[first] == "COMPLETED"
    assert [r["step"] for r in sorted(job_requests(sim, first), key=lambda r: r["seq"])] == [
        "analysis",
        "analysis",
        "self_critique",
    ]
    assert one(db, "SELECT count(*) FROM llm_cache") == 2  # the good analysis and the critique only
    second = enqueue_evaluation(first_doc(seeded), critique_agent(db))
    assert wait_for_status(db, [second])[second] == "COMPLETED"
    assert job_requests(sim, second) == []
    first_summary = one(db, "SELECT summary FROM evaluation_versions WHERE job_id = %s", first)
    assert one(db, "SELECT summary FROM evaluation_versions WHERE job_id = %s", second) == first_summary


def test_a_bypassing_call_makes_a_request_and_refreshes_the_entry(db, simulator, sim, cached):
    call(cached)
    stored_at = one(db, "SELECT created_at FROM llm_cache")
    before = len(sim.requests())
    assert call(cached).cached
    assert len(sim.requests()) == before  # a hit: no request
    fresh = call(cached, bypass_cache=True)
    assert not fresh.cached and len(sim.requests()) == before + 1
    assert one(db, "SELECT created_at FROM llm_cache") > stored_at


def test_a_job_retried_after_bad_output_bypasses_the_cache(db, seeded, simulator, sim, cached):
    """The retry middleware sets bypass_cache on the message after BAD_LLM_OUTPUT; the job's
    context carries it to every call of that attempt."""
    call(cached)
    before = len(sim.requests())
    job = JobContext(
        job_id="00000000-0000-0000-0000-000000000001",
        message_id="m",
        actor="a",
        queue="q",
        attempt=2,
        bypass_cache=True,
    )
    token = current_job.set(job)
    try:
        assert not call(cached).cached
    finally:
        current_job.reset(token)
    assert len(sim.requests()) == before + 1


@pytest.mark.unit
def test_the_key_covers_what_decides_the_answer_and_ignores_cache_markers():
    base = dict(
        model="m",
        system=[{"type": "text", "text": "s"}],
        messages=[{"role": "user", "content": "p"}],
        tools=[TOOL],
        tool_choice={"type": "tool", "name": "submit"},
        max_tokens=100,
    )
    key = cache.cache_key(cache.canonical_request(**base), "seed")
    for change in (
        dict(model="m2"),
        dict(system="other"),
        dict(messages=[{"role": "user", "content": "q"}]),
        dict(tools=[{**TOOL, "name": "x"}]),
        dict(tool_choice={"type": "any"}),
        dict(max_tokens=101),
        dict(temperature=0.5),
    ):
        assert cache.cache_key(cache.canonical_request(**{**base, **change}), "seed") != key, change
    assert cache.cache_key(cache.canonical_request(**base), "other seed") != key
    marked = dict(
        base,
        system=[{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
        tools=[{**TOOL, "cache_control": {"type": "ephemeral"}}],
    )
    assert cache.cache_key(cache.canonical_request(**marked), "seed") == key
    assert cache.cache_key(cache.canonical_request(**dict(base, system="s")), "seed") == key


class _Recorder(BaseHTTPRequestHandler):
    """A minimal forwarding proxy that records what it was sent (standing in for Helicone)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers["content-length"]))
        self.server.seen.append({"path": self.path, "headers": dict(self.headers)})
        forward = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
        request = urllib.request.Request(self.server.upstream + self.path, data=body, headers=forward, method="POST")
        with urllib.request.urlopen(request) as response:
            data = response.read()
            self.send_response(response.status)
            for k, v in response.headers.items():
                if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(k, v)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture
def proxy(simulator):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.seen, server.upstream = [], simulator.url
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_calls_can_go_through_an_external_caching_proxy_instead(db, simulator, sim, proxy):
    from roastq.llm.client import Claude
    from roastq.settings import get_settings

    claude = Claude(
        get_settings().replace(
            llm_cache_enabled=True,
            llm_proxy_base_url=f"http://127.0.0.1:{proxy.server_address[1]}",
            llm_proxy_headers={
                "Helicone-Auth": "Bearer test",
                "Helicone-Cache-Enabled": "true",
                "Cache-Control": "max-age=604800",
            },
            llm_proxy_seed_header="Helicone-Cache-Seed",
            llm_proxy_bypass_headers={"Helicone-Cache-Enabled": "false"},
        )
    )
    call(claude, cache_seed="agent-version:42")
    call(claude, cache_seed="agent-version:42", bypass_cache=True)
    assert len(proxy.seen) == 2 and len(sim.requests()) == 2  # every call went through the proxy
    first, second = (dict((k.lower(), v) for k, v in s["headers"].items()) for s in proxy.seen)
    assert first["helicone-auth"] == "Bearer test" and first["cache-control"] == "max-age=604800"
    assert first["helicone-cache-seed"].startswith("agent-version:42")
    assert first["helicone-cache-enabled"] == "true" and second["helicone-cache-enabled"] == "false"
    assert one(db, "SELECT count(*) FROM llm_cache") == 0  # the proxy is the cache, not Postgres
