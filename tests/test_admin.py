"""The operator CLI: status per queue, job filters, bulk cancel, pause/resume, purge, maintenance,
costs. Real database; the commands run in-process (``main``) or as the real `roastq` process."""

import json
import os
import subprocess
import sys
import uuid

import psycopg2
from dramatiq.message import Message
from dramatiq_pg.broker import message_lock
from helpers import one, rows

from roastq.api import cancel_job, enqueue_evaluation
from roastq.cli.main import main


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "roastq.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )


def out_json(capsys, argv):
    capsys.readouterr()
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def put_message(db, queue_name, state, age="0 s", actor="evaluate_document"):
    message_id = str(uuid.uuid4())
    body = json.dumps(
        {
            "queue_name": queue_name,
            "actor_name": actor,
            "args": [],
            "kwargs": {},
            "options": {},
            "message_id": message_id,
            "message_timestamp": 0,
        }
    )
    with db.cursor() as cur:
        cur.execute(
            "INSERT INTO dramatiq.queue (queue_name, message_id, state, message, mtime) "
            "VALUES (%s, %s, %s, %s, now() - %s::interval)",
            (queue_name, message_id, state, body, age),
        )
    return message_id


def test_status_counts_each_queue_and_lists_workers_and_the_pause(db, database_url, capsys):
    from roastq.ops import pause

    for _ in range(2):
        put_message(db, "interactive", "queued", "10 minutes")
    put_message(db, "interactive", "queued", "1 minute")
    put_message(db, "batch.DQ", "queued")  # a retry waiting for its eta
    put_message(db, "batch", "rejected")
    put_message(db, "batch", "done")
    put_message(db, "batch", "consumed")  # orphaned: nobody holds its lock
    held = put_message(db, "batch", "consumed")
    worker_session = psycopg2.connect(database_url)
    worker_session.autocommit = True
    with worker_session.cursor() as cur:
        cur.execute(
            "SELECT pg_advisory_lock(%s)",
            (
                message_lock(
                    Message(queue_name="batch", actor_name="x", args=(), kwargs={}, options={}, message_id=held)
                ),
            ),
        )
    with db.cursor() as cur:
        cur.execute(
            "INSERT INTO worker_heartbeats (worker_id, hostname, pid, threads, queues) VALUES "
            "('host:1', 'host', 1, 8, '{interactive,batch}'), ('gone:2', 'gone', 2, 8, '{}')"
        )
        cur.execute("UPDATE worker_heartbeats SET last_seen_at = now() - interval '1 hour' WHERE worker_id = 'gone:2'")
    pause.pause("incident 42", by="oncall")
    try:
        status = out_json(capsys, ["status", "--json"])
    finally:
        pause.resume()
        worker_session.close()
    by_queue = {q["queue"]: q for q in status["queue_summary"]}
    keys = ["queued", "delayed", "in_flight", "orphaned", "dead", "done"]
    assert [by_queue["interactive"][k] for k in keys] == [3, 0, 0, 0, 0, 0]
    assert [by_queue["batch"][k] for k in keys] == [0, 1, 1, 1, 1, 1]
    assert [by_queue["maintenance"][k] for k in keys] == [0] * 6
    assert 590 < by_queue["interactive"]["oldest_queued_age_s"] < 700
    assert [w["worker_id"] for w in status["workers"]] == ["host:1"]
    assert status["paused"]["reason"] == "incident 42" and status["paused"]["by"] == "oncall"
    assert {(q["queue"], q["state"]) for q in status["queues"]} >= {("interactive", "queued")}  # the old shape
    capsys.readouterr()
    assert main(["status"]) == 0
    table = capsys.readouterr().out
    assert "running" in table and "IN_FLIGHT" in table and "host:1" in table and "Workers: 1 live" in table


def make_jobs(db, seeded):
    docs, agents = list(seeded.documents.values()), sorted(seeded.agents.items())
    (slug_a, agent_a), (_, agent_b) = agents[0], agents[1]
    old = enqueue_evaluation(docs[0], agent_a)
    batch = enqueue_evaluation(docs[1], agent_b, priority="batch")
    failed = enqueue_evaluation(docs[2], agent_a)
    cancelled = enqueue_evaluation(docs[0], agent_b)
    cancel_job(cancelled)
    with db.cursor() as cur:
        cur.execute("UPDATE jobs SET created_at = now() - interval '3 days' WHERE id = %s", (old,))
        cur.execute("UPDATE jobs SET status = 'FAILED', error_class = 'NETWORK' WHERE id = %s", (failed,))
    return dict(old=old, batch=batch, failed=failed, cancelled=cancelled, slug_a=slug_a, agent_b=agent_b)


