"""Step memoisation: each step's output is kept per job, and a retry resumes at the step that failed."""

import pytest
from helpers import one, rows, wait_for_status

from roastq.api import enqueue_evaluation

pytestmark = pytest.mark.usefixtures("fast_backoff")  # retries in milliseconds (tests/conftest.py)


def critique_job(seeded, db):
    agent = one(
        db, "SELECT agent_id FROM agent_versions WHERE self_critique_instructions IS NOT NULL ORDER BY name LIMIT 1"
    )
    return enqueue_evaluation(next(iter(seeded.documents.values())), agent)


def requests_of(sim, job_id):
    return [
        (r["step"], r["attempt"], r["status"])
        for r in sorted(sim.requests(), key=lambda r: r["seq"])
        if r["job_id"] == job_id
    ]


def test_a_fault_in_self_critique_retries_self_critique_only(db, seeded, worker, sim):
    sim.script("ok", "server_error")  # a job's first request is its analysis; the second fails
    job_id = critique_job(seeded, db)
    assert wait_for_status(db, [job_id])[job_id] == "COMPLETED"
    # On the retry the simulator received no second analysis request.
    assert requests_of(sim, job_id) == [
        ("analysis", "1", 200),
        ("self_critique", "1", 500),
        ("self_critique", "2", 200),
    ]
    assert [
        (a, o)
        for a, o in rows(db, "SELECT attempt, outcome FROM job_attempts WHERE job_id = %s ORDER BY attempt", job_id)
    ] == [(1, "retried"), (2, "completed")]
    # Each step's output is stored with the attempt that produced it.
    assert rows(
        db, "SELECT step, attempt FROM job_steps WHERE job_id = %s AND output IS NOT NULL ORDER BY step", job_id
    ) == [("analysis", 1), ("highlight_extraction", None), ("self_critique", 2)]
    # The evaluation is the first attempt's analysis and highlights, completed by the second.
    summary = one(db, "SELECT summary FROM evaluation_versions WHERE job_id = %s", job_id)
    assert summary == one(
        db, "SELECT output->>'summary' FROM job_steps WHERE job_id = %s AND step = 'analysis'", job_id
    )
    stored = one(
        db,
        "SELECT jsonb_array_length(output->'highlights') FROM job_steps "
        "WHERE job_id = %s AND step = 'highlight_extraction'",
        job_id,
    )
    assert (
        one(
            db,
            "SELECT count(*) FROM highlights h JOIN evaluation_versions ev ON ev.id = h.evaluation_version_id "
            "WHERE ev.job_id = %s",
            job_id,
        )
        == stored
    )


def test_a_network_fault_in_self_critique_does_not_repay_the_analysis(db, seeded, worker, sim):
    sim.script("ok", "drop")
    job_id = critique_job(seeded, db)
    assert wait_for_status(db, [job_id])[job_id] == "COMPLETED"
    steps = [s for s, _, _ in requests_of(sim, job_id)]
    assert steps == ["analysis", "self_critique", "self_critique"]
    # The ledger counts the analysis once: the memoised step was paid in the first attempt.
    analysis_tokens = [
        r["input_tokens"] + r["cache_creation_input_tokens"] + r["cache_read_input_tokens"]
        for r in sim.requests()
        if r["job_id"] == job_id and r["step"] == "analysis"
    ]
    assert one(
        db,
        "SELECT input_tokens + cache_write_tokens + cache_read_tokens FROM tasks "
        "WHERE job_id = %s AND name = 'analysis'",
        job_id,
    ) == sum(analysis_tokens)


def test_a_fault_in_the_analysis_reruns_it_then_goes_on(db, seeded, worker, sim):
    sim.script("overloaded")
    job_id = critique_job(seeded, db)
    assert wait_for_status(db, [job_id])[job_id] == "COMPLETED"
    assert [(s, st) for s, _, st in requests_of(sim, job_id)] == [
        ("analysis", 529),
        ("analysis", 200),
        ("self_critique", 200),
    ]


def test_memoised_steps_belong_to_their_job(db, seeded, worker, sim):
    """Two jobs of the same document and agent: each makes its own calls (memoisation is per job;
    sharing across jobs is the response cache's business, off here)."""
    first, second = critique_job(seeded, db), critique_job(seeded, db)
    wait_for_status(db, [first, second])
    for job_id in (first, second):
        assert sorted(s for s, _, _ in requests_of(sim, job_id)) == ["analysis", "self_critique"]
    assert one(db, "SELECT count(DISTINCT job_id) FROM job_steps") == 2
