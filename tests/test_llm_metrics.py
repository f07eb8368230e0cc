"""Metrics of the LLM cost layer (docs/llm.md): the response cache and what it saved, resumed steps,
budget holds and the spend and cap the exporter reads from Postgres, rate-limiter waits, snoozes and
gate closures, unknown models. Real jobs through an in-process worker and the simulator, read back
as the exporter serves them."""

from __future__ import annotations

from decimal import Decimal

import pytest
from helpers import one, rows, wait_for_status, wait_until
from promtext import local, value

from roastq.api import enqueue_evaluation

pytestmark = pytest.mark.usefixtures("fast_backoff")  # retries in milliseconds (tests/conftest.py)


def agent(db, *, critique: bool):
    return one(
        db,
        "SELECT agent_id FROM agent_versions WHERE self_critique_instructions IS "
        f"{'NOT NULL' if critique else 'NULL'} ORDER BY name LIMIT 1",
    )


def first_doc(seeded):
    return next(iter(seeded.documents.values()))


def delta(before, after, name, **labels):
    return value(after, name, **labels) - value(before, name, **labels)


def test_cache_hits_and_misses_are_counted_and_the_dollars_saved_are_the_ledgers(db, seeded, worker, sim, llm_settings):
    llm_settings(llm_cache_enabled=True)
    critique = agent(db, critique=True)  # two LLM steps: analysis and self-critique
    before = local()
    first = enqueue_evaluation(first_doc(seeded), critique)
    assert wait_for_status(db, [first])[first] == "COMPLETED"
    middle = local()
    second = enqueue_evaluation(first_doc(seeded), critique)  # the same requests: answered from the cache
    assert wait_for_status(db, [second])[second] == "COMPLETED"
    after = local()

    lookups = "roastq_llm_cache_lookups_total"
    assert [delta(before, middle, lookups, outcome=o) for o in ("miss", "store", "hit", "bypass")] == [2, 2, 0, 0]
    assert [delta(middle, after, lookups, outcome=o) for o in ("miss", "store", "hit", "bypass")] == [0, 0, 2, 0]
    models = {m for (m,) in rows(db, "SELECT DISTINCT model FROM tasks WHERE job_id = %s AND model IS NOT NULL", first)}
    for model in models:  # labelled by the model that answered
        assert delta(middle, after, lookups, outcome="hit", model=model) == one(
            db, "SELECT count(*) FROM tasks WHERE job_id = %s AND model = %s AND cached", second, model
        )

    # Dollars saved: exactly what the ledger records as saved, and what the first job paid.
    saved = one(db, "SELECT sum(saved_usd) FROM llm_spend_daily")
    assert saved > 0
    assert (
        saved
        == one(db, "SELECT sum(saved_usd) FROM tasks WHERE job_id = %s", second)
        == one(db, "SELECT price_usd FROM jobs WHERE id = %s", first)
    )
    assert delta(before, middle, "roastq_llm_cache_saved_dollars_total") == 0  # misses save nothing
    assert delta(middle, after, "roastq_llm_cache_saved_dollars_total") == pytest.approx(float(saved), abs=1e-9)


def test_a_retry_that_resumes_memoised_steps_is_counted(db, seeded, worker, sim):
    sim.script("ok", "server_error")  # the analysis succeeds, the self-critique fails once
    before = local()
    job_id = enqueue_evaluation(first_doc(seeded), agent(db, critique=True))
    assert wait_for_status(db, [job_id])[job_id] == "COMPLETED"
    after = local()
    assert one(db, "SELECT attempts FROM jobs WHERE id = %s", job_id) == 2
    resumed = "roastq_llm_steps_resumed_total"
    assert delta(before, after, resumed, step="analysis") == 1  # not asked of the API again
    assert delta(before, after, resumed, step="highlight_extraction") == 1
    assert delta(before, after, resumed, step="self_critique") == 0  # it failed: it ran again


