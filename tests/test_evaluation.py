"""Evaluations end to end: real workers, real Postgres, the real SDK against the simulator."""

import time

import dramatiq
import pytest
from helpers import one, rows, wait_for_status
from messages import wait_rejected

from roastq.api import enqueue_evaluation
from roastq.jobctx import worker_stale_after_s

# Each test twice: with tidy answers and with the simulator's sloppiness at 0.3 (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("sloppiness")


def agent_with(seeded, db, *, critique: bool):
    for agent_id in seeded.agents.values():
        has = one(db, "SELECT self_critique_instructions IS NOT NULL FROM agent_versions WHERE agent_id = %s", agent_id)
        if has == critique:
            return agent_id
    raise AssertionError("no such sample agent")


def first_doc(seeded):
    return next(iter(seeded.documents.values()))


def test_job_runs_the_three_steps_and_saves_in_one_go(db, seeded, worker, sim):
    agent = agent_with(seeded, db, critique=True)
    job_id = enqueue_evaluation(first_doc(seeded), agent)
    assert wait_for_status(db, [job_id])[job_id] == "COMPLETED"

    status, attempts, ev_id, price, duration = one(
        db, "SELECT status, attempts, evaluation_version_id, price_usd, duration_s FROM jobs WHERE id = %s", job_id
    )
    assert attempts == 1 and ev_id is not None and duration > 0
    summary, analysis, critique, grade = one(
        db, "SELECT summary, analysis, self_critique, grade FROM evaluation_versions WHERE id = %s", ev_id
    )
    assert summary and analysis and critique
    tasks = rows(
        db,
        "SELECT name, input_tokens, output_tokens, price_usd FROM tasks WHERE job_id = %s ORDER BY created_at",
        job_id,
    )
    assert [t[0] for t in tasks] == ["analysis", "highlight_extraction", "self_critique"]
    assert tasks[0][1] > 0 and tasks[0][2] > 0 and tasks[1][1] == 0
    assert price == sum(t[3] for t in tasks) and price > 0
    # The simulator saw exactly the two LLM steps of this job.
    steps = [r["step"] for r in sim.requests() if r["job_id"] == job_id]
    assert sorted(steps) == ["analysis", "self_critique"]

    highlights = rows(
        db,
        "SELECT h.start_offset, h.end_offset, h.quoted_text, h.is_valid, dv.content "
        "FROM highlights h JOIN evaluation_versions ev ON ev.id = h.evaluation_version_id "
        "JOIN document_versions dv ON dv.id = ev.document_version_id WHERE ev.id = %s",
        ev_id,
    )
    assert highlights and one(db, "SELECT count(*) FROM comments WHERE evaluation_version_id = %s", ev_id) == len(
        highlights
    )
    for start, end, quoted, valid, content in highlights:
        if valid:
            assert content[start:end] == quoted  # offsets point at the quoted text
    assert any(h[3] for h in highlights)


def test_agent_without_self_critique_makes_one_llm_call(db, seeded, worker, sim):
    agent = agent_with(seeded, db, critique=False)
    job_id = enqueue_evaluation(first_doc(seeded), agent)
    assert wait_for_status(db, [job_id])[job_id] == "COMPLETED"
    assert [r["step"] for r in sim.requests() if r["job_id"] == job_id] == ["analysis"]
    assert one(db, "SELECT self_critique FROM evaluation_versions WHERE job_id = %s", job_id) is None


def test_grade_only_when_the_agent_gives_grades(db, seeded, worker):
    job_ids = [enqueue_evaluation(first_doc(seeded), a) for a in seeded.agents.values()]
    wait_for_status(db, job_ids)
    for provides, grade in rows(
        db,
        "SELECT av.provides_grades, ev.grade FROM evaluation_versions ev "
        "JOIN agent_versions av ON av.id = ev.agent_version_id",
    ):
        assert (grade is not None) == provides
        if provides:
            assert 0 <= grade <= 100


