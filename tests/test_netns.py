"""Many hosts, one Postgres: worker hosts in network namespaces of their own (made here with
``ip netns`` and veth, tests/netns.py) talk to a Postgres across the network. Cutting one host off
mid-job loses nothing: the job completes on another host, with exactly one evaluation version.

What makes it work (docs/scaling.md): every roastq connection asks the server for TCP keepalives
and a TCP user timeout (``DB_PEER_TIMEOUT_S``), so Postgres ends the vanished host's sessions
within seconds; the advisory locks that marked its messages as taken die with them, and the
other hosts' consumers take the messages at their next rescan (``RECOVERY_INTERVAL_S``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from types import SimpleNamespace

import psycopg2
import pytest
from netns import DedicatedPostgres, HostNet, roastq, unavailable, wait

WHY_NOT = unavailable()
if WHY_NOT:
    print(f"\n[roastq tests] network-namespace tests skipped: {WHY_NOT}")
pytestmark = pytest.mark.skipif(bool(WHY_NOT), reason=f"no test hosts: {WHY_NOT}")

PEER_TIMEOUT_S = 4  # a cut host's sessions end ~4 s after it goes silent


def _query(conn, sql, *params):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()


def _one(conn, sql, *params):
    found = _query(conn, sql, *params)
    return found[0][0] if found else None


@pytest.fixture
def hosts(tmp_path):
    """Two empty hosts, the test's own Postgres on the bridge, the simulator there too."""
    from roastq.simulator.server import SimConfig, Simulator

    with HostNet() as net, DedicatedPostgres(net.gateway, port=55432 + os.getpid() % 1000) as pg:
        sim = Simulator(SimConfig(latency_ms=2500, jitter_ms=0, seed=1), host=net.gateway).start()
        try:
            admin = psycopg2.connect(pg.url(), connect_timeout=5)
            admin.autocommit = True
            _query_no_result(admin, "CREATE DATABASE roastq_netns")
            admin.close()
            env = {k: v for k, v in os.environ.items() if k not in ("BROKER_URL", "ANTHROPIC_API_KEY")}
            env.update(
                DATABASE_URL=pg.url("roastq_netns"),
                ANTHROPIC_BASE_URL=sim.url,
                LLM_CACHE_ENABLED="0",
                RECOVERY_INTERVAL_S="1",
                HEARTBEAT_INTERVAL_S="1",
                DB_PEER_TIMEOUT_S=str(PEER_TIMEOUT_S),
                LLM_CALL_TIMEOUT_S="15",
                METRICS_PORT="0",
                LOG_FORMAT="json",
                PYTHONUNBUFFERED="1",
                ROASTQ_HOME=str(tmp_path),
            )
            roastq(env, "migrate")
            seeded = json.loads(roastq(env, "seed", "--json"))
            conn = psycopg2.connect(env["DATABASE_URL"], connect_timeout=5)
            conn.autocommit = True
            yield SimpleNamespace(net=net, env=env, seeded=seeded, conn=conn, tmp=tmp_path, sim=sim)
            conn.close()
        finally:
            sim.stop()


def _query_no_result(conn, sql):
    with conn.cursor() as cur:
        cur.execute(sql)


def start_worker(net, ns, env, tmp_path, threads=2):
    metrics = tmp_path / f"metrics-{ns}"
    metrics.mkdir(exist_ok=True)
    host_env = dict(env, WORKER_HOST=ns, PROMETHEUS_MULTIPROC_DIR=str(metrics))
    return net.spawn(
        ns,
        [sys.executable, "-m", "dramatiq", "actors", "--processes", "1", "--threads", str(threads)],
        host_env,
        tmp_path / f"worker-{ns}.log",
    )


def wait_heartbeat(conn, ns, timeout=60.0):
    wait(
        lambda: _one(
            conn,
            "SELECT count(*) FROM worker_heartbeats WHERE hostname = %s "
            "AND last_seen_at > now() - interval '3 seconds'",
            ns,
        ),
        timeout,
        f"a heartbeat from {ns}",
    )


