"""The scheduler fires each periodic task exactly once per tick: two schedulers, restarts.

The guard is tested directly with real concurrent processes on the real database, then through
the real thing: a worker pool and two `periodiq actors` schedulers, one of them restarted
within the minute.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime

from helpers import kill_group, one, rows, start_workers, wait_until

TICK = "2026-03-01T12:00:00+00:00"


def fire_from_processes(tmp_path, n, task, scheduled_at, *, body="ok"):
    """``n`` processes fire the same tick at the same moment; each run of the body appends a
    line to a file. Returns the lines."""
    ran = tmp_path / f"ran-{task}"
    script = textwrap.dedent(f"""
        import os, sys, time
        from roastq.ops import scheduler

        def body():
            with open({str(ran)!r}, "a") as f:
                f.write(str(os.getpid()) + "\\n")
            time.sleep(0.3)  # a task that takes a while: the other fires arrive meanwhile
            if {body!r} == "fail":
                raise RuntimeError("the task broke")
            return {{"pid": os.getpid()}}

        start = float(sys.argv[1])
        time.sleep(max(0.0, start - time.time()))
        scheduler.run_tick({task!r}, {scheduled_at!r}, body)
    """)
    start = time.time() + 2.0  # every process imported and waiting
    procs = [subprocess.Popen([sys.executable, "-c", script, str(start)], env=dict(os.environ)) for _ in range(n)]
    for p in procs:
        assert p.wait(timeout=60) == 0
    return ran.read_text().split() if ran.exists() else []


def test_concurrent_fires_of_one_tick_run_the_task_once(db, tmp_path):
    ran = fire_from_processes(tmp_path, 6, "probe", TICK)
    assert len(ran) == 1
    assert rows(db, "SELECT tick, runs, duplicates, outcome FROM schedule_ticks WHERE task = 'probe'") == [
        (datetime(2026, 3, 1, 12, 0, tzinfo=UTC), 1, 5, "ok")
    ]
    assert one(db, "SELECT result->>'pid' FROM schedule_ticks WHERE task = 'probe'") == ran[0]


def test_a_restart_within_the_minute_does_not_fire_again_but_the_next_minute_does(db, tmp_path):
    from roastq.ops import scheduler

    runs = []
    assert scheduler.run_tick("probe", "2026-03-01T12:00:00+00:00", lambda: runs.append(1) or {}) == {}
    # periodiq restarted at 12:00:41 fires at once for "now": the same tick.
    assert scheduler.run_tick("probe", "2026-03-01T12:00:41+00:00", lambda: runs.append(1) or {}) is None
    assert scheduler.run_tick("probe", "2026-03-01T12:01:00+00:00", lambda: runs.append(1) or {}) == {}
    assert len(runs) == 2
    assert rows(
        db, "SELECT to_char(tick AT TIME ZONE 'UTC', 'HH24:MI'), runs, duplicates FROM schedule_ticks ORDER BY tick"
    ) == [("12:00", 1, 1), ("12:01", 1, 0)]


def test_a_failed_tick_is_recorded_and_not_rerun_the_next_tick_runs(db, tmp_path):
    from roastq.ops import scheduler

    ran = fire_from_processes(tmp_path, 3, "breaks", TICK, body="fail")
    assert len(ran) == 1
    assert one(db, "SELECT outcome, error, runs, duplicates FROM schedule_ticks WHERE task = 'breaks'") == (
        "failed",
        "RuntimeError: the task broke",
        1,
        2,
    )
    assert scheduler.run_tick("breaks", "2026-03-01T12:01:00+00:00", lambda: {"fine": True}) == {"fine": True}


def test_a_message_sent_by_hand_runs_unguarded(db):
    from roastq.ops import scheduler

    assert scheduler.run_tick("probe", None, lambda: {"n": 1}) == {"n": 1}
    assert one(db, "SELECT count(*) FROM schedule_ticks") == 0


def test_periodic_actors_are_declared_on_the_maintenance_queue(broker):
    import actors.periodic
    from roastq.ops.maintenance import TASKS

    assert set(actors.periodic.PERIODIC) == set(TASKS)
    for name, task in TASKS.items():
        actor = broker.get_actor(name)
        assert actor.queue_name == "maintenance"
        assert str(actor.options["periodic"]) == task.cron


def start_scheduler(log_path):
    """A real `periodiq actors` process in its own process group."""
    log = open(log_path, "ab")
    periodiq = os.path.join(os.path.dirname(sys.executable), "periodiq")  # the venv's console script
    return subprocess.Popen(
        [periodiq, "actors"], env=dict(os.environ, LOG_FORMAT="json"), stdout=log, stderr=log, start_new_session=True
    )


def fires(db, task):
    """How many times periodiq sent ``task``, by tick (each fire is its own message)."""
    return dict(
        rows(
            db,
            """
        SELECT date_trunc('minute', (message->'options'->>'scheduled_at')::timestamptz) AS tick, count(*)
        FROM dramatiq.queue WHERE message->>'actor_name' = %s GROUP BY 1""",
            task,
        )
    )


def test_two_schedulers_and_a_restart_fire_each_tick_once(db, sim, tmp_path):
    """Two `periodiq actors` fire every minute task at start-up and again at each minute; one is
    then restarted within the same minute and fires once more. Each tick runs once."""
    every_minute = ["reap_stale_jobs", "recover_orphans"]
    workers = start_workers(threads=2, ANTHROPIC_BASE_URL=sim.url)
    schedulers = []
    try:
        wait_until(lambda: one(db, "SELECT count(*) FROM worker_heartbeats") == 1, timeout=30, what="the worker")
        # Everything below must happen within one minute: periodiq fires at start-up for the
        # current minute; start early in a minute (waits at most ~35 s, once).
        if datetime.now().second > 22:
            time.sleep(61 - datetime.now().second)
        minute = datetime.now(UTC).replace(second=0, microsecond=0)
        schedulers = [start_scheduler(tmp_path / "a.log"), start_scheduler(tmp_path / "b.log")]
        wait_until(
            lambda: all(fires(db, t).get(minute, 0) >= 2 for t in every_minute),
            timeout=30,
            what="both schedulers to fire",
        )
        kill_group(schedulers[0], signal.SIGTERM)
        schedulers[0].wait(timeout=10)
        schedulers[0] = start_scheduler(tmp_path / "a.log")
        wait_until(
            lambda: all(fires(db, t).get(minute, 0) >= 3 for t in every_minute),
            timeout=30,
            what="the restarted scheduler to fire",
        )
        assert datetime.now(UTC).replace(second=0, microsecond=0) == minute, "the test overran its minute"
        for p in schedulers:  # no more fires: only those sent so far are counted below
            kill_group(p, signal.SIGKILL)
            p.wait()
        wait_until(
            lambda: (
                one(db, "SELECT count(*) FROM dramatiq.queue WHERE queue_name = 'maintenance' AND state <> 'done'") == 0
            ),
            timeout=30,
            what="every fire to be processed",
        )
    finally:
        for p in [*schedulers, workers]:
            kill_group(p, signal.SIGKILL)
            p.wait()
    for task in every_minute:
        sent = fires(db, task)
        assert sent[minute] == 3, sent
        ticks = {
            r[0]: r[1:]
            for r in rows(db, "SELECT tick, runs, duplicates, outcome FROM schedule_ticks WHERE task = %s", task)
        }
        # Every tick that was fired ran exactly once; every other fire was counted, not run.
        assert set(ticks) == set(sent)
        for tick, n in sent.items():
            assert ticks[tick] == (1, n - 1, "ok"), (task, tick, ticks[tick], n)
