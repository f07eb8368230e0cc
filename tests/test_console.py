"""The console's pages and actions through Flask's test client: a real Postgres, real workers and
the real SDK against the simulator for the jobs they show (the browser tests are in
test_console_browser.py). Run with both brokers (the RabbitMQ pass too, Makefile)."""

from __future__ import annotations

import html
import re
import subprocess
import sys

import pytest
from helpers import one, rows, running_worker, wait_for_status

from roastq.api import cancel_job, enqueue_evaluation, enqueue_evaluations

pytestmark = pytest.mark.usefixtures("fast_backoff")

TOKEN = "console-test-token-7f3a"


def make_client(**settings_changes):
    from roastq.console.app import create_app
    from roastq.settings import get_settings

    app = create_app(get_settings().replace(**settings_changes))
    app.testing = True
    return app.test_client()


def with_csrf(client) -> str:
    with client.session_transaction() as session:
        session["csrf"] = "csrf-for-tests"
    return "csrf-for-tests"


def agent_with_critique(db):
    return one(
        db, "SELECT agent_id FROM agent_versions WHERE self_critique_instructions IS NOT NULL ORDER BY name LIMIT 1"
    )


@pytest.fixture
def states(db, seeded, sim, broker):
    """Jobs in every finished state and one PENDING: run by a real worker, then the worker stops."""
    doc = next(iter(seeded.documents.values()))
    agent = agent_with_critique(db)
    with running_worker(broker, threads=2):
        sim.script("invalid_request")  # the next request: a permanent failure
        failed = enqueue_evaluation(doc, agent)
        assert wait_for_status(db, [failed])[failed] == "FAILED"
        completed = enqueue_evaluation(doc, agent)
        assert wait_for_status(db, [completed])[completed] == "COMPLETED"
    cancelled = enqueue_evaluation(doc, agent)
    assert cancel_job(cancelled, reason="not needed") == "CANCELLED"
    pending = enqueue_evaluation(doc, agent, priority="batch")
    return {"FAILED": failed, "COMPLETED": completed, "CANCELLED": cancelled, "PENDING": pending}


def test_every_page_renders_with_jobs_in_every_state(states):
    from roastq.settings import get_settings

    client = make_client()
    for path in ("/", "/jobs", "/dead", "/costs", *(f"/jobs/{job_id}" for job_id in states.values())):
        response = client.get(path)
        assert response.status_code == 200, path
        assert b"<html" in response.data
    overview = client.get("/").get_data(as_text=True)
    assert "COMPLETED 1" in overview and "FAILED 1" in overview and "PENDING 1" in overview
    if not get_settings().rabbitmq:  # the PENDING batch job's message, queued in Postgres
        assert re.search(r"<td>batch</td><td>1</td>", overview)
    assert ("rabbitmq broker" if get_settings().rabbitmq else "postgres broker") in overview
    jobs = client.get("/jobs").get_data(as_text=True)
    for job_id in states.values():
        assert job_id[:8] in jobs
    failed = client.get(f"/jobs/{states['FAILED']}").get_data(as_text=True)
    assert "INVALID_REQUEST" in failed and 'id="retry"' in failed
    assert 'id="cancel"' in client.get(f"/jobs/{states['PENDING']}").get_data(as_text=True)
    assert client.get("/jobs/not-a-job").status_code == 404
    assert client.get("/jobs/00000000-0000-0000-0000-000000000000").status_code == 404


def test_job_page_marks_each_located_highlight_on_the_document(db, states):
    job_id = states["COMPLETED"]
    page = make_client().get(f"/jobs/{job_id}").get_data(as_text=True)
    ev_id, grade, summary = one(db, "SELECT id, grade, summary FROM evaluation_versions WHERE job_id = %s", job_id)
    assert html.escape(summary, quote=False) in page
    if grade is not None:
        assert f"<strong>{grade}</strong>/100" in page
    valid = rows(
        db,
        "SELECT quoted_text, start_offset, end_offset FROM highlights "
        "WHERE evaluation_version_id = %s AND is_valid ORDER BY start_offset",
        ev_id,
    )
    assert valid, "the simulator's evaluation has located highlights"
    # Each located highlight is marked where it is, except one that overlaps a highlight marked
    # before it: that one is listed beside the document, saying so.
    expected, overlapping, end = [], [], 0
    for quoted, start, stop in valid:
        (overlapping if start < end else expected).append(quoted)
        end = max(end, stop) if start >= end else end
    marked = re.findall(r'<mark id="h-(\d+)" data-highlight="\d+" class="\w+"><sup>\d+</sup>(.*?)</mark>', page, re.S)
    assert [html.unescape(text) for _, text in marked] == expected
    assert page.count("overlaps a highlight marked before it") == len(overlapping)
    # The page shows the document's own text around them (what the offsets point into).
    content = one(
        db,
        "SELECT dv.content FROM document_versions dv JOIN jobs j ON j.document_version_id = dv.id WHERE j.id = %s",
        job_id,
    )
    article = re.search(r'<article class="document" id="document">(.*?)</article>', page, re.S).group(1)
    plain = html.unescape(re.sub(r"<sup>\d+</sup>", "", re.sub(r"</?mark[^>]*>", "", article)))
    assert plain == content


