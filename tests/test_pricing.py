"""The cost ledger: exact dollars from the price table, per step and per job, written with the result."""

import logging
from decimal import Decimal

import pytest
from helpers import one, rows, wait_for_status

from roastq import events
from roastq.api import enqueue_evaluation
from roastq.llm.pricing import UNKNOWN_MODEL_PRICE, Usage, cost_usd

#: Sonnet's rates, written out here rather than read from the table under test ($ per MTok).
SONNET = {"input": Decimal(3), "output": Decimal(15), "cache_write": Decimal("3.75"), "cache_read": Decimal("0.3")}


def dollars(rates, input_tokens=0, output_tokens=0, cache_write=0, cache_read=0) -> Decimal:
    total = (
        input_tokens * rates["input"]
        + output_tokens * rates["output"]
        + cache_write * rates["cache_write"]
        + cache_read * rates["cache_read"]
    ) / Decimal(1_000_000)
    return total.quantize(Decimal("0.000001"))


pytestmark = pytest.mark.usefixtures("fast_backoff")  # retries in milliseconds (tests/conftest.py)


@pytest.mark.parametrize(
    "model,usage,expected",
    [
        ("claude-sonnet-5-5", Usage(1000, 500, 10_000, 2000), Decimal("0.021000")),  # 0.003+0.0075+0.003+0.0075
        ("claude-opus-4-5", Usage(1_000_000, 0, 0, 0), Decimal("5.000000")),
        ("claude-opus-4-5", Usage(0, 1_000_000, 0, 0), Decimal("25.000000")),
        ("claude-haiku-4-5", Usage(0, 0, 1_000_000, 1_000_000), Decimal("1.350000")),  # 0.1 read + 1.25 write
        ("claude-sonnet-4-5", Usage(1, 1, 1, 1), Decimal("0.000022")),  # 0.000022050 rounds half-even
        ("claude-opus-4-1", Usage(2000, 100, 0, 0), Decimal("0.037500")),  # Opus 4.1 kept $15/$75
    ],
)
@pytest.mark.unit
def test_known_models_cost_exact_dollars(model, usage, expected):
    assert cost_usd(model, usage) == expected


@pytest.mark.unit
def test_a_dated_snapshot_is_priced_as_its_alias():
    usage = Usage(123_456, 7_890, 0, 0)
    assert (
        cost_usd("claude-sonnet-4-5-20250929", usage)
        == cost_usd("claude-sonnet-4-5", usage)
        == dollars(SONNET, 123_456, 7_890)
    )


@pytest.mark.unit
def test_an_unknown_model_is_priced_at_the_dearest_rate_with_one_warning(caplog):
    seen = []

    def listener(**e):
        seen.append(e)

    events.subscribe("llm_unknown_model", listener)
    try:
        with caplog.at_level(logging.WARNING, logger="roastq.llm.pricing"):
            first = cost_usd("claude-unreleased-9", Usage(1_000_000, 1_000_000))
            second = cost_usd("claude-unreleased-9", Usage(1_000_000, 1_000_000))
    finally:
        events.unsubscribe("llm_unknown_model", listener)  # only ours: the metrics listen too
    assert first == second == UNKNOWN_MODEL_PRICE.input + UNKNOWN_MODEL_PRICE.output == Decimal(90)
    warnings = [r for r in caplog.records if "claude-unreleased-9" in r.getMessage()]
    assert len(warnings) == 1  # not once per call
    assert [e["model"] for e in seen] == ["claude-unreleased-9"] * 2


@pytest.mark.unit
def test_extra_prices_setting_prices_a_model_without_a_release(monkeypatch):
    from roastq import settings

    monkeypatch.setenv("LLM_EXTRA_PRICES", '{"claude-custom-1": {"input": 2, "output": 8}}')
    settings.reload_settings()
    try:
        # 2 $/MTok input, 8 output, cache write 2.5, cache read 0.2
        assert cost_usd("claude-custom-1", Usage(1_000_000, 500_000, 1_000_000, 1_000_000)) == Decimal("8.700000")
    finally:
        monkeypatch.delenv("LLM_EXTRA_PRICES")
        settings.reload_settings()


