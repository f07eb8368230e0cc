"""The workloads of the peer comparison, the same for every system (standard library only: it runs
in the project's venv and in the peers' venv alike).

A job body reports to the harness with one UDP datagram on the loopback (``probe``): the job's
tag, the wall-clock time and the worker's pid. That needs nothing from the system under test, so
every system is timed the same way, by the same clock. The Node peers' job bodies (pg-boss,
graphile-worker: ``node/probe.mjs``) send the same datagram, the time from ``Date.now()`` (ms).

* A: ``A_JOBS`` no-op jobs enqueued in one batch, then a worker started at concurrency 10 and timed
  from its launch (start-up counted) to the last job's end; ``a_steady`` is the rate from the first
  job's end to the last's.
* E: ``E_JOBS`` enqueues, one call (and one commit) each, no worker running.
* B: an idle worker (concurrency 10): ``B_JOBS`` jobs 20 ms apart, latency from just before the
  enqueue call to the start of the job's body.
* C: ``C_JOBS`` jobs that each wait 1 s, at 100 in flight (and at 500: ``c500``), the worker up and
  idle; timed from just before the batch enqueue to the last job's end, against whole rounds.
  The worker's resident memory is read at the end of the 100-in-flight run.
* steady / hold (issue 14, item 5): ``STEADY_RATE`` jobs a second offered one call at a time for
  ``STEADY_S`` seconds to an idle worker (concurrency 10), latency to the job body's start as in B;
  ``hold`` does the same while another session sits ``idle in transaction`` holding back vacuum
  the whole time (``psql``, standard input left open after ``BEGIN; SELECT txid_current();``).
  Per minute: jobs started, latency p50 / p99; at the end the tables' dead rows. Needs the
  system's ``dsn``.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

A_JOBS, E_JOBS, B_JOBS, C_JOBS = (
    int(os.environ.get(f"PEER_{w}_JOBS", d)) for w, d in (("A", 5000), ("E", 5000), ("B", 200), ("C", 600))
)
STEADY_S = float(os.environ.get("PEER_STEADY_S", "600"))
STEADY_RATE = float(os.environ.get("PEER_STEADY_RATE", "100"))
TIMEOUT_S = float(os.environ.get("PEER_TIMEOUT_S", "600"))  # for the whole of A; C and B wait less
B_GAP_S, C_WAIT_S = 0.02, 1.0

_sock = None


def probe(tag) -> None:
    """Called by a job body: tell the harness that job ``tag`` is here now."""
    global _sock
    if _sock is None:
        _sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    _sock.sendto(f"{tag} {time.time():.6f} {os.getpid()}".encode(), ("127.0.0.1", int(os.environ["PEER_PROBE_PORT"])))


class Probe:
    """The harness's end: receives the job bodies' datagrams on a port of its own."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.seen: dict[str, float] = {}
        self.pids: set[int] = set()
        self._cv = threading.Condition()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self):
        while True:
            data = self.sock.recv(256).decode().split()
            with self._cv:
                self.seen.setdefault(data[0], float(data[1]))
                self.pids.add(int(data[2]))
                self._cv.notify_all()

    def reset(self):
        with self._cv:
            self.seen.clear()

    def wait_count(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cv:
            while len(self.seen) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"peers: timed out with {len(self.seen)} of {n} jobs reported")
                self._cv.wait(left)

    def wait_tag(self, tag: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        with self._cv:
            while tag not in self.seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SystemExit(f"peers: job {tag} not reported within {timeout} s")
                self._cv.wait(left)
            return self.seen[tag]


def rss_mib(pid: int) -> float:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return float("nan")


def cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a live process has used; 0 if it is gone."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def postgres_cpu_s() -> float:
    """CPU seconds used so far by the live processes named postgres (the server and backends)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if open(f"/proc/{entry}/comm").read().strip() == "postgres":
                    total += cpu_s(int(entry))
            except (FileNotFoundError, ProcessLookupError):
                pass
    return total


def percentile(values, q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


class System:
    """What a system under test provides. ``probe_at`` is "start" or "end" of the job body."""

    name = "?"
    dsn = ""  # its database's URL (for the hold workload's psql sessions)

    def setup(self) -> None: ...  # a fresh database with the system's schema
    def enqueue_batch(self, n: int) -> None: ...  # n no-op jobs (or C's waiting jobs) at once
    def enqueue_one(self) -> str: ...  # one job; return its tag
    def start_worker(self, concurrency: int, wait_s: float, probe_at: str, port: int): ...
    def stop_worker(self, worker) -> None:  # a worker process: SIGTERM, killed after 10 s
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()

    def close(self) -> None: ...


def _warm(system: System, probe: Probe) -> None:
    """The worker is up when a first job has run."""
    tag = system.enqueue_one()
    probe.wait_tag(tag, 120)
    probe.reset()


def run_a(system: System, probe: Probe) -> dict:
    system.setup()
    system.enqueue_batch(A_JOBS)
    probe.reset()
    probe.pids.clear()
    pg_cpu = postgres_cpu_s()
    launched = time.time()
    worker = system.start_worker(10, 0.0, "end", probe.port)
    try:
        probe.wait_count(A_JOBS, TIMEOUT_S)
        # CPU a job, read before the worker stops: the figure a busy shared host disturbs least.
        # The worker's: its job-running processes from their start (boot included); Postgres's:
        # the live server processes' (a backend that ended during the drain is not counted).
        worker_cpu = sum(cpu_s(pid) for pid in probe.pids)
        pg_cpu = postgres_cpu_s() - pg_cpu
    finally:
        system.stop_worker(worker)
    times = sorted(probe.seen.values())
    return {
        "a_per_s": A_JOBS / (times[-1] - launched),
        "a_steady_per_s": (A_JOBS - 1) / (times[-1] - times[0]),
        "a_first_s": times[0] - launched,  # the worker's start-up: launch to the first job's end
        "a_worker_cpu_ms": worker_cpu / A_JOBS * 1000,
        "a_pg_cpu_ms": pg_cpu / A_JOBS * 1000,
    }


def run_e(system: System, probe: Probe) -> dict:
    system.setup()
    started = time.perf_counter()
    for _ in range(E_JOBS):
        system.enqueue_one()
    return {"e_per_s": E_JOBS / (time.perf_counter() - started)}


def run_b(system: System, probe: Probe) -> dict:
    system.setup()
    worker = system.start_worker(10, 0.0, "start", probe.port)
    try:
        _warm(system, probe)
        latencies = []
        for _ in range(B_JOBS):
            before = time.time()
            tag = system.enqueue_one()
            latencies.append((probe.wait_tag(tag, 30) - before) * 1000)
            time.sleep(B_GAP_S)
    finally:
        system.stop_worker(worker)
    return {"b_p50_ms": percentile(latencies, 0.5), "b_p99_ms": percentile(latencies, 0.99)}


def run_c(system: System, probe: Probe, in_flight: int) -> dict:
    system.setup()
    worker = system.start_worker(in_flight, C_WAIT_S, "end", probe.port)
    try:
        _warm(system, probe)
        probe.pids.clear()
        before = time.time()
        system.enqueue_batch(C_JOBS)
        probe.wait_count(C_JOBS, 300)
        rss = max(rss_mib(pid) for pid in probe.pids)
    finally:
        system.stop_worker(worker)
    span = max(probe.seen.values()) - before
    ideal = math.ceil(C_JOBS / in_flight) * C_WAIT_S
    key = "c" if in_flight == 100 else f"c{in_flight}"
    out = {f"{key}_ratio": ideal / span}
    if in_flight == 100:
        out["rss_mib"] = rss
    return out


def _psql(dsn: str, sql: str) -> str:
    return subprocess.run(["psql", dsn, "-XAtqc", sql], check=True, stdout=subprocess.PIPE, text=True).stdout.strip()


DEAD_ROWS = """SELECT coalesce(string_agg(format('%s %s/%s', relname, n_dead_tup, n_live_tup), ', ' ORDER BY relname), '')
FROM pg_stat_user_tables
WHERE relname IN ('jobs', 'job_attempts', 'queue', 'pgqueuer', 'procrastinate_jobs', 'job_common', '_private_jobs')"""


def run_steady(system: System, probe: Probe, hold: bool) -> dict:
    """A steady offered load for STEADY_S seconds; with ``hold``, beside a session idle in a
    transaction that has an xid (vacuum can remove no row deleted or updated after it began)."""
    system.setup()
    worker = system.start_worker(10, 0.0, "start", probe.port)
    holder = None
    try:
        _warm(system, probe)
        if hold:
            holder = subprocess.Popen(
                ["psql", system.dsn, "-Xq"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True
            )
            holder.stdin.write("BEGIN; SELECT txid_current();\n")
            holder.stdin.flush()
            time.sleep(0.5)
            idle = _psql(system.dsn, "SELECT count(*) FROM pg_stat_activity WHERE state = 'idle in transaction'")
            if idle == "0":
                raise SystemExit("peers: the holding session is not idle in transaction")
        sent: dict[str, float] = {}
        n = int(STEADY_S * STEADY_RATE)
        t0 = time.time()
        next_report = t0 + 60
        for i in range(n):
            due = t0 + i / STEADY_RATE
            pause = due - time.time()
            if pause > 0:
                time.sleep(pause)
            before = time.time()
            sent[system.enqueue_one()] = before
            if before >= next_report:
                next_report += 60
                print(
                    f"  [{system.name}] {'hold' if hold else 'steady'}: {i + 1:,} of {n:,} sent, "
                    f"{len(probe.seen):,} started",
                    file=sys.stderr,
                    flush=True,
                )
        offered_s = time.time() - t0
        try:
            probe.wait_count(n, 120)
        except SystemExit as exc:
            print(f"  {exc}", file=sys.stderr, flush=True)
        dead = _psql(system.dsn, DEAD_ROWS)
    finally:
        if holder is not None:
            holder.stdin.close()
            holder.wait(10)
        system.stop_worker(worker)
    seen = dict(probe.seen)
    minutes = max(1, int(STEADY_S // 60))
    per_minute = []
    for m in range(minutes):
        lo, hi = t0 + 60 * m, t0 + 60 * (m + 1)
        started = sum(1 for t in seen.values() if lo <= t < hi)
        lat = [(seen[tag] - b) * 1000 for tag, b in sent.items() if lo <= b < hi and tag in seen]
        per_minute.append(
            {
                "minute": m + 1,
                "started_per_s": round(started / 60, 1),
                "p50_ms": round(percentile(lat, 0.5), 1) if lat else None,
                "p99_ms": round(percentile(lat, 0.99), 1) if lat else None,
            }
        )
        print(f"  [{system.name}] minute {per_minute[-1]}", file=sys.stderr, flush=True)
    latencies = [(seen[tag] - b) * 1000 for tag, b in sent.items() if tag in seen]
    key = "hold" if hold else "steady"
    first, last = per_minute[0]["started_per_s"], per_minute[-1]["started_per_s"]
    return {
        f"{key}_offered_per_s": n / offered_s,
        f"{key}_started": len(latencies),
        f"{key}_missing": n - len(latencies),
        f"{key}_last_over_first": (last / first) if first else float("nan"),
        f"{key}_p50_ms": percentile(latencies, 0.5),
        f"{key}_p99_ms": percentile(latencies, 0.99),
        f"{key}_worst_minute_p99_ms": max((m["p99_ms"] or 0) for m in per_minute),
        f"{key}_dead_rows": dead,
        f"{key}_minutes": per_minute,
    }


def main(system: System, argv=None) -> int:
    """Run the workloads named in argv (a, e, b, c, c500; steady, hold) once; print one JSON line."""
    workloads = (argv if argv is not None else sys.argv[1:]) or ["a", "e", "b", "c", "c500"]
    probe = Probe()
    result = {"system": system.name}
    try:
        for w in workloads:
            started = time.monotonic()
            if w == "a":
                result.update(run_a(system, probe))
            elif w == "e":
                result.update(run_e(system, probe))
            elif w == "b":
                result.update(run_b(system, probe))
            elif w == "c":
                result.update(run_c(system, probe, 100))
            elif w == "c500":
                result.update(run_c(system, probe, 500))
            elif w in ("steady", "hold"):
                result.update(run_steady(system, probe, hold=w == "hold"))
            print(f"  [{system.name}] {w} done in {time.monotonic() - started:.1f} s", file=sys.stderr, flush=True)
    finally:
        system.close()
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.items()}), flush=True)
    return 0


def median(values):
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(values) if values else float("nan")
