"""Logs: one JSON object a line with the job's context, stored with the job, no secrets."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from helpers import one, rows, wait_for_status, wait_until
from loguru import logger
from sentry_receiver import SentryReceiver

from roastq.api import enqueue_evaluation

JOB_FIELDS = ("job_id", "evaluation_id", "message_id", "actor", "queue", "attempt")


def simple_agent(db):
    return one(db, "SELECT agent_id FROM agent_versions WHERE self_critique_instructions IS NULL ORDER BY name LIMIT 1")


def stored_logs(db, job_id):
    return one(
        db,
        "SELECT coalesce(jsonb_agg(x ORDER BY l.id, n), '[]') FROM job_logs l, jsonb_array_elements(l.lines)"
        " WITH ORDINALITY AS e(x, n) WHERE l.job_id = %s",
        job_id,
    )


def run_job_and_wait_for_its_lines(db, seeded) -> str:
    """Enqueue a job, wait for it to complete and for its last line to be stored; its id."""
    job_id = enqueue_evaluation(next(iter(seeded.documents.values())), simple_agent(db))
    assert wait_for_status(db, [job_id])[job_id] == "COMPLETED"
    wait_until(
        lambda: any(line["message"] == "job completed" for line in stored_logs(db, job_id)),
        timeout=5,
        what="the job's last line stored",
    )
    return job_id


def fake_job(job_id: str, *, queue: str = "interactive"):
    """The context of a job attempt (attempt 2), as JobState publishes it."""
    from roastq.jobctx import JobContext

    return JobContext(
        job_id=job_id,
        message_id="m-1",
        actor="evaluate_document",
        queue=queue,
        attempt=2,
        evaluation_id="e-1",
        agent_id="a-1",
    )


@pytest.mark.unit
def test_json_lines_carry_the_job_context_and_are_scrubbed(capsys):
    from observability.logging import _json_sink, setup_logging
    from roastq.jobctx import current_job

    setup_logging()
    sink = logger.add(_json_sink, format="{message}")
    token = current_job.set(fake_job("j-1"))
    try:
        import logging

        logging.getLogger("anthropic.fake").warning("retrying with x-api-key: sk-ant-api03-abcdefghijkl")
        try:
            secret_document = "the document text"  # noqa: F841 - a local a traceback must not show
            raise ValueError("bad postgresql://u:hunter2hunter2@db/x")
        except ValueError:
            logging.getLogger("roastq.test").exception("it broke")
    finally:
        current_job.reset(token)
        logger.remove(sink)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    first = [line for line in lines if line["logger"] == "anthropic.fake"][-1]
    second = [line for line in lines if line["logger"] == "roastq.test"][-1]
    assert first["logger"] == "anthropic.fake" and first["level"] == "WARNING"
    assert {f: first[f] for f in JOB_FIELDS} == {
        "job_id": "j-1",
        "evaluation_id": "e-1",
        "message_id": "m-1",
        "actor": "evaluate_document",
        "queue": "interactive",
        "attempt": 2,
    }
    assert "sk-ant-api03-abcdefghijkl" not in first["message"]
    assert second["exception"]["type"] == "ValueError"
    text = json.dumps(second)
    assert "hunter2hunter2" not in text and "the document text" not in text
    assert "raise ValueError" in second["exception"]["traceback"]  # source lines, not values


def test_a_jobs_log_lines_are_stored_with_it_and_shown_by_roastq_job(db, seeded, fast_backoff, worker, sim, capsys):
    from roastq.cli import main as cli_main

    sim.script("server_error")  # attempt 1 fails (UPSTREAM), attempt 2 completes
    job_id = run_job_and_wait_for_its_lines(db, seeded)
    lines = stored_logs(db, job_id)
    assert all({"time", "level", "logger", "message", "attempt"} <= set(line) for line in lines)
    by_attempt = {a: [line["message"] for line in lines if line["attempt"] == a] for a in (1, 2)}
    assert by_attempt[1][0].startswith("job started: attempt 1")
    assert any(m.startswith("job attempt failed (UPSTREAM)") for m in by_attempt[1])
    assert by_attempt[2][0].startswith("job started: attempt 2") and by_attempt[2][-1] == "job completed"

    capsys.readouterr()
    assert cli_main.main(["job", job_id]) == 0
    out = capsys.readouterr().out
    logs_section = out.split("\nLogs:\n", 1)[1]
    assert "#1  WARNING  job attempt failed (UPSTREAM)" in logs_section
    assert "#2  INFO     job completed" in logs_section
    assert cli_main.main(["job", job_id, "--json"]) == 0
    assert [line["message"] for line in json.loads(capsys.readouterr().out)["logs"]] == [
        line["message"] for line in lines
    ]


@pytest.fixture
def pool_run(db, seeded, sim, tmp_path):
    """A `python -m actors` pool at LOG_LEVEL=DEBUG, with an API key, a Sentry DSN and a database
    password in its environment, running a job that completes, one retried and one that fails."""
    rx = SentryReceiver().start()
    api_key = "sk-ant-api03-" + "Qw7" * 12
    dsn_key = "fedcba9876543210fedcba9876543210"
    url = os.environ["DATABASE_URL"].replace("postgresql://postgres@", "postgresql://postgres:pw-hunter2-pw@")
    env = dict(
        os.environ,
        LOG_FORMAT="json",
        LOG_LEVEL="DEBUG",
        ANTHROPIC_API_KEY=api_key,
        PYTHONUNBUFFERED="1",
        ANTHROPIC_BASE_URL=sim.url,
        SENTRY_DSN=rx.dsn(dsn_key),
        DATABASE_URL=url,
        BACKOFF_SCALE="0.01",
    )
    stderr = open(tmp_path / "pool.log", "wb")
    pool = subprocess.Popen(
        [sys.executable, "-m", "actors", "--processes", "2", "--threads", "2"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        start_new_session=True,
    )
    try:
        agent, doc = simple_agent(db), next(iter(seeded.documents.values()))
        jobs = {}
        for name, faults in (("ok", []), ("retried", ["server_error"]), ("failed", ["invalid_request"])):
            sim.script(*faults)
            jobs[name] = enqueue_evaluation(doc, agent)
            wait_for_status(db, [jobs[name]], timeout=30)
        pool.send_signal(signal.SIGTERM)
        assert pool.wait(30) == 0
    finally:
        if pool.poll() is None:
            pool.kill()
        stderr.close()
        rx.stop()
    # Sentry set up in the main process before dramatiq forks still sends from the workers.
    assert [e["contexts"]["job"]["job_id"] for e in rx.events()] == [jobs["failed"]]
    content = one(db, "SELECT content FROM document_versions WHERE document_id = %s ORDER BY version DESC LIMIT 1", doc)
    return {
        "pid": pool.pid,
        "text": (tmp_path / "pool.log").read_text(),
        "jobs": jobs,
        "document": content,
        "secrets": [api_key, dsn_key, "pw-hunter2-pw"],
    }


def test_every_line_of_a_worker_pool_is_json_with_job_context_and_no_secret(pool_run):
    text = pool_run["text"]
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line parses
    assert len(lines) > 20
    processes = {line["process"] for line in lines}
    assert pool_run["pid"] in processes  # dramatiq's main process logs JSON too
    main = [line for line in lines if line["process"] == pool_run["pid"]]
    assert any(line["logger"] == "dramatiq.MainProcess" and "booting up" in line["message"] for line in main)
    assert len(processes) >= 4  # main, two workers, the metrics exporter
    assert any(line["message"].startswith("metrics exporter listening") for line in lines)
    loggers = {line["logger"] for line in lines}
    assert any(name.startswith("dramatiq.") for name in loggers)  # stdlib logging, intercepted
    assert any(name.startswith("httpx") for name in loggers)
    assert "roastq.jobs" in loggers

    job_ids = set(pool_run["jobs"].values())
    in_jobs = [line for line in lines if line.get("job_id")]
    assert {line["job_id"] for line in in_jobs} == job_ids
    for line in in_jobs:
        assert all(line.get(f) not in (None, "") for f in JOB_FIELDS), line
    http = [line for line in in_jobs if line["logger"].startswith("httpx") and "POST" in line["message"]]
    assert len(http) >= 4  # the SDK's own lines, inside a job, carry the job too
    retried = pool_run["jobs"]["retried"]
    assert {line["attempt"] for line in in_jobs if line["job_id"] == retried} == {1, 2}

    for secret in pool_run["secrets"]:
        assert secret not in text
    doc = pool_run["document"]
    windows = [doc[i : i + 40] for i in range(0, len(doc) - 40, 20)]
    assert not [w for w in windows if w in text], "document text in the logs"


def test_storing_a_jobs_log_lines_never_writes_its_row_again(db, seeded, worker, sim):
    """The lines go to the insert-only ``job_logs``: once the job is COMPLETED its row is not
    updated again (it was: one more row version a job, the whole jsonb array rewritten)."""
    with db.cursor() as cur:
        cur.execute(
            """CREATE TABLE test_job_row_writes (job_id uuid, old_status text, new_status text);
            CREATE FUNCTION test_job_row_write() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN INSERT INTO test_job_row_writes VALUES (NEW.id, OLD.status, NEW.status); RETURN NEW; END $$;
            CREATE TRIGGER test_job_row_write AFTER UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION test_job_row_write();"""
        )
    try:
        job_id = run_job_and_wait_for_its_lines(db, seeded)
        writes = [
            tuple(r)
            for r in rows(db, "SELECT old_status, new_status FROM test_job_row_writes WHERE job_id = %s", job_id)
        ]
        assert ("PENDING", "RUNNING") in writes and ("RUNNING", "COMPLETED") in writes
        assert [w for w in writes if w[0] == "COMPLETED"] == [], writes
    finally:
        with db.cursor() as cur:
            cur.execute(
                "DROP TRIGGER test_job_row_write ON jobs; DROP FUNCTION test_job_row_write();"
                " DROP TABLE test_job_row_writes"
            )


LAST_LINES = """
import logging, sys
sys.path.insert(0, {root!r})
from observability.logging import setup_logging
from middleware.jobs import logger as jobstate_logger
from roastq.jobctx import JobContext, current_job