def test_invalid_highlights_are_listed_with_their_reason(db, states):
    ev_id = one(db, "SELECT id FROM evaluation_versions WHERE job_id = %s", states["COMPLETED"])
    with db.cursor() as cur:
        cur.execute(
            "INSERT INTO highlights (evaluation_version_id, quoted_text, is_valid, error) "
            "VALUES (%s, 'a sentence the essay never had', false, 'quote not found in the document')",
            (ev_id,),
        )
    page = make_client().get(f"/jobs/{states['COMPLETED']}").get_data(as_text=True)
    table = re.search(r'<table id="invalid-highlights">(.*?)</table>', page, re.S).group(1)
    assert "a sentence the essay never had" in table and "quote not found in the document" in table


def test_jobs_filters_search_and_keyset_paging(db, seeded, states):
    doc = next(iter(seeded.documents.values()))
    agent = agent_with_critique(db)
    extra = enqueue_evaluations([(doc, agent)] * 120)  # PENDING, all created in the same transaction
    client = make_client()
    seen, url = [], "/jobs"
    while url:
        page = client.get(url).get_data(as_text=True)
        seen += re.findall(r'<input type="checkbox" name="job_id" value="([0-9a-f-]{36})"', page)
        found = re.search(r'<a href="([^"]+)" id="next-page">', page)
        url = html.unescape(found.group(1)) if found else None
    assert len(seen) == len(set(seen)) == 124  # every job once, over three pages
    assert set(extra) | set(states.values()) == set(seen)
    failed = client.get("/jobs?status=FAILED").get_data(as_text=True)
    assert re.findall(r'name="job_id" value="([0-9a-f-]{36})"', failed) == [states["FAILED"]]
    by_class = client.get("/jobs?class=invalid_request").get_data(as_text=True)
    assert re.findall(r'name="job_id" value="([0-9a-f-]{36})"', by_class) == [states["FAILED"]]
    title = one(db, "SELECT title FROM document_versions WHERE document_id = %s", doc)
    word = title.split()[-1].lower()
    other = client.get("/jobs?q=no-title-has-this").get_data(as_text=True)
    assert "No job matches." in other
    assert len(re.findall(r'name="job_id"', client.get(f"/jobs?q={word}&status=FAILED").get_data(as_text=True))) == 1
    assert client.get("/jobs?status=BOGUS").status_code == 400
    assert client.get("/jobs?since=soon").status_code == 400


def test_cli_jobs_search_over_the_title(db, seeded, states, capsys):
    import json

    from roastq.cli.main import main

    other = list(seeded.documents.values())[1]
    extra = enqueue_evaluation(other, agent_with_critique(db))
    title = one(db, "SELECT title FROM document_versions WHERE document_id = %s", other)
    assert main(["jobs", "--search", title.split()[-1].upper(), "--json"]) == 0
    assert [j["id"] for j in json.loads(capsys.readouterr().out)] == [extra]