def critique_agent(seeded, db):
    return one(
        db, "SELECT agent_id FROM agent_versions WHERE self_critique_instructions IS NOT NULL ORDER BY name LIMIT 1"
    )


def billed_requests(sim, job_id):
    """The simulator's own count of each billed (200) response of a job, by step."""
    out = {}
    for r in sim.requests():
        if r["job_id"] == job_id and r["status"] == 200:
            out.setdefault(r["step"], []).append(r)
    return out


def expected_dollars(requests) -> Decimal:
    return sum(
        (
            dollars(
                SONNET,
                r["input_tokens"],
                r["output_tokens"],
                r["cache_creation_input_tokens"],
                r["cache_read_input_tokens"],
            )
            for r in requests
        ),
        Decimal(0),
    )


def test_tasks_and_job_price_are_exact_dollars_of_the_tokens_billed(db, seeded, worker, sim):
    job_id = enqueue_evaluation(next(iter(seeded.documents.values())), critique_agent(seeded, db))
    assert wait_for_status(db, [job_id])[job_id] == "COMPLETED"
    billed = billed_requests(sim, job_id)
    tasks = {
        name: (inp, out, read, write, price)
        for name, inp, out, read, write, price in rows(
            db,
            "SELECT name, input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, price_usd "
            "FROM tasks WHERE job_id = %s",
            job_id,
        )
    }
    for step in ("analysis", "self_critique"):
        (r,) = billed[step]
        assert tasks[step] == (
            r["input_tokens"],
            r["output_tokens"],
            r["cache_read_input_tokens"],
            r["cache_creation_input_tokens"],
            expected_dollars([r]),
        )
        assert tasks[step][4] > 0
    assert tasks["highlight_extraction"] == (0, 0, 0, 0, Decimal(0))
    assert one(db, "SELECT price_usd FROM jobs WHERE id = %s", job_id) == expected_dollars(
        billed["analysis"] + billed["self_critique"]
    )


def test_a_billed_answer_that_failed_validation_is_in_the_ledger(db, seeded, worker, sim):
    sim.script("ok", "bad_tool_input")  # the analysis is fine; the first self-critique is unusable
    job_id = enqueue_evaluation(next(iter(seeded.documents.values())), critique_agent(seeded, db))
    assert wait_for_status(db, [job_id])[job_id] == "COMPLETED"
    billed = billed_requests(sim, job_id)
    assert [len(billed["analysis"]), len(billed["self_critique"])] == [1, 2]
    critique_price = one(db, "SELECT price_usd FROM tasks WHERE job_id = %s AND name = 'self_critique'", job_id)
    assert critique_price == expected_dollars(billed["self_critique"])  # both answers were paid for
    assert one(db, "SELECT price_usd FROM jobs WHERE id = %s", job_id) == expected_dollars(
        billed["analysis"] + billed["self_critique"]
    )


def test_todays_spend_counts_every_billed_response(db, seeded, worker, sim):
    from roastq.llm import budget
    from roastq.settings import get_settings

    sim.script("bad_tool_input")  # a billed, unusable analysis, then a retry
    job_ids = [enqueue_evaluation(d, critique_agent(seeded, db)) for d in list(seeded.documents.values())[:3]]
    wait_for_status(db, job_ids)
    everything = expected_dollars([r for r in sim.requests() if r["status"] == 200])
    assert (
        one(db, "SELECT sum(price_usd) FROM llm_spend_daily WHERE day = (now() AT TIME ZONE 'UTC')::date") == everything
    )
    assert one(db, "SELECT sum(price_usd) FROM jobs") == everything
    assert budget.status(get_settings()).spent_usd == everything
