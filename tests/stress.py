"""The execution-counting stress scenario (issue 13), shared by tests/test_stress.py and
bench/bench_run_once.py.

Real worker pools (``dramatiq stress_actors``, tests/stress_actors.py) run a mix of plain
messages, delayed messages, job messages (completing, failing transiently then completing,
failing permanently, cancelled) and periodic ticks (each sent twice, as two schedulers would),
sent in chunks while they run; a few of them work for seconds, as LLM calls do. Meanwhile one
worker process is SIGKILLed (the OOM killer) and its pool restarted, as a supervisor does, and
Postgres backends of the workers (pool, consumer, listener and heartbeat sessions, and, as the
killed pool comes back, the session holding the survivor's running messages) are terminated,
and every listening session is ended a few times (each consumer restarts and rescans). The end
of each delivery commits slowly (a deferred trigger, ``slow_commit_s``), as on a busy disk.
Every execution is recorded with its start and end, and every fault with the worker it hit.

``check`` then lists every violation of: each message ran to its end at least once; no two
executions of one message overlap in time; a message that succeeded runs again only where a
fault explains it (its process killed, or one of its sessions ended, in between); no two
executions (attempts) of one job overlap; each job ends in the state its kind implies, with
exactly one evaluation version when completed; each tick's task ran at most once.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dramatiq
import psutil
import psycopg2
import psycopg2.extras
from dramatiq_pg.utils import tidy4json

ROOT = Path(__file__).resolve().parent.parent
INF = float("inf")


@dataclass
class Scenario:
    plain: int = 1600
    delayed: int = 200
    ok_jobs: int = 300
    transient_jobs: int = 100
    permanent_jobs: int = 40
    cancel_jobs: int = 40
    ticks: int = 20
    slow: float = 0.03  # this share of plain messages and of completing jobs works 2 to 6 s (an LLM call)
    long: int = 8  # plain messages of 10 to 12 s, sent once the killed pool is back: Postgres then ends
    # the session holding their locks, then every listening session (their consumers rescan)
    pools: int = 2  # worker pools of one process each: killing one leaves the other running
    threads: int = 8
    chunks: int = 6  # sent in this many chunks, one a second, while the workers run
    terminations: int = 4  # rounds of backend terminations
    rescans: int = 4  # rounds of ending every listening session (each consumer restarts and rescans)
    slow_commit_s: float = 0.05  # each delivery's end (ack, nack, requeue) takes this long to commit,
    # as on a busy disk: the moment between "the consumer lets go" and "the state commits" is real
    backends_a_round: int = 3
    timeout_s: float = 240.0  # a loaded machine; a quiet one takes 50 to 80 s


@dataclass
class Run:
    scenario: Scenario
    broker: str
    log_path: str
    started: float = 0.0
    finished: float = 0.0
    killed: dict = field(default_factory=dict)  # pid -> time.time() of the SIGKILL
    kill_to_rerun_s: list = field(default_factory=list)
    terminated: int = 0
    hit: list = field(default_factory=list)  # (time.time(), worker pid) of each session ended, and of each kill
    jobs: dict = field(default_factory=dict)  # job_id -> kind
    plain_ids: list = field(default_factory=list)
    tick_ids: dict = field(default_factory=dict)  # message_id -> scheduled_at
    pool_logs: list = field(default_factory=list)
    code_root: Path = ROOT  # the roastq the workers run (bench: an older checkout, "before")


# -- sending --------------------------------------------------------------------------------


def _message(actor: str, args=(), *, queue="stress", options=None, message_id=None):
    message = dramatiq.Message(queue_name=queue, actor_name=actor, args=args, kwargs={}, options=options or {})
    if message_id is not None:
        message = message.copy(message_id=message_id)
    return message


def _enqueue(cur, messages) -> None:
    from roastq import db

    cur.execute(
        db.Q.enqueue_messages,
        {
            "queues": [m.queue_name for m in messages],
            "message_ids": [m.message_id for m in messages],
            "messages": [json.dumps(tidy4json(m)) for m in messages],
        },
    )


def _plan(conn, run: Run) -> list[list]:
    """Write the job rows and the plan; return the messages to send, in chunks."""
    s = run.scenario
    with conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE IF NOT EXISTS stress_plan (job_id uuid PRIMARY KEY, kind text NOT NULL, "
            "fails integer NOT NULL DEFAULT 0, work_s float8)"
        )
        cur.execute("TRUNCATE stress_plan")
        # A slow commit: a deferred trigger that waits at COMMIT of a delivery's end.
        cur.execute(
            "CREATE OR REPLACE FUNCTION stress_slow_commit() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN PERFORM pg_sleep(TG_ARGV[0]::float8); RETURN NULL; END $$"
        )
        cur.execute("DROP TRIGGER IF EXISTS stress_slow_commit ON dramatiq.queue")
        if s.slow_commit_s > 0:
            cur.execute(
                "CREATE CONSTRAINT TRIGGER stress_slow_commit AFTER UPDATE OF state ON dramatiq.queue "
                "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
                "WHEN (OLD.state = 'consumed' AND NEW.state <> 'consumed' AND NEW.queue_name LIKE 'stress%%') "
                f"EXECUTE FUNCTION stress_slow_commit('{float(s.slow_commit_s)}')"
            )
        cur.execute("""
            INSERT INTO evaluations (document_id, agent_id)
            SELECT d.id, a.id FROM documents d CROSS JOIN agents a
            ON CONFLICT (document_id, agent_id) DO NOTHING""")
        cur.execute("""
            SELECT e.id, (SELECT id FROM document_versions WHERE document_id = e.document_id ORDER BY version DESC LIMIT 1),
                   (SELECT id FROM agent_versions WHERE agent_id = e.agent_id ORDER BY version DESC LIMIT 1)
            FROM evaluations e""")
        targets = cur.fetchall()
    assert targets, "no documents and agents: seed first"
    kinds = (
        ["ok"] * s.ok_jobs
        + ["transient"] * s.transient_jobs
        + ["permanent"] * s.permanent_jobs
        + ["cancel"] * s.cancel_jobs
    )
    random.shuffle(kinds)
    messages = []
    jobs = []
    for kind in kinds:
        job_id, message_id = str(uuid.uuid4()), str(uuid.uuid4())
        ev, dv, av = random.choice(targets)
        work_s = random.uniform(2, 6) if kind == "ok" and random.random() < s.slow else None
        jobs.append((job_id, ev, dv, av, message_id, kind, random.randint(1, 2) if kind == "transient" else 0, work_s))
        run.jobs[job_id] = kind
        messages.append(_message("stress_job", (job_id,), message_id=message_id))
    with conn.cursor() as cur:
        cur.execute(
            """
            INSERT INTO jobs (id, evaluation_id, document_version_id, agent_version_id, queue, message_id)
            SELECT * FROM unnest(%s::uuid[], %s::uuid[], %s::uuid[], %s::uuid[], %s::text[], %s::uuid[])""",
            (
                [j[0] for j in jobs],
                [str(j[1]) for j in jobs],
                [str(j[2]) for j in jobs],
                [str(j[3]) for j in jobs],
                ["stress"] * len(jobs),
                [j[4] for j in jobs],
            ),
        )
        cur.execute(
            "INSERT INTO stress_plan SELECT * FROM unnest(%s::uuid[], %s::text[], %s::int[], %s::float8[])",
            ([j[0] for j in jobs], [j[5] for j in jobs], [j[6] for j in jobs], [j[7] for j in jobs]),
        )
    now_ms = int(time.time() * 1000)
    for i in range(s.plain):
        args = (i, random.uniform(2, 6)) if random.random() < s.slow else (i,)
        if i < s.delayed:
            m = _message("stress_plain", args, queue="stress.DQ", options={"eta": now_ms + random.randint(1000, 8000)})
        else:
            m = _message("stress_plain", args)
        run.plain_ids.append(m.message_id)
        messages.append(m)
    base = datetime(2020, 1, 1, tzinfo=UTC)
    for i in range(s.ticks):
        scheduled_at = (base + timedelta(minutes=i)).isoformat()
        for _ in range(2):  # two schedulers fire the same tick
            m = _message("stress_tick", options={"scheduled_at": scheduled_at})
            run.tick_ids[m.message_id] = scheduled_at
            messages.append(m)
    random.shuffle(messages)
    size = -(-len(messages) // s.chunks)
    return [messages[i : i + size] for i in range(0, len(messages), size)]


# -- the worker pools -----------------------------------------------------------------------


def _start_pool(run: Run, index: int, env_extra: dict) -> subprocess.Popen:
    log = open(Path(run.log_path).with_suffix(f".pool{index}.log"), "ab")
    run.pool_logs.append(log.name)
    env = dict(
        os.environ,
        STRESS_LOG=run.log_path,
        STRESS_BROKER=run.broker,
        PYTHONUNBUFFERED="1",
        RECOVERY_INTERVAL_S="1",
        HEARTBEAT_INTERVAL_S="1",
        BACKOFF_SCALE="0.01",
        METRICS_PORT="0",
        LOG_FORMAT="json",
        **env_extra,
    )
    env.setdefault("LOG_LEVEL", "WARNING")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dramatiq",
            "stress_actors",
            "--path",
            str(ROOT / "tests"),
            str(run.code_root),
            "--processes",
            "1",
            "--threads",
            str(run.scenario.threads),
        ],
        env=env,
        stdout=log,
        stderr=log,
        start_new_session=True,
        cwd=run.code_root,
    )


def _send_long(conn, r: Run, n: int) -> list[str]:
    messages = [_message("stress_plain", (-1 - i, random.uniform(10, 12))) for i in range(n)]
    with conn.cursor() as cur:
        _enqueue(cur, messages)
    r.plain_ids.extend(m.message_id for m in messages)
    return ["m:" + m.message_id for m in messages]


def _started(r: Run, keys: list[str]) -> int:
    wanted = set(keys)
    return len({key for phase, key, *_ in _lines(r.log_path) if phase == "start" and key in wanted})


def _worker_pids(conn) -> set[int]:
    with conn.cursor() as cur:
        cur.execute("SELECT pid FROM worker_heartbeats WHERE last_seen_at > now() - interval '3 seconds'")
        return {r[0] for r in cur.fetchall()}


def _kill_a_worker(conn, run: Run, pool: subprocess.Popen) -> int | None:
    """SIGKILL the worker process of ``pool`` (not its main process): as the OOM killer would."""
    children = {p.pid for p in psutil.Process(pool.pid).children(recursive=True)}
    victims = sorted(children & _worker_pids(conn))
    if not victims:
        return None
    pid = victims[0]
    run.killed[pid] = time.time()
    run.hit.append((run.killed[pid], pid))
    os.kill(pid, signal.SIGKILL)
    return pid


def _backends(conn, n: int) -> list:
    """Sessions of the workers to end (backend pid, client port): ``n`` at random (pool, consumer,
    listener and heartbeat ones), and the one that holds the locks of the most running messages (a
    consumer's): those messages then look orphaned while they run."""
    with conn.cursor() as cur:
        cur.execute(
            """
            SELECT pid, client_port FROM pg_stat_activity JOIN (
                (SELECT pid FROM pg_stat_activity
                 WHERE datname = current_database() AND application_name LIKE 'roastq%%'
                   AND pid <> pg_backend_pid() ORDER BY random() LIMIT %s)
                UNION
                (SELECT l.pid FROM pg_locks l
                 JOIN (SELECT roastq_message_lock(queue_name, message_id) AS k FROM dramatiq.queue
                       WHERE queue_name = 'stress' AND state = 'consumed') m
                   ON l.classid = ((m.k >> 32) & 4294967295)::oid AND l.objid = (m.k & 4294967295)::oid
                 WHERE l.locktype = 'advisory' AND l.objsubid = 1
                 GROUP BY l.pid ORDER BY count(*) DESC LIMIT 1)) t USING (pid)""",
            (n,),
        )
        return cur.fetchall()


def _listeners(conn) -> list:
    """The consumers' listening sessions (their last statement: LISTEN, or the scan of pending
    messages that follows it): ended, each consumer restarts, and scans its queue."""
    with conn.cursor() as cur:
        cur.execute("""
            SELECT pid, client_port FROM pg_stat_activity
            WHERE datname = current_database() AND application_name LIKE 'roastq%%'
              AND (query ILIKE 'LISTEN%%' OR query ILIKE 'SELECT message::text%%state IN%%')
              AND pid <> pg_backend_pid()""")
        return cur.fetchall()


def _end_sessions(conn, r: Run, sessions: list) -> None:
    """End ``sessions`` (backend pid, client port), noting which worker process each belonged to
    (found by its client port before it ends) and when."""
    ports = {port for _, port in sessions if port}
    owners = {c.laddr.port: c.pid for c in psutil.net_connections(kind="tcp") if c.laddr and c.laddr.port in ports}
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM unnest(%s::int[]) AS pid", ([p for p, _ in sessions],)
        )
        r.terminated += cur.fetchone()[0]
    now = time.time()
    r.hit.extend((now, owners.get(port)) for _, port in sessions)


