"""The simulator's Message Batches API, driven by the real anthropic SDK (client.messages.batches)."""

from __future__ import annotations

import time

import anthropic
import pytest

from roastq.simulator.server import SimConfig, Simulator

TOOL = {"name": "t", "input_schema": {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}}
PARAMS = dict(
    model="claude-sonnet-5-5",
    max_tokens=100,
    messages=[{"role": "user", "content": "hi"}],
    tools=[TOOL],
    tool_choice={"type": "tool", "name": "t"},
)


@pytest.fixture
def sdk():
    with Simulator(SimConfig(latency_ms=1, jitter_ms=0)) as sim:
        sim.batches.configure(end_after_s=0.3)
        yield sim, anthropic.Anthropic(base_url=sim.url, api_key="sk-sim", max_retries=0)


def ended(client, batch_id):
    for _ in range(50):
        b = client.messages.batches.retrieve(batch_id)
        if b.processing_status == "ended":
            return b
        time.sleep(0.05)
    raise AssertionError("the batch did not end")


def test_a_batch_is_processing_then_ends_with_counts_and_results(sdk):
    sim, client = sdk
    created = client.messages.batches.create(requests=[{"custom_id": f"r{i}", "params": PARAMS} for i in range(3)])
    assert created.processing_status == "in_progress" and created.request_counts.processing == 3
    assert created.results_url is None and created.ended_at is None
    assert (created.expires_at - created.created_at).total_seconds() == pytest.approx(86400, abs=1)
    b = ended(client, created.id)
    assert b.request_counts.succeeded == 3 and b.request_counts.processing == 0 and b.ended_at is not None
    results = {r.custom_id: r.result for r in client.messages.batches.results(b.id)}
    assert set(results) == {"r0", "r1", "r2"}
    for result in results.values():
        assert result.type == "succeeded"
        assert result.message.content[0].type == "tool_use" and "a" in result.message.content[0].input
        assert result.message.usage.input_tokens > 0


@pytest.mark.parametrize(
    "outcome, error_type, sdk_error",
    [
        ("errored:overloaded", "overloaded_error", anthropic.OverloadedError),
        ("errored:server_error", "api_error", anthropic.InternalServerError),
        ("errored:rate_limit", "rate_limit_error", anthropic.RateLimitError),
        ("errored:invalid_request", "invalid_request_error", anthropic.BadRequestError),
        ("errored:auth", "authentication_error", anthropic.AuthenticationError),
        ("errored:permission", "permission_error", anthropic.PermissionDeniedError),
        ("errored:not_found", "not_found_error", anthropic.NotFoundError),
        ("errored:billing", "billing_error", anthropic.APIStatusError),
        ("errored:timeout", "timeout_error", anthropic.APIStatusError),
    ],
)
def test_every_error_type_comes_as_an_errored_result_that_maps_to_the_sdk_class(sdk, outcome, error_type, sdk_error):
    from roastq.llm.batch import result_error

    sim, client = sdk
    sim.batches.script_outcomes(outcome)
    b = client.messages.batches.create(requests=[{"custom_id": "x", "params": PARAMS}])
    (line,) = list(client.messages.batches.results(ended(client, b.id).id))
    assert line.result.type == "errored" and line.result.error.error.type == error_type
    assert isinstance(result_error(line.result.error.model_dump()), sdk_error)


def test_a_spend_limit_error_maps_to_the_sdk_spend_limit_class(sdk):
    from roastq.llm.batch import result_error

    sim, client = sdk
    sim.batches.script_outcomes("errored:spend_limit")
    b = client.messages.batches.create(requests=[{"custom_id": "x", "params": PARAMS}])
    (line,) = list(client.messages.batches.results(ended(client, b.id).id))
    assert type(result_error(line.result.error.model_dump())).__name__ == "EnforcedSpendLimitReachedError"


def test_expiry_cancel_list_and_delete(sdk):
    sim, client = sdk
    sim.batches.configure(end_after_s=5.0, expire_after_s=0.2)
    expiring = client.messages.batches.create(requests=[{"custom_id": "e", "params": PARAMS}])
    sim.batches.configure(expire_after_s=86400.0)
    cancelled = client.messages.batches.create(requests=[{"custom_id": "c", "params": PARAMS}])
    assert client.messages.batches.cancel(cancelled.id).processing_status == "canceling"
    with pytest.raises(anthropic.BadRequestError):  # still canceling: not deletable yet
        client.messages.batches.delete(cancelled.id)
    assert [r.result.type for r in client.messages.batches.results(ended(client, expiring.id).id)] == ["expired"]
    assert [r.result.type for r in client.messages.batches.results(ended(client, cancelled.id).id)] == ["canceled"]
    assert [b.id for b in client.messages.batches.list(limit=1)] == [cancelled.id, expiring.id]  # pages, newest first
    assert client.messages.batches.delete(cancelled.id).type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(cancelled.id)


def test_bad_custom_ids_are_refused(sdk):
    _, client = sdk
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.create(
            requests=[{"custom_id": "a", "params": PARAMS}, {"custom_id": "a", "params": PARAMS}]
        )
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.create(requests=[{"custom_id": "not ok!", "params": PARAMS}])


def test_endpoint_faults_a_500_and_a_results_stream_cut_halfway(sdk):
    sim, client = sdk
    b = client.messages.batches.create(requests=[{"custom_id": f"r{i}", "params": PARAMS} for i in range(6)])
    ended(client, b.id)
    sim.batches.script_faults("server_error", "cut_results")
    with pytest.raises(anthropic.InternalServerError):
        client.messages.batches.retrieve(b.id)
    got = []
    with pytest.raises(Exception) as cut:
        for line in client.messages.batches.results(b.id):
            got.append(line.custom_id)
    assert "Protocol" in type(cut.value).__name__ and 0 < len(got) < 6
    assert len(list(client.messages.batches.results(b.id))) == 6  # the next read is whole


def test_batch_results_are_billed_at_half_price(sdk):
    sim, client = sdk
    b = client.messages.batches.create(requests=[{"custom_id": "x", "params": PARAMS}])
    list(client.messages.batches.results(ended(client, b.id).id))
    stats = sim.batches.stats()
    assert float(stats["billed_usd"]) == pytest.approx(float(stats["full_price_usd"]) / 2, abs=1e-6)
    assert float(stats["billed_usd"]) > 0