def test_jobs_filters(db, seeded, capsys):
    j = make_jobs(db, seeded)
    ids = lambda *argv: sorted(x["id"] for x in out_json(capsys, ["jobs", *argv, "--json"]))  # noqa: E731
    assert ids("--status", "PENDING,FAILED") == sorted([j["old"], j["batch"], j["failed"]])
    assert ids("--class", "network") == [j["failed"]]
    assert ids("--queue", "batch") == [j["batch"]]
    assert ids("--agent", j["slug_a"]) == sorted([j["old"], j["failed"]])
    agent_b_name = one(db, "SELECT name FROM agent_versions WHERE agent_id = %s", j["agent_b"])
    assert ids("--agent", agent_b_name.upper()) == sorted([j["batch"], j["cancelled"]])  # by name, any case
    assert ids("--since", "1d") == sorted([j["batch"], j["failed"], j["cancelled"]])
    assert ids("--until", "2d") == [j["old"]]
    assert len(ids("--limit", "2")) == 2


def test_jobs_bad_filters_are_usage_errors(db, seeded, capsys):
    for argv, message in (
        (["--status", "DONE"], "unknown status DONE"),
        (["--since", "yesterday"], "neither an age"),
        (["--agent", "nobody"], "unknown agent 'nobody'"),
        (["--class", "rate limited"], "not an error class"),
        (["--limit", "0"], "--limit must be at least 1"),
    ):
        capsys.readouterr()
        assert main(["jobs", *argv]) == 2
        assert message in capsys.readouterr().err
    result = run_cli("jobs", "--queue", "nope")  # argparse's own usage error: also exit 2
    assert result.returncode == 2 and "invalid choice" in result.stderr


def test_cancel_several_ids(db, seeded, capsys):
    j = make_jobs(db, seeded)
    capsys.readouterr()
    assert main(["cancel", j["old"], j["batch"], j["cancelled"], "--reason", "bulk"]) == 1  # one was finished
    out, err = capsys.readouterr()
    assert f"{j['old']}: cancelled" in out and f"{j['batch']}: cancelled" in out
    assert f"{j['cancelled']}: error: job {j['cancelled']} is already CANCELLED" in err
    assert one(db, "SELECT count(*) FROM jobs WHERE cancel_reason = 'bulk'") == 2


def test_cancel_by_filter_needs_confirmation(db, seeded, capsys):
    j = make_jobs(db, seeded)
    pending = rows(db, "SELECT count(*) FROM jobs WHERE status = 'PENDING'")
    capsys.readouterr()
    assert main(["cancel", "--agent", j["slug_a"]]) == 2  # no --yes: nothing happens
    assert "1 job(s) match: add --yes" in capsys.readouterr().out
    assert main(["cancel", "--agent", j["slug_a"], "--dry-run"]) == 0
    assert rows(db, "SELECT count(*) FROM jobs WHERE status = 'PENDING'") == pending
    assert main(["cancel", "--agent", j["slug_a"], "--yes", "--reason", "agent retired"]) == 0
    assert rows(db, "SELECT id::text FROM jobs WHERE cancel_reason = 'agent retired'") == [(j["old"],)]
    assert one(db, "SELECT status FROM jobs WHERE id = %s", j["failed"]) == "FAILED"  # filters: PENDING, RUNNING
    capsys.readouterr()
    assert main(["cancel", "--status", "FAILED", "--yes"]) == 2
    assert "only PENDING and RUNNING" in capsys.readouterr().err
    assert main(["cancel", j["batch"], "--queue", "batch"]) == 2
    assert main(["cancel"]) == 2


def test_cancel_many_shows_progress(db, seeded, capsys):
    from roastq.api import enqueue_evaluations

    doc, agent = next(iter(seeded.documents.values())), next(iter(seeded.agents.values()))
    enqueue_evaluations([(doc, agent)] * 30)
    capsys.readouterr()
    assert main(["cancel", "--status", "PENDING", "--yes"]) == 0
    assert "cancelled: 30/30" in capsys.readouterr().err
    assert one(db, "SELECT count(*) FROM jobs WHERE status = 'CANCELLED'") == 30


