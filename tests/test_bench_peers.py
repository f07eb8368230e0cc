"""The peer benchmark's roastq systems still run against the code they measure: a tiny A drain
and E through ``bench/peers/sys_dramatiq.py`` (the harness broke once, silently, when the jobs
table's queries moved: every no-op job failed and the drain waited for its time-out)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("mode", ["jobs", "plain"])
def test_the_peer_harness_drains_and_enqueues_through_roastq(mode, database_url):
    server, name = database_url.rsplit("/", 1)[0] + "/postgres", f"roastq_peers_test_{mode}_{os.getpid()}"
    env = dict(
        os.environ,
        BENCH_POSTGRES=server,
        PEER_DATABASE=name,
        PEER_A_JOBS="40",
        PEER_E_JOBS="20",
        PEER_TIMEOUT_S="60",
    )
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    try:
        out = subprocess.run(
            [sys.executable, str(ROOT / "bench" / "peers" / "sys_dramatiq.py"), mode, "a", "e"],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        admin = psycopg2.connect(server)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
            cur.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.close()
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["a_per_s"] > 0 and result["a_steady_per_s"] > 0 and result["e_per_s"] > 0
