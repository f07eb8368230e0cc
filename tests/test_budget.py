"""The budget guard: once the day's spend reaches the cap, new LLM work waits (it is not failed),
and it resumes when the cap is raised or the day ends."""

from decimal import Decimal

import pytest
from helpers import one, rows, wait_for_status, wait_until

from roastq import events
from roastq.api import enqueue_evaluation
from roastq.llm import budget


@pytest.fixture
def budget_events():
    seen = []

    def listener(**e):
        seen.append(e)

    events.subscribe("llm_budget_exhausted", listener)
    yield seen
    events.unsubscribe("llm_budget_exhausted", listener)


def spend(db, usd, day="(now() AT TIME ZONE 'UTC')::date"):
    with db.cursor() as cur:
        cur.execute(
            f"INSERT INTO llm_spend_daily (day, model, price_usd, billed_calls) VALUES ({day}, 'm', %s, 1)",
            (Decimal(usd),),
        )


def a_job(seeded):
    return enqueue_evaluation(next(iter(seeded.documents.values())), next(iter(seeded.agents.values())))


def test_spent_budget_holds_new_work_and_raising_the_cap_resumes_it(
    db, seeded, worker, sim, llm_settings, budget_events
):
    llm_settings(llm_daily_budget_usd=5.0, llm_budget_recheck_s=0.5)
    spend(db, "5.00")  # today's cap is reached
    job_id = a_job(seeded)
    wait_until(
        lambda: one(db, "SELECT count(*) FROM job_attempts WHERE job_id = %s AND outcome = 'snoozed'", job_id) >= 2,
        what="the job to be held twice",
    )
    status, next_at, error_class = one(
        db, "SELECT status, next_attempt_at, error_class FROM jobs WHERE id = %s", job_id
    )
    assert status in ("PENDING", "RUNNING") and error_class in (None, "SNOOZED")
    assert [r for r in sim.requests() if r["job_id"] == job_id] == []  # no LLM call started
    held = rows(
        db,
        "SELECT outcome, error_class, delay_reason FROM job_attempts WHERE job_id = %s AND outcome = 'snoozed'",
        job_id,
    )
    assert set(held) == {("snoozed", "SNOOZED", "budget")}
    assert budget_events and budget_events[0]["spent_usd"] == Decimal(5) and budget_events[0]["cap_usd"] == 5
    assert 0 < budget_events[0]["delay_s"] <= 0.55

    llm_settings(llm_daily_budget_usd=50.0, llm_budget_recheck_s=0.5)  # the cap is raised
    assert wait_for_status(db, [job_id], timeout=20)[job_id] == "COMPLETED"
    outcomes = [o for (o,) in rows(db, "SELECT outcome FROM job_attempts WHERE job_id = %s ORDER BY attempt", job_id)]
    assert outcomes[-1] == "completed" and set(outcomes[:-1]) == {"snoozed"}


def test_yesterdays_spend_does_not_count_against_today(db, seeded, worker, sim, llm_settings):
    llm_settings(llm_daily_budget_usd=5.0)
    spend(db, "500", day="(now() AT TIME ZONE 'UTC')::date - 1")
    job_id = a_job(seeded)
    assert wait_for_status(db, [job_id])[job_id] == "COMPLETED"
    assert one(db, "SELECT outcome FROM job_attempts WHERE job_id = %s", job_id) == "completed"


def test_a_cache_hit_is_served_while_the_budget_is_spent(db, seeded, worker, sim, llm_settings):
    """Held is only new LLM work: what costs nothing goes on."""
    llm_settings(llm_cache_enabled=True, llm_daily_budget_usd=1000.0)
    first = a_job(seeded)
    wait_for_status(db, [first])
    spent = budget.status(_settings()).spent_usd
    llm_settings(llm_cache_enabled=True, llm_daily_budget_usd=float(spent))  # the cap is reached exactly
    second = a_job(seeded)
    assert wait_for_status(db, [second])[second] == "COMPLETED"
    assert one(db, "SELECT count(*) FROM job_attempts WHERE job_id = %s", second) == 1
    assert [r for r in sim.requests() if r["job_id"] == second] == []


def _settings():
    from roastq.settings import get_settings

    return get_settings()


def test_the_spend_the_guard_reads_is_what_the_jobs_cost(db, seeded, worker, sim, llm_settings):
    llm_settings(llm_daily_budget_usd=1000.0)
    job_ids = [a_job(seeded) for _ in range(3)]
    wait_for_status(db, job_ids)
    now = budget.status(_settings().replace(llm_daily_budget_usd=1000.0))
    assert now.spent_usd == one(db, "SELECT sum(price_usd) FROM jobs") > 0
    assert now.cap_usd == 1000 and not now.exhausted


def test_a_held_job_looks_again_no_later_than_the_start_of_the_next_day():
    settings = _settings().replace(llm_budget_recheck_s=600.0)
    assert 600 <= budget.recheck_delay_s(settings, day_left_s=5000) <= 660
    assert 31 <= budget.recheck_delay_s(settings, day_left_s=30) <= 31 * 1.1  # midnight UTC comes first


def test_no_cap_means_no_query_and_no_hold(db):
    budget.check(_settings().replace(llm_daily_budget_usd=0.0), model="m", step="s")  # returns, no Snooze
