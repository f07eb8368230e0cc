"""The `roastq` command line: read commands with --json, enqueue, and clear errors."""

import json
import os
import re
import subprocess
import sys

from helpers import one, wait_for_status

from roastq.cli.main import main


def run_cli(*args):
    """The real command, in its own process, as a user runs it."""
    return subprocess.run(
        [sys.executable, "-m", "roastq.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )


def ids(seeded):
    return next(iter(seeded.documents.values())), next(iter(seeded.agents.values()))


def test_enqueue_prints_the_job_id(db, seeded):
    doc, agent = ids(seeded)
    result = run_cli("enqueue", "--document-id", doc, "--agent-id", agent, "--priority", "batch")
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()
    assert one(db, "SELECT queue, status FROM jobs WHERE id = %s", job_id) == ("batch", "PENDING")


def test_enqueue_unknown_document_is_a_clear_error(db, seeded):
    _, agent = ids(seeded)
    result = run_cli("enqueue", "--document-id", "00000000-0000-0000-0000-000000000000", "--agent-id", agent)
    assert result.returncode == 2
    assert "unknown document" in result.stderr and "Traceback" not in result.stderr
    assert one(db, "SELECT count(*) FROM jobs") == 0


def test_job_json_has_the_documented_fields(db, seeded, worker, capsys):
    from roastq.api import enqueue_evaluation

    job_id = enqueue_evaluation(*ids(seeded))
    wait_for_status(db, [job_id])
    capsys.readouterr()
    assert main(["job", job_id, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("id", "status", "attempts", "error_class", "error", "evaluation_version_id", "price_usd", "duration_s"):
        assert key in data
    assert data["status"] == "COMPLETED" and data["attempts"] == 1 and data["price_usd"] > 0
    assert [a["outcome"] for a in data["attempt_log"]] == ["completed"]
    assert data["tasks"][0]["name"] == "analysis"
    assert main(["job", job_id]) == 0  # the table for people
    out = capsys.readouterr().out
    assert "COMPLETED" in out and "Attempts:" in out


def test_jobs_and_status_json(db, seeded, capsys):
    from roastq.api import cancel_job, enqueue_evaluation

    doc, agent = ids(seeded)
    first, second = enqueue_evaluation(doc, agent), enqueue_evaluation(doc, agent, priority="batch")
    cancel_job(first)
    capsys.readouterr()
    assert main(["jobs", "--status", "PENDING", "--json"]) == 0
    assert [j["id"] for j in json.loads(capsys.readouterr().out)] == [second]
    assert main(["status", "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["jobs"] == {"CANCELLED": 1, "PENDING": 1}
    queued = {(q["queue"], q["state"]): q["n"] for q in status["queues"]}
    assert queued[("interactive", "queued")] == 1 and queued[("batch", "queued")] == 1


def test_unknown_job_and_bad_id(db, capsys):
    assert main(["job", "00000000-0000-0000-0000-000000000000"]) == 1
    assert "unknown job" in capsys.readouterr().err
    assert main(["job", "nonsense"]) == 2
    assert "not a valid id" in capsys.readouterr().err


def test_cancel_via_cli(db, seeded, capsys):
    from roastq.api import enqueue_evaluation

    job_id = enqueue_evaluation(*ids(seeded))
    assert main(["cancel", job_id, "--reason", "duplicate request"]) == 0
    assert one(db, "SELECT status, cancel_reason FROM jobs WHERE id = %s", job_id) == ("CANCELLED", "duplicate request")
    assert main(["cancel", job_id]) == 2  # already cancelled: a clear error
    assert "already CANCELLED" in capsys.readouterr().err


def test_retry_needs_a_job_or_failed(db):
    result = run_cli("retry")
    assert result.returncode != 0 and "give a job id" in result.stderr


def test_migrate_and_seed_are_idempotent(db, capsys):
    assert main(["migrate"]) == 0
    assert "nothing to apply" in capsys.readouterr().out
    assert main(["seed", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(["seed", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == first
    assert one(db, "SELECT count(*) FROM document_versions") == len(first["documents"])
    assert one(db, "SELECT count(*) FROM agent_versions") == len(first["agents"])


def test_demo_runs_jobs_reports_and_leaves_no_process(db, tmp_path):
    env = dict(os.environ, ROASTQ_HOME=str(tmp_path), LLM_BATCH_LANE="auto")  # as a user runs it
    env.pop("ANTHROPIC_BASE_URL", None)  # the demo starts its own simulator
    result = subprocess.run(
        [sys.executable, "-m", "roastq.cli.main", "demo", "--jobs", "8", "--processes", "1", "--threads", "4"],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "roastq demo report" in result.stdout
    assert "COMPLETED" in result.stdout and "dollars:" in result.stdout and "p50" in result.stdout
    # The demo's simulator is sloppy: the report says how many answers were repaired, by kind.
    repaired = re.search(
        r"answers: +(\d+) of (\d+) evaluations had answers repaired; repairs by kind: (.+)", result.stdout
    )
    assert repaired, result.stdout
    assert int(repaired.group(1)) == one(db, "SELECT count(*) FROM evaluation_versions WHERE repairs <> '[]'")
    assert "8/8" in result.stderr  # the progress bar reached the end
    assert re.search(
        r"batch lane: +1 evaluation\(s\) through [12] Message Batch\(es\): billed \$[0-9.]+ instead of", result.stdout
    )
    assert one(db, "SELECT count(*) FROM jobs WHERE status IN ('COMPLETED', 'FAILED')") == 8
    pid = int(re.search(r"workers started: .* \(pid (\d+)\)", result.stderr).group(1))
    leftover = subprocess.run(["pgrep", "-g", str(pid)], capture_output=True, text=True).stdout.split()
    assert leftover == [], f"worker processes left running: {leftover}"


def test_simulator_command_serves_on_the_given_port():
    import socket
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "roastq.cli.main", "simulator", "--port", str(port), "--latency-ms", "1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line.strip() == f"simulator listening on http://127.0.0.1:{port}"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_sim/health", timeout=5) as response:
            assert json.load(response)["ok"] is True
    finally:
        proc.terminate()
        assert proc.wait(10) == 0