@pytest.mark.postgres_broker  # RabbitMQ: tests/test_rabbitmq.py
def test_a_job_delivered_twice_yields_one_evaluation_version(db, seeded, worker, broker):
    from actors import evaluate_document

    job_id = enqueue_evaluation(first_doc(seeded), agent_with(seeded, db, critique=False))
    evaluate_document.send(job_id)  # a second message for the same job
    wait_for_status(db, [job_id])
    # Let both deliveries finish. The second may arrive while the first runs: it backs off for
    # the worker's stale time (x 1 to 1.25, issue 13) and is then skipped as COMPLETED.
    deadline = time.monotonic() + worker_stale_after_s() * 1.25 + 10
    while (
        one(db, "SELECT count(*) FROM dramatiq.queue WHERE state IN ('queued', 'consumed')")
        and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert one(db, "SELECT count(*) FROM evaluation_versions WHERE job_id = %s", job_id) == 1
    assert one(db, "SELECT count(*) FROM dramatiq.queue WHERE state = 'done'") == 2
    assert one(db, "SELECT status FROM jobs WHERE id = %s", job_id) == "COMPLETED"


def test_document_without_content_fails_once_with_a_clear_reason(db, seeded, worker, sim):
    doc = first_doc(seeded)
    with db.cursor() as cur:
        cur.execute(
            "INSERT INTO document_versions (document_id, version, title, content) VALUES (%s, 99, 'Empty', '   ')",
            (doc,),
        )
    job_id = enqueue_evaluation(doc, next(iter(seeded.agents.values())))
    assert wait_for_status(db, [job_id])[job_id] == "FAILED"
    error_class, error, attempts = one(db, "SELECT error_class, error, attempts FROM jobs WHERE id = %s", job_id)
    assert (error_class, attempts) == ("INPUT", 1)
    assert "no content" in error
    assert [r for r in sim.requests() if r["job_id"] == job_id] == []  # Claude was never called
    wait_rejected(db, one(db, "SELECT message_id FROM jobs WHERE id = %s", job_id))


@pytest.mark.parametrize(
    "args,kwargs",
    [
        (["00000000-0000-0000-0000-000000000000"], {}),  # unknown job
        (["not-a-uuid"], {}),  # malformed
        ([], {}),  # missing
        ([1, 2], {}),  # not what the actor takes
        ([], {"document": "x"}),
    ],
)
def test_bad_messages_are_rejected_and_the_worker_keeps_running(db, seeded, worker, broker, caplog, args, kwargs):
    bad = dramatiq.Message(
        queue_name="interactive", actor_name="evaluate_document", args=tuple(args), kwargs=kwargs, options={}
    )
    broker.enqueue(bad)
    wait_rejected(db, bad.message_id)
    assert one(db, "SELECT count(*) FROM jobs") == 0  # nothing else touched
    job_id = enqueue_evaluation(first_doc(seeded), next(iter(seeded.agents.values())))
    assert wait_for_status(db, [job_id])[job_id] == "COMPLETED"


def test_interactive_job_starts_before_a_batch_backlog_drains(db, seeded, worker, sim):
    sim.configure(latency_ms=200, jitter_ms=0)  # 100 batch jobs on 4 threads: about 5 s of work
    doc, agent = first_doc(seeded), agent_with(seeded, db, critique=False)
    batch = [enqueue_evaluation(doc, agent, priority="batch") for _ in range(100)]
    time.sleep(0.5)  # the backlog is being worked on
    interactive = enqueue_evaluation(doc, agent, priority="interactive")
    wait_for_status(db, [interactive], timeout=30)
    created, started = one(db, "SELECT created_at, started_at FROM jobs WHERE id = %s", interactive)
    batch_after = one(
        db,
        "SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[]) AND (started_at IS NULL OR started_at > %s)",
        batch,
        started,
    )
    assert batch_after >= 40, f"only {batch_after} of 100 batch jobs started after the interactive one"
    assert (started - created).total_seconds() < 1.0  # it waited for a free thread, not for the backlog
    wait_for_status(db, batch, timeout=60)


def test_an_over_long_highlight_header_does_not_fail_the_evaluation(db, seeded, worker, sim):
    """A model that ignores maxLength (one highlight header over 200 characters) is an answer
    to repair, not a job to fail: the header is cut at a word boundary and the repair recorded."""
    sim.script("sloppy:overlong_string")
    job_id = enqueue_evaluation(first_doc(seeded), agent_with(seeded, db, critique=False))
    assert wait_for_status(db, [job_id])[job_id] == "COMPLETED"
    assert one(db, "SELECT attempts FROM jobs WHERE id = %s", job_id) == 1
    [request] = [r for r in sim.requests() if r["job_id"] == job_id]
    assert request["sloppy"] == ["overlong_string"]  # the answer really carried the violation
    headers = [
        h
        for (h,) in rows(
            db,
            "SELECT header FROM comments c JOIN evaluation_versions ev "
            "ON ev.id = c.evaluation_version_id WHERE ev.job_id = %s",
            job_id,
        )
    ]
    assert headers and all(len(h) <= 200 for h in headers if h)
    repairs = one(db, "SELECT repairs FROM evaluation_versions WHERE job_id = %s", job_id)
    assert [r["kind"] for r in repairs] == ["string_truncated"]
    assert repairs[0]["path"].startswith("highlights/") and repairs[0]["path"].endswith("/header")


def _repair_kinds(db, job_id):
    return {r["kind"] for r in one(db, "SELECT repairs FROM evaluation_versions WHERE job_id = %s", job_id)}


def test_loose_answers_of_a_non_strict_tool_are_repaired(db, seeded, worker, sim, llm_settings):
    """Without strict tools a model may also send numbers as strings, unknown enum values and
    extra properties: all repaired, none a failure."""
    llm_settings(strict_tools=False)
    sim.script("sloppy:string_number,unknown_enum,extra_property")
    job_id = enqueue_evaluation(first_doc(seeded), agent_with(seeded, db, critique=False))
    assert wait_for_status(db, [job_id])[job_id] == "COMPLETED"
    [request] = [r for r in sim.requests() if r["job_id"] == job_id]
    assert not request["strict"] and request["sloppy"] == ["string_number", "unknown_enum", "extra_property"]
    assert _repair_kinds(db, job_id) >= {"number_coerced", "enum_defaulted", "extra_ignored"}
    levels = [
        lv
        for (lv,) in rows(
            db,
            "SELECT level FROM comments c JOIN evaluation_versions ev "
            "ON ev.id = c.evaluation_version_id WHERE ev.job_id = %s",
            job_id,
        )
    ]
    assert set(levels) <= {"error", "warning", "info", "success"}


def test_tools_are_strict_by_default(db, seeded, worker, sim, llm_settings):
    job_id = enqueue_evaluation(first_doc(seeded), agent_with(seeded, db, critique=True))
    assert wait_for_status(db, [job_id])[job_id] == "COMPLETED"
    assert {r["strict"] for r in sim.requests() if r["job_id"] == job_id} == {True}  # the simulator took them
    llm_settings(strict_tools=False)
    job_id = enqueue_evaluation(first_doc(seeded), agent_with(seeded, db, critique=True))
    assert wait_for_status(db, [job_id])[job_id] == "COMPLETED"
    assert {r["strict"] for r in sim.requests() if r["job_id"] == job_id} == {False}


def test_a_quote_found_nowhere_is_saved_as_an_invalid_highlight(db, seeded, worker, sim):
    sim.script("sloppy:absent_quote")
    job_id = enqueue_evaluation(first_doc(seeded), agent_with(seeded, db, critique=False))
    assert wait_for_status(db, [job_id])[job_id] == "COMPLETED"
    invalid = rows(
        db,
        "SELECT h.quoted_text, h.error, h.start_offset FROM highlights h JOIN evaluation_versions ev "
        "ON ev.id = h.evaluation_version_id WHERE ev.job_id = %s AND NOT h.is_valid",
        job_id,
    )
    assert [(q.startswith("As the author writes"), e, o) for q, e, o in invalid] == [
        (True, "quote not found in document", None)
    ]


def _long_document(db, seeded, words: int) -> str:
    doc = first_doc(seeded)
    text = "\n".join(
        f"Paragraph {i}: the estimate relies on the base rate of the sample size." for i in range(words // 12)
    )
    with db.cursor() as cur:
        cur.execute(
            "INSERT INTO document_versions (document_id, version, title, content) VALUES (%s, 98, 'Long', %s)",
            (doc, text),
        )
    return doc


def test_a_document_too_long_for_the_model_fails_at_once_as_input(db, seeded, worker, sim):
    doc = _long_document(db, seeded, 200_000)  # about 280k tokens: the context window is 200k
    job_id = enqueue_evaluation(doc, agent_with(seeded, db, critique=False))
    assert wait_for_status(db, [job_id], timeout=60)[job_id] == "FAILED"
    error_class, error, attempts = one(db, "SELECT error_class, error, attempts FROM jobs WHERE id = %s", job_id)
    assert (error_class, attempts) == ("INPUT", 1)
    assert "too long for claude-sonnet-5-5" in error and "context window 200000" in error
    assert [r for r in sim.requests() if r["job_id"] == job_id] == []  # no paid call
    assert sim.stats()["count_tokens"] == 1  # the free count


def test_a_long_document_that_fits_is_counted_then_evaluated(db, seeded, worker, sim):
    doc = _long_document(db, seeded, 40_000)  # more bytes than the window has tokens, fewer tokens
    job_id = enqueue_evaluation(doc, agent_with(seeded, db, critique=False))
    assert wait_for_status(db, [job_id], timeout=60)[job_id] == "COMPLETED"
    assert sim.stats()["count_tokens"] == 1
    other = list(seeded.documents.values())[1]
    short = enqueue_evaluation(other, agent_with(seeded, db, critique=False))
    wait_for_status(db, [short])
    assert sim.stats()["count_tokens"] == 1  # a prompt that certainly fits is not counted


def _result(summary):
    from roastq.evaluation import pipeline

    return pipeline.EvaluationResult(summary=summary, analysis="a", grade=50, highlights=[], self_critique=None)


def test_a_result_for_a_job_already_finished_is_discarded_and_the_first_stands(db, seeded):
    """The result's transaction learns at its end (the guarded ``complete``) that a duplicate
    delivery's result came first: everything it wrote is rolled back, and its session is usable."""
    from roastq import db as roastq_db
    from roastq.evaluation import pipeline

    job_id = enqueue_evaluation(first_doc(seeded), agent_with(seeded, db, critique=False))
    inputs = pipeline.load_inputs(job_id)
    assert pipeline.save(inputs, _result("first")) is not None
    assert pipeline.save(inputs, _result("second")) is None
    assert rows(db, "SELECT summary, version FROM evaluation_versions WHERE job_id = %s", job_id) == [("first", 1)]
    assert one(db, "SELECT status FROM jobs WHERE id = %s", job_id) == "COMPLETED"
    for _ in range(roastq_db.pool().maxconn + 1):  # every pooled session still works
        assert roastq_db.execute_one("SELECT 1 AS n")["n"] == 1


def test_two_results_of_one_job_at_once_land_one_after_the_other(db, seeded, database_url):
    """Two deliveries' results of one job reach their commit together: the job row's lock, taken
    by the guarded ``complete``, orders them, and the second finds the job finished and is
    discarded (one evaluation version, one None)."""
    import threading

    import psycopg2

    from roastq.evaluation import pipeline

    job_id = enqueue_evaluation(first_doc(seeded), agent_with(seeded, db, critique=False))
    inputs = pipeline.load_inputs(job_id)
    holder = psycopg2.connect(database_url)
    with holder.cursor() as cur:  # hold the job row: both results wait at their complete
        cur.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (job_id,))
    outcomes = []
    threads = [
        threading.Thread(target=lambda s=s: outcomes.append(pipeline.save(inputs, _result(s)))) for s in ("a", "b")
    ]
    for t in threads:
        t.start()
    wait_until_waiting = time.monotonic() + 10
    while one(db, "SELECT count(*) FROM pg_locks WHERE NOT granted AND locktype IN ('transactionid', 'tuple')") < 2:
        assert time.monotonic() < wait_until_waiting, "the two results never waited on the job row"
        time.sleep(0.02)
    holder.commit()
    for t in threads:
        t.join(10)
    holder.close()
    assert sorted(o is None for o in outcomes) == [False, True], outcomes
    assert one(db, "SELECT count(*) FROM evaluation_versions WHERE job_id = %s", job_id) == 1
    assert one(db, "SELECT evaluation_version_id IS NOT NULL FROM jobs WHERE id = %s", job_id)
