"""The execution-counting stress test (issue 13): a message runs once while its first run is alive.

Real worker pools run a few thousand messages (plain, delayed, jobs that complete, fail
transiently, fail permanently or are cancelled, periodic ticks fired twice) while one worker
process is SIGKILLed and restarted and Postgres backends of the workers are terminated; every
execution is recorded with its start and end, and tests/stress.py checks that no message and no
job ran twice at once, that every message ran, and that every job ended as its faults imply.

It runs against our broker, and against stock dramatiq-pg's (``STRESS_BROKER=stock``, on our
pool, with the middleware that matters here), which must fail it (``xfail(strict=True)``), as the
broker regression tests do: it shows the test catches what it is for. Deliveries commit slowly
(``Scenario.slow_commit_s``, as on a busy disk), so the moment between a consumer letting go of
a message and its new state committing is as long as it is in production, and the consumers
rescan while messages run. bench/bench_run_once.py runs the same scenario at a larger scale,
and against older code, side by side (docs/benchmarks.md).
"""

import pytest
import stress

pytestmark = pytest.mark.postgres_broker

STOCK = pytest.mark.xfail(strict=True, reason="stock dramatiq-pg 0.12 runs messages twice (issue 13)")


@pytest.mark.parametrize("broker", ["ours", pytest.param("stock", marks=STOCK)])
def test_every_message_runs_and_never_twice_at_once(database_url, seeded, tmp_path, broker):
    from roastq import db

    db.pool().discard_idle()  # the stress run terminates roastq sessions: none of this process's
    # Stock recovers orphans only when a consumer restarts: capped, its run fails on time too.
    scenario = stress.Scenario(timeout_s=120.0) if broker == "stock" else stress.Scenario()
    run = stress.run(database_url, scenario, broker=broker, log_dir=str(tmp_path))
    violations = stress.check(database_url, run)
    print(stress.summary(run, violations))
    assert run.killed and run.terminated, "the faults did not happen"
    assert violations == {}, stress.summary(run, violations)