def _stop(pool: subprocess.Popen) -> None:
    if pool.poll() is None:
        pool.send_signal(signal.SIGTERM)
        try:
            pool.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(pool.pid, signal.SIGKILL)
            pool.wait()
    try:
        os.killpg(pool.pid, signal.SIGKILL)  # what is left of its group (the exporter)
    except ProcessLookupError:
        pass


# -- the run --------------------------------------------------------------------------------


def run(
    database_url: str,
    scenario: Scenario,
    *,
    broker: str = "ours",
    log_dir: str | None = None,
    env: dict | None = None,
    code_root: Path = ROOT,
    label: str | None = None,
) -> Run:
    log_dir = log_dir or tempfile.mkdtemp(prefix="roastq-stress-")
    r = Run(scenario, broker, os.path.join(log_dir, f"executions-{label or broker}.log"), code_root=Path(code_root))
    open(r.log_path, "w").close()
    env = {"DATABASE_URL": database_url, **(env or {})}
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    pools = []
    try:
        chunks = _plan(conn, r)
        cancels = [j for j, kind in r.jobs.items() if kind == "cancel"]
        r.started = time.time()
        pools = [_start_pool(r, i, env) for i in range(scenario.pools)]
        deadline = time.monotonic() + scenario.timeout_s
        # The sends and the faults are timed from the moment every pool works (a pool takes seconds
        # to start on a loaded machine: faults before then would hit idle workers).
        while len(_worker_pids(conn)) < scenario.pools and time.monotonic() < deadline:
            time.sleep(0.2)
        sent_at = []
        # Faults, spread over the run: (what, when in seconds after the first chunk).
        faults = sorted(
            [("kill", 2.5)]
            + [("terminate", 1.0 + 2.2 * i) for i in range(scenario.terminations)]
            + [("listeners", 1.6 + 2.2 * i) for i in range(scenario.rescans)],
            key=lambda f: f[1],
        )
        restart_at, restarted, long_keys = None, None, None
        while time.monotonic() < deadline:
            now = time.time()
            if chunks and (not sent_at or now - sent_at[-1] >= 1.0):
                with conn.cursor() as cur:
                    _enqueue(cur, chunks.pop(0))
                sent_at.append(now)
            since = now - sent_at[0]
            while faults and since >= faults[0][1]:
                what, _ = faults.pop(0)
                if what == "kill":
                    if _kill_a_worker(conn, r, pools[0]) is not None:
                        restart_at = True
                    else:
                        faults.insert(0, ("kill", since + 0.5))  # not up yet: a little later
                        break
                elif what == "orphan":
                    _end_sessions(conn, r, _backends(conn, 0))
                elif what == "listeners":
                    _end_sessions(conn, r, _listeners(conn))
                else:
                    _end_sessions(conn, r, _backends(conn, scenario.backends_a_round))
            if restart_at and pools[0].poll() is not None:  # the supervisor's part: start it again
                pools[0] = _start_pool(r, 0, env)
                restart_at = None
                restarted = pools[0]
            if restarted is not None and _worker_pids(conn) & {
                p.pid for p in psutil.Process(restarted.pid).children(recursive=True)
            }:
                # Both pools run again: long messages, then their lock holder's session ends, then
                # every listener's (each consumer restarts and scans its queue).
                restarted = None
                long_keys = _send_long(conn, r, scenario.long)
            if long_keys and _started(r, long_keys) >= max(1, len(long_keys) // 2):
                # Half of them run (behind a backlog, that can take a while): now.
                long_keys = None
                faults = sorted(faults + [("orphan", since + 0.5), ("listeners", since + 1.5)], key=lambda f: f[1])
            if cancels and since >= 1.5:
                with conn.cursor() as cur:
                    for job_id in cancels:
                        cur.execute(
                            "UPDATE jobs SET cancel_requested_at = now(), cancel_reason = 'stress', "
                            "updated_at = now(), status = CASE WHEN status = 'PENDING' THEN 'CANCELLED' "
                            "ELSE status END, completed_at = CASE WHEN status = 'PENDING' THEN now() "
                            "ELSE completed_at END WHERE id = %s AND status IN ('PENDING', 'RUNNING')",
                            (job_id,),
                        )
                cancels = []
            if not chunks and not faults and not restart_at and restarted is None and not long_keys and _done(conn, r):
                break
            time.sleep(0.2)
        r.finished = time.time()
    finally:
        for pool in pools:
            _stop(pool)
        with conn.cursor() as cur:
            cur.execute("DROP TRIGGER IF EXISTS stress_slow_commit ON dramatiq.queue")
        conn.close()
    return r


def _done(conn, r: Run) -> bool:
    with conn.cursor() as cur:
        cur.execute(
            "SELECT count(*) FROM jobs WHERE id = ANY(%s::uuid[]) AND status IN ('PENDING', 'RUNNING')", (list(r.jobs),)
        )
        if cur.fetchone()[0]:
            return False
        cur.execute(
            "SELECT count(*) FROM dramatiq.queue WHERE queue_name LIKE 'stress%%' AND state IN ('queued', 'consumed')"
        )
        if cur.fetchone()[0]:
            return False
    ended = {key for phase, key, *_ in _lines(r.log_path) if phase == "end"}
    return all("m:" + m in ended for m in r.plain_ids) and all("m:" + m in ended for m in r.tick_ids)


# -- the checks -----------------------------------------------------------------------------


def _lines(path):
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) == 4:
                yield parts[0], parts[1], int(parts[2]), float(parts[3])