def test_off_loopback_the_console_refuses_to_start_without_credentials(database_url):
    from roastq.console.server import ConsoleRefused, check_exposure
    from roastq.settings import get_settings

    with pytest.raises(ConsoleRefused):
        check_exposure("0.0.0.0", get_settings())
    check_exposure("127.0.0.1", get_settings())
    check_exposure("0.0.0.0", get_settings().replace(console_token=TOKEN))
    run = subprocess.run(
        [sys.executable, "-m", "roastq.cli", "console", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env_without("CONSOLE_TOKEN", "CONSOLE_BASIC_AUTH"),
    )
    assert run.returncode == 2 and "refusing to serve the console on 0.0.0.0" in run.stderr


def _env_without(*names):
    import os

    return {k: v for k, v in os.environ.items() if k not in names}


def test_with_a_token_every_request_needs_it(states):
    client = make_client(console_token=TOKEN)
    for path in ("/", "/jobs", f"/jobs/{states['COMPLETED']}", "/dead", "/costs"):
        response = client.get(path)
        assert response.status_code == 302 and "/login" in response.headers["Location"], path
        assert client.get(path, headers={"X-Console-Partial": "1"}).status_code == 401
        assert client.get(path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert client.get(path, headers={"Authorization": "Bearer wrong"}).status_code == 302
    assert client.post("/pause", data={"csrf": "x"}).status_code == 401
    assert one_state(states) is None  # the refused POST paused nothing
    assert client.post("/login", data={"token": "wrong"}).status_code == 401
    login = client.post("/login?next=/dead", data={"token": TOKEN})
    assert login.status_code == 302 and login.headers["Location"].endswith("/dead")
    cookie = client.get_cookie("roastq_console")
    assert cookie is not None and TOKEN not in cookie.value  # a keyed hash, not the token
    assert client.get("/").status_code == 200
    assert TOKEN not in client.get("/").get_data(as_text=True)


def one_state(states):
    from roastq.ops import pause

    return pause.state()


def test_basic_auth(states):
    import base64

    client = make_client(console_basic_auth="ops:s3cret-pw")
    refused = client.get("/")
    assert refused.status_code == 401 and "Basic" in refused.headers["WWW-Authenticate"]
    bad = base64.b64encode(b"ops:nope").decode()
    assert client.get("/", headers={"Authorization": f"Basic {bad}"}).status_code == 401
    good = base64.b64encode(b"ops:s3cret-pw").decode()
    page = client.get("/", headers={"Authorization": f"Basic {good}"})
    assert page.status_code == 200 and b"s3cret-pw" not in page.data


def test_actions_need_the_csrf_token_and_are_logged_with_who(db, states, caplog):
    from roastq.ops import pause

    client = make_client()
    assert client.post("/pause", data={"reason": "incident"}).status_code == 400
    assert client.post("/pause", data={"reason": "incident", "csrf": "forged"}).status_code == 400
    assert pause.state() is None
    csrf = with_csrf(client)
    with caplog.at_level("INFO", logger="roastq.console"):
        assert client.post("/pause", data={"reason": "incident", "csrf": csrf}).status_code == 302
    state = pause.state()
    assert state["reason"] == "incident" and state["by"].startswith("local@")
    assert any("console action pause by local@" in r.getMessage() for r in caplog.records)
    assert "PAUSED" in client.get("/").get_data(as_text=True)
    assert client.post("/resume", data={"csrf": csrf}).status_code == 302
    assert pause.state() is None
    # Cancel a pending job; its reason says who.
    assert client.post(f"/jobs/{states['PENDING']}/cancel", data={"csrf": csrf}).status_code == 302
    status, reason = one(db, "SELECT status, cancel_reason FROM jobs WHERE id = %s", states["PENDING"])
    assert status == "CANCELLED" and reason.startswith("cancelled by local@")


def test_retry_from_the_job_page_runs_a_linked_rerun(db, states, broker, sim):
    client = make_client()
    csrf = with_csrf(client)
    response = client.post(f"/jobs/{states['FAILED']}/retry", data={"csrf": csrf})
    assert response.status_code == 302
    new_id = response.headers["Location"].rsplit("/", 1)[1]
    # A job that is not finished cannot be rerun: a message, not an error page.
    flashed = client.post(f"/jobs/{new_id}/retry", data={"csrf": csrf}, follow_redirects=True)
    assert "only a finished job can be rerun" in flashed.get_data(as_text=True)
    assert str(one(db, "SELECT original_job_id FROM jobs WHERE id = %s", new_id)) == states["FAILED"]
    with running_worker(broker, threads=2):
        assert wait_for_status(db, [new_id])[new_id] == "COMPLETED"
    page = client.get(f"/jobs/{states['FAILED']}").get_data(as_text=True)
    reruns = re.search(r'<td id="reruns">(.*?)</td>', page, re.S).group(1)
    assert new_id[:8] in reruns and "COMPLETED" in reruns


def test_bulk_actions_ask_for_confirmation_first(db, states):
    client = make_client()
    csrf = with_csrf(client)
    ids = [states["FAILED"], states["CANCELLED"]]
    ask = client.post("/bulk", data={"csrf": csrf, "action": "retry", "job_id": ids})
    assert ask.status_code == 200 and "Retry 2 job(s)?" in ask.get_data(as_text=True)
    assert one(db, "SELECT count(*) FROM jobs WHERE original_job_id IS NOT NULL") == 0
    done = client.post("/bulk", data={"csrf": csrf, "action": "retry", "job_id": ids, "confirmed": "1"})
    assert done.status_code == 302
    assert sorted(
        str(r[0]) for r in rows(db, "SELECT original_job_id FROM jobs WHERE original_job_id IS NOT NULL")
    ) == sorted(ids)


def test_dead_letters_grouped_and_a_group_retried(db, states):
    client = make_client()
    page = client.get("/dead").get_data(as_text=True)
    group = re.search(r'<table id="dead-groups">(.*?)</table>', page, re.S).group(1)
    assert "INVALID_REQUEST" in group and "<td>1</td>" in group
    agent = one(
        db,
        "SELECT av.agent_id FROM jobs j JOIN agent_versions av ON av.id = j.agent_version_id WHERE j.id = %s",
        states["FAILED"],
    )
    csrf = with_csrf(client)
    form = {"csrf": csrf, "action": "retry", "group": "1", "error_class": "INVALID_REQUEST", "agent_id": str(agent)}
    ask = client.post("/bulk", data=form).get_data(as_text=True)
    assert states["FAILED"] in ask and "Retry 1 job(s)?" in ask
    client.post("/bulk", data=dict(form, confirmed="1", job_id=[states["FAILED"]]))
    assert str(one(db, "SELECT original_job_id FROM jobs WHERE original_job_id IS NOT NULL")) == states["FAILED"]
    assert "No dead letter." in client.get("/dead").get_data(as_text=True)  # rerun: no longer waiting


def test_read_only_mode_hides_and_refuses_the_actions(db, states):
    client = make_client(console_read_only=True)
    for path in (f"/jobs/{states['FAILED']}", f"/jobs/{states['PENDING']}", "/", "/jobs", "/dead", "/costs"):
        page = client.get(path).get_data(as_text=True)
        assert '<button type="submit"' not in page.replace('<button type="submit">Filter</button>', "").replace(
            '<button type="submit">Show</button>', ""
        ), path
    csrf = with_csrf(client)
    assert client.post(f"/jobs/{states['PENDING']}/cancel", data={"csrf": csrf}).status_code == 403
    assert client.post("/pause", data={"csrf": csrf}).status_code == 403
    assert one(db, "SELECT status FROM jobs WHERE id = %s", states["PENDING"]) == "PENDING"


def test_no_secret_is_rendered(db, states):
    secret_error = (
        "OperationalError: could not connect to postgresql://roastq:hunter2-pw@db.internal:5432/roastq "
        "with key sk-ant-api03-abcdefghijklmnop"
    )
    with db.cursor() as cur:
        cur.execute("UPDATE jobs SET error = %s WHERE id = %s", (secret_error, states["FAILED"]))
        cur.execute("UPDATE job_attempts SET error = %s WHERE job_id = %s", (secret_error, states["FAILED"]))
    client = make_client(console_token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for path in (f"/jobs/{states['FAILED']}", "/dead", "/", "/costs"):
        page = client.get(path, headers=auth).get_data(as_text=True)
        assert "hunter2-pw" not in page and "abcdefghijklmnop" not in page and TOKEN not in page, path
    assert "db.internal" in client.get(f"/jobs/{states['FAILED']}", headers=auth).get_data(as_text=True)


def test_live_part_of_a_page_is_served_alone_and_stops_when_the_job_is_done(states):
    client = make_client()
    pending = client.get(f"/jobs/{states['PENDING']}", headers={"X-Console-Partial": "1"}).get_data(as_text=True)
    assert "<html" not in pending and 'id="job-facts"' in pending and "data-live-stop" not in pending
    done = client.get(f"/jobs/{states['COMPLETED']}", headers={"X-Console-Partial": "1"}).get_data(as_text=True)
    assert "data-live-stop" in done and 'id="evaluation"' in done
    overview = client.get("/", headers={"X-Console-Partial": "1"}).get_data(as_text=True)
    assert "<html" not in overview and 'id="queues"' in overview
    full = client.get(f"/jobs/{states['PENDING']}").get_data(as_text=True)
    assert f'data-live="/jobs/{states["PENDING"]}"' in full


def test_cli_job_shows_the_evaluation(db, states, capsys):
    from roastq.cli.main import main

    assert main(["job", states["COMPLETED"]]) == 0
    out = capsys.readouterr().out
    ev_id, grade = one(db, "SELECT id, grade FROM evaluation_versions WHERE job_id = %s", states["COMPLETED"])
    assert "Evaluation:" in out and "Summary:" in out and "Self-critique:" in out
    if grade is not None:
        assert f"grade {grade}/100" in out
    n_valid, n_all = one(
        db, "SELECT count(*) FILTER (WHERE is_valid), count(*) FROM highlights WHERE evaluation_version_id = %s", ev_id
    )
    assert f"Highlights: {n_all} ({n_valid} located in the document, {n_all - n_valid} invalid)" in out
    assert re.search(r"price_usd:\s+\$0\.\d{3}\b", out)  # dollars for a person
    assert main(["job", states["FAILED"]]) == 0
    assert "(none: the job saved no evaluation)" in capsys.readouterr().out


def test_the_console_settles_before_serving():
    """`roastq console` compiles its templates and freezes its start-up heap, so that a full
    garbage collection does not walk it (a 200 ms stall every ~20 requests, docs/benchmarks.md)."""
    import gc

    from roastq.console.server import settle

    app = make_client().application
    try:
        settle(app)
        assert gc.get_freeze_count() > 0
        assert len(app.jinja_env.cache) >= len(app.jinja_env.list_templates(extensions=["html"]))
    finally:
        gc.unfreeze()
