"""The console in a real browser: headless Chromium (Debian's package) driven by Playwright, against
a real `roastq console` process, a real Postgres, an in-process worker and the simulator.

Skipped, with the reason, where Playwright or a Chromium binary is missing (`.ci/run` installs
both). With ROASTQ_SCREENSHOTS=DIR (`make screenshots`) it also saves a screenshot of each page.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import kill_all, one, wait_for_status, wait_until

from roastq.api import enqueue_evaluation

pytestmark = [pytest.mark.usefixtures("fast_backoff"), pytest.mark.postgres_broker]

TOKEN = "browser-test-token-51c2"
SHOTS = os.environ.get("ROASTQ_SCREENSHOTS")


def chromium_path() -> str | None:
    for candidate in (os.environ.get("CHROMIUM_PATH"), "chromium", "chromium-browser", "google-chrome"):
        if candidate and (found := shutil.which(candidate)):
            return found
    return None


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the Python package playwright is not installed (pip install -e '.[test]')")
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium binary (Debian: apt-get install chromium; .ci/run installs it)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def console(database_url):
    """`roastq console` on a free port, with a token."""
    port = free_port()
    env = dict(os.environ, CONSOLE_TOKEN=TOKEN, DATABASE_URL=database_url, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "roastq.cli", "console", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )

    def up():
        if proc.poll() is not None:
            raise AssertionError(f"console exited: {proc.stderr.read().decode()}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    try:
        wait_until(up, timeout=30, what="the console to listen")
        yield f"http://127.0.0.1:{port}"
    finally:
        kill_all(proc)


def shoot(page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


def test_an_operator_session_in_the_browser(db, seeded, sim, worker, console, browser):
    from playwright.sync_api import expect

    docs = list(seeded.documents.values())
    agent = one(
        db, "SELECT agent_id FROM agent_versions WHERE self_critique_instructions IS NOT NULL ORDER BY name LIMIT 1"
    )
    sim.script("invalid_request", "auth")  # the next two requests: permanent failures
    failed = [enqueue_evaluation(docs[0], agent), enqueue_evaluation(docs[1], agent)]
    wait_for_status(db, failed)
    completed = [enqueue_evaluation(d, agent) for d in docs[:4]]
    assert set(wait_for_status(db, completed).values()) == {"COMPLETED"}
    retry_me = one(db, "SELECT id::text FROM jobs WHERE error_class = 'INVALID_REQUEST'")

    # Without the token: refused (an API request, and the browser is sent to the login page).
    anonymous = browser.new_context()
    assert anonymous.request.get(f"{console}/jobs", headers={"X-Console-Partial": "1"}).status == 401
    anonymous.close()
    context = browser.new_context(viewport={"width": 1300, "height": 900})
    page = context.new_page()
    page.goto(f"{console}/")
    expect(page.locator("#login")).to_be_visible()
    shoot(page, "login")
    page.fill("input[name=token]", "not-the-token")
    page.click("#login button")
    expect(page.locator(".flash.error")).to_have_text("wrong token")
    page.fill("input[name=token]", TOKEN)
    page.click("#login button")

    # Overview.
    expect(page.locator("h1")).to_have_text("Overview")
    expect(page.locator("#queues tbody tr")).to_have_count(3)
    expect(page.locator(".counts")).to_contain_text("COMPLETED 4")
    shoot(page, "overview")

    # Jobs, filtered to the failed ones.
    page.click("header nav >> text=Jobs")
    expect(page.locator("#jobs-table tbody tr")).to_have_count(6)
    shoot(page, "jobs")
    page.check("input[name=status][value=FAILED]")
    page.click("#filters button[type=submit]")
    expect(page.locator("#jobs-table tbody tr")).to_have_count(2)
    expect(page.locator("#jobs-table tbody .badge")).to_have_text(["FAILED", "FAILED"])

    # A completed job: its highlights marked on the document.
    page.goto(f"{console}/jobs/{completed[0]}")
    ev_id = one(db, "SELECT id FROM evaluation_versions WHERE job_id = %s", completed[0])
    first_quote = one(
        db,
        "SELECT quoted_text FROM highlights WHERE evaluation_version_id = %s AND is_valid "
        "ORDER BY start_offset LIMIT 1",
        ev_id,
    )
    marks = page.locator("#document mark")
    assert marks.count() >= 1
    assert marks.first.inner_text().lstrip("0123456789") == first_quote
    expect(page.locator("#grade, #summary").first).to_be_visible()
    shoot(page, "job")

    # The failed job: open it, retry it, and watch the linked rerun complete without reloading.
    page.goto(f"{console}/jobs?status=FAILED&class=INVALID_REQUEST")
    page.click(f"#jobs-table a[href='/jobs/{retry_me}']")
    expect(page.locator("#job-facts")).to_contain_text("INVALID_REQUEST")
    page.click("#retry")
    expect(page.locator(".flash.ok")).to_contain_text("enqueued")
    rerun = page.url.rsplit("/", 1)[1]
    assert str(one(db, "SELECT original_job_id FROM jobs WHERE id = %s", rerun)) == retry_me
    page.evaluate("window.__sameDocument = true")
    expect(page.locator("#job-facts .badge.completed")).to_be_visible(timeout=30_000)
    expect(page.locator("#document mark").first).to_be_visible()
    assert page.evaluate("window.__sameDocument") is True  # refreshed in place, not reloaded
    page.goto(f"{console}/jobs/{retry_me}")
    expect(page.locator("#reruns")).to_contain_text("COMPLETED")

    # Dead letters: one left (the other was rerun); costs after a roll-up.
    page.goto(f"{console}/dead")
    expect(page.locator("#dead-groups tbody tr")).to_have_count(1)
    expect(page.locator("#dead-groups")).to_contain_text("AUTH")
    shoot(page, "dead-letters")
    page.goto(f"{console}/costs")
    page.click("#roll-up")
    expect(page.locator("#cost-agents tbody tr").first).not_to_contain_text("Nothing rolled up")
    shoot(page, "costs")

    # Pause, cancel a job that waits, resume.
    page.goto(f"{console}/")
    page.fill("input[name=reason]", "browser test")
    page.click("#pause")
    expect(page.locator("#pause-banner")).to_contain_text("browser test")
    expect(page.locator("#system-state")).to_have_text("PAUSED")
    waiting = enqueue_evaluation(docs[0], agent)
    wait_until(
        lambda: one(db, "SELECT error_class FROM jobs WHERE id = %s", waiting) == "SNOOZED",
        timeout=30,
        what="the job held by the pause",
    )
    page.goto(f"{console}/jobs/{waiting}")
    expect(page.locator("#job-facts .badge.pending")).to_be_visible()
    page.click("#cancel")
    expect(page.locator("#job-facts .badge.cancelled")).to_be_visible()
    assert one(db, "SELECT status FROM jobs WHERE id = %s", waiting) == "CANCELLED"
    page.goto(f"{console}/")
    page.click("#resume")
    expect(page.locator("#system-state")).to_have_text("running")
    assert one(db, "SELECT count(*) FROM system_state WHERE key = 'pause'") == 0
    from roastq.ops import pause

    # The worker (in this process) reads the pause at most CACHE_S old: until it has seen the
    # resume, a new job would still be held (snoozed for PAUSE_SNOOZE_S).
    wait_until(lambda: pause.current() is None, timeout=10, what="the worker to see the resume")

    # A job running now: its worker is busy in an LLM call that does not answer for a while (the
    # simulator holds it, then drops the connection: the job is retried and completes).
    sim.configure(hang_s=12.0)
    sim.script("hang")
    running = enqueue_evaluation(docs[2], agent)
    wait_until(
        lambda: (
            one(db, "SELECT status FROM jobs WHERE id = %s", running) == "RUNNING"
            and one(db, "SELECT count(*) FROM job_attempts WHERE job_id = %s AND ended_at IS NULL", running) == 1
        ),
        timeout=30,
        what="the job to be running, its attempt open",
    )
    page.goto(f"{console}/jobs/{running}")
    expect(page.locator("#job-facts .badge.running")).to_have_text("RUNNING")
    page.goto(f"{console}/jobs?status=RUNNING")
    row = page.locator("#jobs-table tbody tr", has=page.locator(f"a[href='/jobs/{running}']"))
    expect(row).to_have_count(1)
    expect(row.locator(".badge")).to_have_text("RUNNING")
    page.goto(f"{console}/")
    expect(page.locator(".counts")).to_contain_text("RUNNING 1")
    assert wait_for_status(db, [running], timeout=90)[running] == "COMPLETED"
    context.close()
