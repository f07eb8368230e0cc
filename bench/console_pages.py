"""Console page speed (issue 16): every page of `roastq console` with 100,000 jobs in the database.

The jobs are written straight into the tables (every status, a week of history, an attempt and a
broker message each, an evaluation version for each completed job, 20 highlights on the job whose
page is measured), then a real `roastq console` process (waitress, default settings, INFO logs) is
asked for each page over HTTP, one request at a time. Figures: median and p95 of the time from
the request to the last byte of the answer, per page. Target: every page under 200 ms.

    .venv/bin/python bench/console_pages.py [--jobs 100000] [--reps 15]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
from _common import ROOT, connect, fresh_database, machine, median, percentile, scalar, wait_until  # noqa: E402

TARGET_MS = 200.0

FILL = """
WITH combos AS (
    SELECT array_agg(e.id ORDER BY e.id) AS evs, array_agg(dv.id ORDER BY e.id) AS dvs,
           array_agg(av.id ORDER BY e.id) AS avs, count(*)::int AS n
    FROM evaluations e
    JOIN LATERAL (SELECT id FROM document_versions WHERE document_id = e.document_id ORDER BY version DESC LIMIT 1) dv ON true
    JOIN LATERAL (SELECT id FROM agent_versions WHERE agent_id = e.agent_id ORDER BY version DESC LIMIT 1) av ON true
), rows AS (
    SELECT i, c.evs[1 + i %% c.n] AS evaluation_id, c.dvs[1 + i %% c.n] AS dv, c.avs[1 + i %% c.n] AS av,
           CASE WHEN i %% 100 < 85 THEN 'COMPLETED' WHEN i %% 100 < 92 THEN 'FAILED'
                WHEN i %% 100 < 95 THEN 'CANCELLED' WHEN i %% 100 < 99 THEN 'PENDING' ELSE 'RUNNING' END AS status,
           now() - make_interval(secs => (%(jobs)s - i) * 6.0) AS created_at
    FROM generate_series(1, %(jobs)s) AS i, combos c
)
INSERT INTO jobs (id, evaluation_id, document_version_id, agent_version_id, status, queue, attempts,
                  error_class, error, created_at, started_at, completed_at, updated_at, duration_s, price_usd,
                  message_id)
SELECT gen_random_uuid(), evaluation_id, dv, av, status, CASE WHEN i %% 3 = 0 THEN 'batch' ELSE 'interactive' END,
       CASE WHEN status = 'PENDING' THEN 0 ELSE 1 END,
       CASE WHEN status = 'FAILED' THEN (ARRAY['INVALID_REQUEST', 'AUTH', 'BAD_LLM_OUTPUT', 'TIMEOUT'])[1 + i %% 4] END,
       CASE WHEN status = 'FAILED' THEN 'BadRequestError: Error code: 400 - simulated' END,
       created_at, created_at + interval '1 second',
       CASE WHEN status IN ('COMPLETED', 'FAILED', 'CANCELLED') THEN created_at + interval '5 seconds' END,
       created_at, CASE WHEN status IN ('COMPLETED', 'FAILED', 'CANCELLED') THEN 5.0 END,
       CASE WHEN status = 'COMPLETED' THEN 0.016 END, gen_random_uuid()
FROM rows;

INSERT INTO job_attempts (job_id, attempt, message_id, started_at, ended_at, outcome, error_class)
SELECT id, 1, message_id, started_at, completed_at,
       CASE status WHEN 'COMPLETED' THEN 'completed' WHEN 'FAILED' THEN 'failed' WHEN 'CANCELLED' THEN 'cancelled' END,
       error_class
FROM jobs WHERE attempts = 1;

INSERT INTO dramatiq.queue (message_id, queue_name, state, mtime, message)
SELECT message_id, queue,
       (CASE WHEN status = 'PENDING' THEN 'queued' WHEN status = 'RUNNING' THEN 'consumed'
             WHEN status = 'FAILED' THEN 'rejected' ELSE 'done' END)::dramatiq.state,
       coalesce(completed_at, created_at),
       jsonb_build_object('queue_name', queue, 'actor_name', 'evaluate_document', 'args', jsonb_build_array(id::text),
                          'kwargs', '{}'::jsonb, 'options', '{}'::jsonb, 'message_id', message_id,
                          'message_timestamp', 0)
FROM jobs;