setup_logging(level="INFO", fmt="json")
current_job.set(JobContext(job_id="j-1", message_id="m-1", actor="evaluate_document", queue="batch",
                           attempt=1, evaluation_id="e-1", agent_id="a-1"))
for n in range({n}):
    jobstate_logger.info("line %d of JobState", n)
    logging.getLogger("some.library").info("line %d of a library", n)
"""


@pytest.mark.unit
@pytest.mark.parametrize("n", [1, 300])
def test_lines_logged_just_before_a_normal_exit_are_all_written(n):
    """The writer thread takes a line off its queue and waits a few milliseconds for more; a
    process that exited then lost that line (the queue was empty to the exit's drain)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for _ in range(3):
        done = subprocess.run(
            [sys.executable, "-c", LAST_LINES.format(root=root, n=n)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
        assert sorted(line["message"] for line in lines) == sorted(
            [f"line {i} of JobState" for i in range(n)] + [f"line {i} of a library" for i in range(n)]
        )


@pytest.fixture
def json_logging():
    """This process's logging set up as a worker's is by default (JSON lines; the suite's is
    LOG_FORMAT=pretty), and set up again as the suite's afterwards."""
    import observability.logging as olog

    olog._done = False
    olog.setup_logging(fmt="json")
    yield olog
    olog.flush_logs()
    olog._done = False
    olog.setup_logging()


@pytest.mark.unit
def test_jobstates_lines_are_the_json_that_loguru_builds_for_the_same_line(json_logging, capsys):
    """JobState's lines skip stdlib's and loguru's records (HotLogger): each is the same JSON
    object, and the same stored job line, as the same line logged through stdlib and loguru."""
    import logging

    from middleware.jobs import logger as jobstate_logger
    from roastq.jobctx import current_job

    olog = json_logging
    assert olog._only_our_sink()  # else this test compares loguru with itself
    token = current_job.set(fake_job("j-cmp", queue="batch"))
    try:
        message = "job started: attempt %d, key sk-ant-api03-abcdefghijkl"
        jobstate_logger.info(message, 2)
        logging.getLogger("roastq.jobs").info(message, 2)
        stored = olog.take_job_lines("j-cmp")
    finally:
        current_job.reset(token)
    olog.flush_logs()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if '"j-cmp"' in line]
    assert len(lines) == 2 and len(stored) == 2
    direct, via_loguru = lines
    assert list(direct) == list(via_loguru)  # the same fields, in the same order
    assert {k: v for k, v in direct.items() if k != "time"} == {k: v for k, v in via_loguru.items() if k != "time"}
    assert "sk-ant-api03-abcdefghijkl" not in direct["message"]
    assert direct["time"][-6:] == via_loguru["time"][-6:]  # the same offset
    assert [{k: v for k, v in s.items() if k != "time"} for s in stored] == [
        {"level": "INFO", "logger": "roastq.jobs", "message": direct["message"], "attempt": 2}
    ] * 2


APP_OWN_LOGGING = """
import logging, sys
sys.path.insert(0, {root!r})
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="APP %(name)s %(levelname)s %(message)s")
import actors  # noqa: F401  an app that sends: its logging stays its own
from middleware.jobs import logger as jobstate_logger
jobstate_logger.info("job started: attempt %d, time limit %d s", 1, 240)
jobstate_logger.warning("job attempt failed (%s): retry in %.1f s", "UPSTREAM", 2.0)
"""


@pytest.mark.unit
def test_jobstates_lines_go_to_the_apps_own_handlers_where_logging_is_the_apps():
    """In a process that did not set up our logging (an app running a worker in-process),
    JobState's lines are stdlib records, handled as the app's handlers say."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "-c", APP_OWN_LOGGING.format(root=root)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.splitlines() == [
        "APP roastq.jobs INFO job started: attempt 1, time limit 240 s",
        "APP roastq.jobs WARNING job attempt failed (UPSTREAM): retry in 2.0 s",
    ]
    assert "{" not in done.stderr  # and no JSON line of ours


@pytest.mark.unit
def test_a_loguru_sink_added_in_a_worker_sees_jobstates_lines_too(json_logging):
    from middleware.jobs import logger as jobstate_logger

    olog = json_logging
    assert olog._only_our_sink()
    seen = []
    sink = logger.add(lambda m: seen.append(m.record), format="{message}")
    try:
        assert not olog._only_our_sink()
        jobstate_logger.info("job completed")
        jobstate_logger.info("job snoozed: runs again in %.1f s (%s)", 1.5, "rate limit")
    finally:
        logger.remove(sink)
    assert [(r["level"].name, r["extra"]["logger_name"], r["message"]) for r in seen] == [
        ("INFO", "roastq.jobs", "job completed"),
        ("INFO", "roastq.jobs", "job snoozed: runs again in 1.5 s (rate limit)"),
    ]
    assert olog._only_our_sink()  # the sink gone: the direct path again


@pytest.mark.unit
def test_a_jobstate_line_whose_arguments_do_not_fit_is_logged_not_raised(json_logging, capsys):
    from middleware.jobs import logger as jobstate_logger

    jobstate_logger.info("job started: attempt %d", "not a number")  # stdlib would print, not raise
    json_logging.flush_logs()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert [line["message"] for line in lines] == ["job started: attempt %d ('not a number',)"]