def test_a_host_cut_off_mid_job_loses_nothing(hosts):
    net, env, seeded, conn, tmp_path = hosts.net, hosts.env, hosts.seeded, hosts.conn, hosts.tmp
    a, b = net.add_host(), net.add_host()
    agent = _one(
        conn,
        "SELECT agent_id::text FROM agent_versions WHERE self_critique_instructions IS NOT NULL ORDER BY name LIMIT 1",
    )  # two LLM calls: about 5 s a job
    document = next(iter(seeded["documents"].values()))

    # Both hosts are up before the enqueue (a host started after it could find the job done under
    # load); whichever takes the job is the one cut off, and the other must finish it.
    for ns in (a, b):
        start_worker(net, ns, env, tmp_path)
    for ns in (a, b):
        wait_heartbeat(conn, ns)
    job_id = roastq(env, "enqueue", "--document-id", document, "--agent-id", agent).strip()
    holder = []

    def running_somewhere():
        worker = _one(conn, "SELECT worker_id FROM jobs WHERE id = %s AND status = 'RUNNING'", job_id)
        holder[:] = [worker.split(":")[0]] if worker else []
        return bool(holder)

    wait(running_somewhere, 30, "the job RUNNING on a host")
    if holder[0] == b:
        a, b = b, a
    assert holder[0] == a

    net.cut(a)
    cut_at = time.monotonic()
    runners = set()

    def completed():
        status, worker = _query(conn, "SELECT status, worker_id FROM jobs WHERE id = %s", job_id)[0]
        if worker:
            runners.add(worker.split(":")[0])
        return status == "COMPLETED"

    wait(completed, 60, "the job to complete on another host")
    took = time.monotonic() - cut_at
    assert b in runners, f"the job ran on {runners}, never on {b}"
    assert _one(conn, "SELECT count(*) FROM evaluation_versions WHERE job_id = %s", job_id) == 1
    assert [
        r[0] for r in _query(conn, "SELECT outcome FROM job_attempts WHERE job_id = %s ORDER BY attempt", job_id)
    ] == ["crashed", "completed"]
    # The server ended host a's sessions itself (nothing from a reached it to close them).
    assert _one(conn, "SELECT count(*) FROM pg_stat_activity WHERE client_addr = %s", net.hosts[a]) == 0
    print(f"\n[netns] host {a} cut mid-job: completed on {b} {took:.1f} s later")
    assert took < 45  # peer timeout + rescan + the job's own ~5 s, with room for a slow machine

    # Host a comes back: whatever its stale attempt does now, the result stands alone.
    net.restore(a)
    wait_heartbeat(conn, a, timeout=60)
    time.sleep(3)
    assert _one(conn, "SELECT count(*) FROM evaluation_versions WHERE job_id = %s", job_id) == 1
    assert _one(conn, "SELECT status FROM jobs WHERE id = %s", job_id) == "COMPLETED"


def test_hosts_share_the_queue_the_rate_limit_and_the_ledger(hosts):
    """Two hosts drain one queue; the shared rate limiter (in Postgres) paces their calls together,
    and both book their spend in the one ledger."""
    net, conn = hosts.net, hosts.conn
    hosts.sim.configure(latency_ms=50, jitter_ms=0)
    env = dict(hosts.env, LLM_RPM_LIMIT="120")  # paced at 95 %: one call every ~0.53 s, all hosts together
    a, b = net.add_host(), net.add_host()
    for ns in (a, b):
        start_worker(net, ns, env, hosts.tmp)
    for ns in (a, b):
        wait_heartbeat(conn, ns)
    agent = _one(
        conn, "SELECT agent_id::text FROM agent_versions WHERE self_critique_instructions IS NULL ORDER BY name LIMIT 1"
    )  # one LLM call a job
    document = next(iter(hosts.seeded["documents"].values()))
    script = (
        "import json, sys; from roastq.api import enqueue_evaluations; "
        "print(json.dumps(enqueue_evaluations([(sys.argv[1], sys.argv[2])] * 10)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, document, agent], env=env, capture_output=True, text=True, timeout=60, check=True
    )
    job_ids = json.loads(done.stdout)
    runners = set()

    def all_done():
        for _status, worker in _query(conn, "SELECT status, worker_id FROM jobs WHERE id = ANY(%s::uuid[])", job_ids):
            if worker:
                runners.add(worker.split(":")[0])
        return (
            _one(conn, "SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[]) AND status = 'COMPLETED'", job_ids) == 10
        )

    wait(all_done, 60, "the ten jobs", interval=0.05)
    assert runners == {a, b}
    times = sorted(r["time"] for r in hosts.sim.requests() if r["job_id"] in job_ids)
    assert len(times) == 10
    gaps = [later - earlier for earlier, later in zip(times, times[1:])]
    assert min(gaps) >= 0.45, f"calls from the two hosts closer than the shared pace allows: {gaps}"
    assert _one(conn, "SELECT count(*) FROM job_attempts WHERE error_class = 'RATE_LIMITED'") == 0
    assert _one(conn, "SELECT sum(price_usd) FROM llm_spend_daily") == _one(conn, "SELECT sum(price_usd) FROM tasks")