WITH versions AS (
    INSERT INTO evaluation_versions (evaluation_id, version, job_id, agent_version_id, document_version_id,
                                     summary, analysis, grade, self_critique, created_at)
    SELECT evaluation_id, row_number() OVER (PARTITION BY evaluation_id ORDER BY created_at), id, agent_version_id,
           document_version_id, 'A summary.', 'An analysis.', 70, 'A self-critique.', completed_at
    FROM jobs WHERE status = 'COMPLETED'
    RETURNING id, job_id
)
UPDATE jobs j SET evaluation_version_id = v.id FROM versions v WHERE j.id = v.job_id;
"""


def fill(conn, jobs: int) -> str:
    """The 100,000 jobs; returns the completed job whose page is measured (20 highlights on it)."""
    with conn.cursor() as cur:
        cur.execute(FILL, {"jobs": jobs})
        cur.execute(
            "SELECT j.id, ev.id, dv.content FROM jobs j JOIN evaluation_versions ev ON ev.job_id = j.id "
            "JOIN document_versions dv ON dv.id = j.document_version_id "
            "WHERE j.status = 'COMPLETED' ORDER BY j.created_at DESC LIMIT 1"
        )
        job_id, ev_id, content = cur.fetchone()
        step = max(len(content) // 21, 40)
        for n in range(20):
            start = n * step
            cur.execute(
                "WITH h AS (INSERT INTO highlights (evaluation_version_id, start_offset, end_offset, "
                "quoted_text, is_valid) VALUES (%s, %s, %s, %s, true) RETURNING id) "
                "INSERT INTO comments (evaluation_version_id, highlight_id, description, header, "
                "importance, level) SELECT %s, id, 'A comment on this passage.', 'A header', 5, 'info' FROM h",
                (ev_id, start, start + 30, content[start : start + 30], ev_id),
            )
    conn.autocommit = True
    with conn.cursor() as cur:  # what autovacuum does to a table that has grown: visibility map, statistics
        cur.execute("VACUUM ANALYZE")
    return str(job_id)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fetch_ms(url: str, headers: dict | None = None) -> float:
    request = urllib.request.Request(url, headers=headers or {})
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=30) as response:
        response.read()
        assert response.status == 200, (url, response.status)
    return (time.perf_counter() - start) * 1000


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=100_000)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--reuse", action="store_true", help="measure the database the last run filled")
    a = p.parse_args()
    print(f"# {machine()}")
    if a.reuse:
        url = _common.SERVER.rsplit("/", 1)[0] + "/roastq_console_bench"
        os.environ["DATABASE_URL"] = url
        from roastq import db
        from roastq.settings import reload_settings

        reload_settings()
        db.migrate()  # migrations added since it was filled
        conn = connect()
        job_id = scalar(
            conn,
            "SELECT ev.job_id::text FROM evaluation_versions ev JOIN highlights h "
            "ON h.evaluation_version_id = ev.id LIMIT 1",
        )
    else:
        url = fresh_database("roastq_console_bench")
        from roastq.evaluation.seed import seed

        seed()
        conn = connect()
        with conn.cursor() as cur:  # every sample document with every sample agent
            cur.execute(
                "INSERT INTO evaluations (document_id, agent_id) SELECT d.id, a.id FROM documents d, "
                "agents a ON CONFLICT DO NOTHING"
            )
        started = time.monotonic()
        job_id = fill(conn, a.jobs)
        print(f"filled {scalar(conn, 'SELECT count(*) FROM jobs'):,} jobs in {time.monotonic() - started:.0f} s")
    failed_id = scalar(conn, "SELECT id::text FROM jobs WHERE status = 'FAILED' ORDER BY created_at DESC LIMIT 1")
    deep = scalar(
        conn,
        "SELECT created_at::text || '|' || id::text FROM jobs ORDER BY created_at DESC, id DESC OFFSET %s LIMIT 1",
        int(a.jobs * 0.9),
    )
    agent = scalar(conn, "SELECT agent_id::text FROM evaluations LIMIT 1")
    from urllib.parse import quote

    pages = {
        "overview": "/",
        "overview (live part)": "/?partial",
        "jobs": "/jobs",
        "jobs, status FAILED + class": "/jobs?status=FAILED&class=AUTH",
        "jobs, agent + since 1d": f"/jobs?agent={agent}&since=1d",
        "jobs, title search": "/jobs?q=spreadsheet",
        "jobs, a page 90% deep": f"/jobs?after={quote(deep)}",
        "job, completed (20 highlights)": f"/jobs/{job_id}",
        "job, failed": f"/jobs/{failed_id}",
        "dead letters": "/dead",
        "dead letters, one group": "/dead?class=AUTH",
        "costs": "/costs",
    }
    port = free_port()
    env = dict(os.environ, DATABASE_URL=url, LOG_LEVEL="INFO", PYTHONUNBUFFERED="1")
    log = (
        open(ROOT / ".roastq" / "bench" / "console.log", "ab")
        if (ROOT / ".roastq" / "bench").is_dir()
        else subprocess.DEVNULL
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "roastq.cli", "console", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
        cwd=ROOT,
    )
    try:

        def listening():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", port)) == 0

        wait_until(listening, 60, 0.1, "the console")
        base = f"http://127.0.0.1:{port}"
        results = {}
        for name, path in pages.items():
            headers = {"X-Console-Partial": "1"} if path.endswith("?partial") else {}
            target = base + path.replace("?partial", "")
            fetch_ms(target, headers)  # warm: templates compiled, connections open
            results[name] = [fetch_ms(target, headers) for _ in range(a.reps)]
    finally:
        server.terminate()
        server.wait(10)
    print(f"\n{a.jobs:,} jobs, {a.reps} requests a page, one at a time (ms, request to last byte)")
    print(f"{'page':34} {'median':>8} {'p95':>8} {'max':>8}")
    worst = 0.0
    for name, times in results.items():
        worst = max(worst, percentile(times, 0.95))
        print(f"{name:34} {median(times):8.1f} {percentile(times, 0.95):8.1f} {max(times):8.1f}")
    verdict = "met" if worst < TARGET_MS else "NOT met"
    print(f"\nslowest page p95 {worst:.1f} ms: target < {TARGET_MS:.0f} ms {verdict}")
    return 0 if worst < TARGET_MS else 1


if __name__ == "__main__":
    raise SystemExit(main())
