"""The execution-counting stress test (issue 13): a message runs once while its first run is alive.

Real worker pools run a few thousand messages (plain, delayed, jobs that complete, fail
transiently, fail permanently or are cancelled, periodic ticks fired twice) while one worker
process is SIGKILLed and restarted and Postgres backends of the workers are terminated; every
execution is recorded with its start and end, and tests/stress.py checks that no message and no
job ran twice at once, that every message ran, and that every job ended as its faults imply.

It runs against our broker and against stock dramatiq-pg's (``xfail(strict=True)``): the stock
run shows that the test catches the defect. The longer variant is bench/bench_run_once.py.
"""

import pytest

import stress

STOCK = pytest.mark.xfail(strict=True, reason="stock dramatiq-pg 0.12 runs messages twice (issue 13)")

pytestmark = pytest.mark.postgres_broker


@pytest.mark.parametrize("broker", ["ours", pytest.param("stock", marks=STOCK)])
def test_every_message_runs_and_never_twice_at_once(database_url, seeded, tmp_path, broker):
    from roastq import db

    db.pool().discard_idle()  # the stress run terminates roastq sessions: none of this process's
    # Stock loses messages besides (its rescans are rare, defect 3): the run is capped sooner.
    scenario = stress.Scenario(timeout_s=150 if broker == "ours" else 60)
    run = stress.run(database_url, scenario, broker=broker, log_dir=str(tmp_path))
    violations = stress.check(database_url, run)
    print(stress.summary(run, violations))
    assert run.killed and run.terminated, "the faults did not happen"
    assert violations == {}, stress.summary(run, violations)
