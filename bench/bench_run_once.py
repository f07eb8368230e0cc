"""The execution-counting stress run, longer (issue 13): tests/test_stress.py's scenario at a
larger scale, against our broker, against the code of an older revision ("before": main before
the fix, by default) and against stock dramatiq-pg, side by side in one run.

Prints, for each: messages, executions, the faults injected, and every kind of violation found
(overlapping executions of one message or job, messages that never ran, jobs in a wrong state).

    .venv/bin/python bench/bench_run_once.py [--scale 3] [--runs 1] [--before 23877b0] [--brokers ours,before,stock]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
import stress  # noqa: E402
from _common import ROOT, connect, fresh_database, machine, seed_minimal  # noqa: E402

TABLES = "job_attempts, evaluation_versions, tasks, jobs, dramatiq.queue, worker_heartbeats, schedule_ticks"


def checkout(ref: str, into: str) -> Path:
    """The tree of ``ref``, exported (no worktree, no change to the repository)."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    return Path(into)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=float, default=3.0, help="messages: the test's scenario times this")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--before", default="23877b0", help="the revision before the fix")
    parser.add_argument("--brokers", default="ours,before,stock")
    args = parser.parse_args()

    url = fresh_database("roastq_runonce")
    conn = connect()
    seed_minimal(conn, n_documents=4)
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS stress_plan")  # stress.run creates it
    base = stress.Scenario()
    k = args.scale
    scenario = stress.Scenario(
        plain=int(base.plain * k),
        delayed=int(base.delayed * k),
        ok_jobs=int(base.ok_jobs * k),
        transient_jobs=int(base.transient_jobs * k),
        permanent_jobs=int(base.permanent_jobs * k),
        cancel_jobs=int(base.cancel_jobs * k),
        ticks=int(base.ticks * k),
        chunks=int(base.chunks * k),
        terminations=int(base.terminations * k),
        timeout_s=base.timeout_s * k,
    )
    before_dir = tempfile.mkdtemp(prefix="roastq-before-")
    print(f"# {machine()}; scenario x{k}: {scenario}")
    for i in range(args.runs):
        for which in args.brokers.split(","):
            with conn.cursor() as cur:
                cur.execute(f"TRUNCATE {TABLES} CASCADE")
            code_root = ROOT
            if which == "before":
                code_root = (
                    checkout(args.before, before_dir) if not any(Path(before_dir).iterdir()) else Path(before_dir)
                )
            started = time.monotonic()
            run = stress.run(
                url,
                scenario,
                broker="stock" if which == "stock" else "ours",
                code_root=code_root,
                label=which,
                env={"LOG_LEVEL": "INFO"},
            )
            violations = stress.check(url, run)
            print(f"run {i + 1} ({time.monotonic() - started:.0f} s) " + stress.summary(run, violations), flush=True)
            if not violations:
                print("  no violation")
    conn.close()


if __name__ == "__main__":
    main()