@pytest.fixture
def exporter_budget(monkeypatch):
    """The exporter reads the cap from the process's settings (the pool's environment), as in a
    deployment; the workers' client gets the same cap through ``llm_settings``."""
    from roastq import settings

    monkeypatch.setenv("LLM_DAILY_BUDGET_USD", "5")
    settings.reload_settings()
    yield
    monkeypatch.delenv("LLM_DAILY_BUDGET_USD")
    settings.reload_settings()


def test_a_budget_hold_is_counted_and_the_exporter_reports_spend_and_cap(
    db, seeded, worker, sim, llm_settings, exporter_budget
):
    model = llm_settings(llm_daily_budget_usd=5.0, llm_budget_recheck_s=0.3).settings.analysis_model
    with db.cursor() as cur:  # today's cap is reached
        cur.execute(
            "INSERT INTO llm_spend_daily (day, model, price_usd, billed_calls) "
            "VALUES ((now() AT TIME ZONE 'UTC')::date, 'm', 5.00, 1)"
        )
    before = local()
    assert value(before, "roastq_llm_budget_spent_dollars") == 5.0
    assert value(before, "roastq_llm_budget_cap_dollars") == 5.0
    job_id = enqueue_evaluation(first_doc(seeded), agent(db, critique=False))
    wait_until(
        lambda: one(db, "SELECT count(*) FROM job_attempts WHERE job_id = %s AND delay_reason = 'budget'", job_id) >= 2,
        what="the job to be held twice",
    )
    assert value(local(), "roastq_llm_budget_holds_total") - value(before, "roastq_llm_budget_holds_total") >= 2

    llm_settings(llm_daily_budget_usd=50.0, llm_budget_recheck_s=0.3)  # the workers' cap is raised
    assert wait_for_status(db, [job_id], timeout=20)[job_id] == "COMPLETED"
    after = local()
    held = one(db, "SELECT count(*) FROM job_attempts WHERE job_id = %s AND delay_reason = 'budget'", job_id)
    assert delta(before, after, "roastq_llm_budget_holds_total", model=model) == held
    assert delta(before, after, "roastq_llm_budget_holds_total") == held
    assert delta(before, after, "roastq_messages_snoozed_total", reason="budget") == held  # waits, not failures
    assert delta(before, after, "roastq_messages_failed_total") == 0
    # The spend gauge is the ledger's today, the job's price included; the cap the exporter's setting.
    price = one(db, "SELECT price_usd FROM jobs WHERE id = %s", job_id)
    assert price > 0
    assert value(after, "roastq_llm_budget_spent_dollars") == pytest.approx(float(Decimal("5.00") + price), abs=1e-9)
    assert value(after, "roastq_llm_budget_cap_dollars") == 5.0


def test_no_cap_is_reported_as_zero(db):
    with db.cursor() as cur:
        cur.execute(
            "INSERT INTO llm_spend_daily (day, model, price_usd, billed_calls) "
            "VALUES ((now() AT TIME ZONE 'UTC')::date, 'm', 1.25, 1), "
            "((now() AT TIME ZONE 'UTC')::date - 1, 'm', 100, 1)"
        )  # yesterday does not count
    now = local()
    assert value(now, "roastq_llm_budget_spent_dollars") == 1.25
    assert value(now, "roastq_llm_budget_cap_dollars") == 0
    assert value(now, "roastq_metrics_postgres_up") == 1


def test_a_wait_for_the_rate_limiter_is_counted(db, seeded, worker, sim, llm_settings):
    model = llm_settings(llm_rpm_limit=60).settings.analysis_model  # a start every 60 / (60 x 0.95) = 1.05 s
    before = local()
    jobs = [enqueue_evaluation(first_doc(seeded), agent(db, critique=False)) for _ in range(2)]
    assert set(wait_for_status(db, jobs).values()) == {"COMPLETED"}
    after = local()
    # The first call starts at once; the second waits in its thread for its slot.
    waits = "roastq_llm_rate_limit_waits_total"
    assert delta(before, after, waits, model=model, reason="requests", outcome="waited") == 1
    assert delta(before, after, waits) == 1
    waited = delta(before, after, "roastq_llm_rate_limit_wait_seconds_total", model=model, outcome="waited")
    assert 0.5 < waited <= 1.06
    assert delta(before, after, "roastq_messages_retried_total") == 0  # a wait is not a retry