def executions(r: Run) -> dict[str, list[tuple[float, float, int, bool, bool]]]:
    """key -> [(start, end, pid, finished, ok)]; a run killed with its process ends at the kill
    (finished False); ok: it ended without raising."""
    open_runs: dict[tuple[str, int], list[float]] = defaultdict(list)
    runs: dict[str, list] = defaultdict(list)
    for phase, key, pid, t in _lines(r.log_path):
        if phase == "start":
            open_runs[(key, pid)].append(t)
        else:
            runs[key].append((open_runs[(key, pid)].pop(0), t, pid, True, phase == "end"))
    for (key, pid), starts in open_runs.items():
        for start in starts:
            runs[key].append((start, r.killed.get(pid, INF), pid, False, False))
    for key in runs:
        runs[key].sort()
    return runs


def _overlaps(runs) -> list:
    return [(a, b) for a, b in zip(runs, runs[1:]) if b[0] < a[1]]


def reruns(runs, prefix="m:") -> int:
    """Executions of a message that began after an earlier one had succeeded: at least once
    allows them (an acknowledgement lost with its session), but each is work done twice."""
    return sum(
        1
        for key, key_runs in runs.items()
        if key.startswith(prefix)
        for i, b in enumerate(key_runs)
        if any(a[4] and a[1] <= b[0] for a in key_runs[:i])
    )