def test_pause_and_resume_commands(db):
    result = run_cli("pause", "--reason", "Anthropic incident")
    assert result.returncode == 0 and "paused" in result.stdout
    status = json.loads(run_cli("status", "--json").stdout)
    assert status["paused"]["reason"] == "Anthropic incident"
    assert "PAUSED since" in run_cli("status").stdout
    assert "warn  pause" in run_cli("health").stdout  # reported, not a failure of its own
    result = run_cli("resume")
    assert result.returncode == 0 and "resumed" in result.stdout and "Anthropic incident" in result.stdout
    assert json.loads(run_cli("status", "--json").stdout)["paused"] is None
    assert "not paused" in run_cli("resume").stdout


def test_purge_needs_confirmation_and_keeps_jobs(db, seeded, capsys):
    job_id = enqueue_evaluation(next(iter(seeded.documents.values())), next(iter(seeded.agents.values())))
    with db.cursor() as cur:
        cur.execute("UPDATE dramatiq.queue SET state = 'rejected', mtime = now() - interval '10 days'")
    put_message(db, "interactive", "done", "10 days")
    put_message(db, "interactive", "done", "1 hour")
    put_message(db, "batch", "queued", "10 days")
    capsys.readouterr()
    assert main(["purge", "--done", "--older-than", "2d"]) == 2
    assert "1 finished messages would be deleted" in capsys.readouterr().out
    assert main(["purge", "--done", "--dead", "--dry-run"]) == 0
    assert "3 finished messages and dead letters would be deleted" in capsys.readouterr().out
    assert one(db, "SELECT count(*) FROM dramatiq.queue") == 4
    assert main(["purge", "--done", "--older-than", "2d", "--yes"]) == 0
    assert main(["purge", "--dead", "--yes"]) == 0
    assert rows(db, "SELECT state::text AS s FROM dramatiq.queue ORDER BY s") == [("done",), ("queued",)]
    assert one(db, "SELECT count(*) FROM jobs WHERE id = %s", job_id) == 1
    assert main(["purge", "--yes"]) == 2  # what to purge?
    assert main(["purge", "--done", "--older-than", "soon", "--yes"]) == 2


def test_a_large_purge_shows_progress(db, capsys):
    with db.cursor() as cur:
        cur.execute("""INSERT INTO dramatiq.queue (queue_name, message_id, state, message)
                       SELECT 'batch', gen_random_uuid(), 'done', '{}'::jsonb FROM generate_series(1, 12001)""")
    capsys.readouterr()
    assert main(["purge", "--done", "--yes"]) == 0
    out, err = capsys.readouterr()
    assert "deleted: 5000/12001" in err and "deleted: 12001/12001" in err
    assert "deleted 12001 finished messages" in out
    assert one(db, "SELECT count(*) FROM dramatiq.queue") == 0


def test_maintenance_commands(db, seeded, capsys):
    from roastq.ops import scheduler

    scheduler.run_tick("reconcile_jobs", "2026-03-01T12:00:00+00:00", lambda: {"resent": 0})
    scheduler.run_tick("reconcile_jobs", "2026-03-01T12:00:20+00:00", lambda: {"resent": 0})
    ticks = out_json(capsys, ["maintenance", "ticks", "--json"])
    assert [(t["task"], t["runs"], t["duplicates"], t["outcome"]) for t in ticks] == [("reconcile_jobs", 1, 1, "ok")]
    result = out_json(capsys, ["maintenance", "run", "reconcile_jobs", "--json"])
    assert result == {"task": "reconcile_jobs", "result": {"resent": 0, "retired": 0}}
    assert run_cli("maintenance", "run", "nonsense").returncode == 2


def test_costs_command_reads_the_roll_up(db, seeded, capsys):
    from roastq.ops import maintenance

    doc, agent = next(iter(seeded.documents.values())), next(iter(seeded.agents.values()))
    job_id = enqueue_evaluation(doc, agent)
    with db.cursor() as cur:
        cur.execute(
            "INSERT INTO tasks (job_id, name, model, input_tokens, output_tokens, price_usd) VALUES "
            "(%s, 'analysis', 'claude-sonnet-5-5', 1000, 200, 0.006), "
            "(%s, 'self_critique', 'claude-sonnet-5-5', 500, 100, 0.003)",
            (job_id, job_id),
        )
    maintenance.roll_up_costs()
    costs = out_json(capsys, ["costs", "--json"])
    assert [(c["agent_id"], c["model"], c["jobs"], c["tasks"], c["input_tokens"], c["price_usd"]) for c in costs] == [
        (agent, "claude-sonnet-5-5", 1, 2, 1500, 0.009)
    ]
    assert main(["costs", "--days", "0"]) == 2