def test_a_snooze_for_the_rate_limiter_is_counted(db, seeded, worker, sim, llm_settings):
    claude = llm_settings(llm_rpm_limit=60, llm_rate_max_wait_s=0.3)  # a 1 s wait is too long for the thread
    model = claude.settings.analysis_model
    before = local()
    jobs = [enqueue_evaluation(first_doc(seeded), agent(db, critique=False)) for _ in range(2)]
    assert set(wait_for_status(db, jobs, timeout=20).values()) == {"COMPLETED"}
    after = local()
    snoozes = one(db, "SELECT count(*) FROM job_attempts WHERE delay_reason = 'rate_limit'")
    assert snoozes >= 1
    waits = "roastq_llm_rate_limit_waits_total"
    assert delta(before, after, waits, model=model, outcome="snoozed") == snoozes
    assert (
        delta(before, after, "roastq_llm_rate_limit_wait_seconds_total", model=model, outcome="snoozed")
        >= 0.5 * snoozes
    )
    assert delta(before, after, "roastq_messages_snoozed_total", reason="rate_limit") == snoozes


def test_a_429_closing_the_gate_is_counted(db, seeded, worker, sim):
    sim.script("rate_limit")  # a 429 with retry-after: the model's gate closes for every worker
    before = local()
    job_id = enqueue_evaluation(first_doc(seeded), agent(db, critique=False))
    assert wait_for_status(db, [job_id])[job_id] == "COMPLETED"
    after = local()
    model = sim.requests()[0]["model"]
    assert delta(before, after, "roastq_llm_requests_total", model=model, outcome="RATE_LIMITED") == 1
    assert delta(before, after, "roastq_llm_rate_limit_gate_closed_total", model=model, reason="429") == 1
    assert delta(before, after, "roastq_llm_rate_limit_gate_closed_total") == 1


def test_calls_to_a_model_without_a_price_are_counted(db, broker, simulator, sim, llm_settings):
    """(broker: a worker process has the metrics listeners, set up with the actors.)"""
    claude = llm_settings(llm_cache_enabled=False)
    tool = {
        "name": "submit",
        "description": "Submit.",
        "input_schema": {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]},
    }
    before = local()
    claude.call_tool(
        step="test", system="You answer.", prompt="Say something.", tool=tool, model="claude-unpriced-metrics-test"
    )
    after = local()
    assert delta(before, after, "roastq_llm_unknown_model_calls_total", model="claude-unpriced-metrics-test") == 1
    assert delta(before, after, "roastq_llm_unknown_model_calls_total") == 1


def test_repairs_are_counted_by_kind_and_extra_requests_by_reason(db, seeded, worker, sim, llm_settings):
    # Each job's counts are read on their own: the answers' content (and so what else a cut answer
    # or a corrected one may need) depends on the request, the three causes do not mix.
    before = local()
    sim.script("sloppy:overlong_string")  # one header cut
    repaired = enqueue_evaluation(first_doc(seeded), agent(db, critique=False))
    assert wait_for_status(db, [repaired])[repaired] == "COMPLETED"
    after = local()
    assert delta(before, after, "roastq_llm_answer_repairs_total", step="analysis", kind="string_truncated") == 1
    before = after
    sim.script("bad_tool_input")  # one corrective request
    corrected = enqueue_evaluation(first_doc(seeded), agent(db, critique=False))
    assert wait_for_status(db, [corrected])[corrected] == "COMPLETED"
    after = local()
    assert delta(before, after, "roastq_llm_in_call_retries_total", step="analysis", reason="corrective") == 1
    before = after
    llm_settings(llm_max_tokens=300)  # the answer is cut once: more room
    cut = enqueue_evaluation(first_doc(seeded), agent(db, critique=False))
    assert wait_for_status(db, [cut])[cut] == "COMPLETED"
    after = local()
    assert delta(before, after, "roastq_llm_in_call_retries_total", step="analysis", reason="max_tokens_raised") >= 1