def unexplained_reruns(r: Run, runs=None) -> list:
    """Re-runs of a message after a run of it had succeeded that no fault explains. At least once
    allows a re-run when the first run's acknowledgement could have been lost: its process was
    killed, or one of its Postgres sessions was ended, between its start and the re-run's. Any
    other re-run is a second delivery of a message whose worker was alive and had finished it: the
    lock let go before the acknowledgement committed."""
    runs = executions(r) if runs is None else runs
    found = []
    for key, key_runs in runs.items():
        if not key.startswith("m:"):
            continue
        for i, b in enumerate(key_runs):
            for a in key_runs[:i]:
                if (
                    a[4]
                    and a[1] <= b[0]
                    and not any((pid is None or pid == a[2]) and a[0] - 0.5 <= t <= b[0] for t, pid in r.hit)
                ):
                    found.append((key, a, b))
                    break
    return found


def check(database_url: str, r: Run) -> dict[str, list]:
    runs = executions(r)
    violations: dict[str, list] = defaultdict(list)
    for key, a, b in unexplained_reruns(r, runs):
        violations["a message ran again after it had succeeded, with no fault to explain it"].append(
            (key, f"ran in pid {a[2]}, again in pid {b[2]} {b[0] - a[1]:.3f} s after")
        )
    succeeded = lambda key: any(run[4] for run in runs.get(key, ()))  # noqa: E731
    for message_id in list(r.plain_ids) + list(r.tick_ids):
        if not succeeded("m:" + message_id):
            violations["message never succeeded"].append(message_id)
    for key, key_runs in runs.items():
        if key.startswith(("m:", "j:", "t:")) and _overlaps(key_runs):
            kind = {"m": "message", "j": "job", "t": "tick"}[key[0]]
            violations[f"two executions of one {kind} overlap"].append((key, _overlaps(key_runs)[0]))
        if key.startswith("t:"):
            if sum(1 for run in key_runs if run[4]) > 1:
                violations["a tick's task ran twice"].append(key)
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:
            cur.execute(
                """
                SELECT j.id::text, j.status, j.error_class,
                       (SELECT count(*) FROM evaluation_versions v WHERE v.job_id = j.id) AS versions
                FROM jobs j WHERE j.id = ANY(%s::uuid[])""",
                (list(r.jobs),),
            )
            states = {row["id"]: row for row in cur.fetchall()}
            cur.execute(
                """
                SELECT a.job_id::text, a.attempt FROM job_attempts a JOIN job_attempts b
                  ON b.job_id = a.job_id AND b.attempt = a.attempt + 1
                WHERE a.job_id = ANY(%s::uuid[]) AND (a.ended_at IS NULL OR b.started_at < a.ended_at)""",
                (list(r.jobs),),
            )
            for row in cur.fetchall():
                violations["a job's attempt began before the one before ended"].append((row["job_id"], row["attempt"]))
    finally:
        conn.close()
    expected = {
        "ok": ("COMPLETED", None, 1),
        "transient": ("COMPLETED", None, 1),
        "permanent": ("FAILED", "INPUT", 0),
        "cancel": ("CANCELLED", None, 0),
    }
    for job_id, kind in r.jobs.items():
        row = states[job_id]
        status, error_class, versions = expected[kind]
        got = (row["status"], row["error_class"] if kind == "permanent" else None, row["versions"])
        if got != (status, error_class, versions):
            violations["a job ended in a state its faults do not imply"].append((job_id, kind, got))
        if kind != "cancel" and not runs.get("j:" + job_id):
            violations["a job never ran"].append(job_id)
    return dict(violations)


def summary(r: Run, violations: dict) -> str:
    runs = executions(r)
    n_exec = sum(len(v) for k, v in runs.items() if k.startswith("m:"))
    n_msgs = len(r.plain_ids) + len(r.tick_ids) + len(r.jobs)
    lines = [
        f"{Path(r.log_path).stem.split('-', 1)[1]}: {n_msgs} messages ({len(r.plain_ids)} plain, {len(r.jobs)} jobs, "
        f"{len(r.tick_ids)} tick fires), {n_exec} executions in {r.finished - r.started:.1f} s; "
        f"{len(r.killed)} worker killed, {r.terminated} backends terminated; "
        f"{reruns(runs)} re-runs of a message after it had succeeded (allowed where a fault explains them: "
        f"{len(unexplained_reruns(r, runs))} not)"
    ]
    for what, items in violations.items():
        lines.append(f"  {what}: {len(items)} (e.g. {items[:2]})")
    return "\n".join(lines)
