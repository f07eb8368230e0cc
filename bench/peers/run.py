"""The peer comparison (issue 14): the same workloads against roastq and other Postgres queues,
one system at a time, ``--reps`` rounds (systems interleaved within a round), medians printed.

    make bench-peers                     # or: .venv/bin/python bench/peers/run.py [--reps 3]
    .venv/bin/python bench/peers/run.py --systems jobs,pgqueuer --workloads a,b

The PyPI peers (pgqueuer, procrastinate) are installed at run time into a venv of their own,
``bench/peers/.venv`` (pinned below), never into the project's. The npm peers (pg-boss,
graphile-worker) and Node 22 itself (the ``node`` package from the npm registry: the machine's own
node may be older) are installed at run time into ``bench/peers/.node`` with the machine's npm,
pinned below; without npm, or if that install or the Node 22 it gives fails, those two systems are
skipped with the reason printed on one line. Workloads: ``peerlib.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
from peerlib import median  # noqa: E402

PEER_VENV = HERE / ".venv"
PEER_PACKAGES = ["pgqueuer==1.6.0", "procrastinate==3.10.0", "psycopg[binary]==3.3.9", "asyncpg==0.32.0"]
NODE_DIR = HERE / ".node"  # git-ignored; sys_pgboss.py and sys_graphile.py run bin/node from it
NODE_PACKAGES = {"node": "22.23.3", "pg-boss": "12.38.0", "graphile-worker": "0.18.0", "pg": "8.23.1"}
NODE_SYSTEMS = ("pgboss", "graphile")
PEER_VENV_SYSTEMS = ("pgqueuer", "procrastinate", *NODE_SYSTEMS)  # the Node peers' Python side: psycopg

SYSTEMS = {  # key: (label, command)
    "jobs": ("roastq jobs (full stack, default logs)", [sys.executable, str(HERE / "sys_dramatiq.py"), "jobs"]),
    "plain": (
        "roastq plain (our broker + middleware, no job rows)",
        [sys.executable, str(HERE / "sys_dramatiq.py"), "plain"],
    ),
    "stock": ("stock dramatiq-pg 0.12 (no job rows)", [sys.executable, str(HERE / "sys_dramatiq.py"), "stock"]),
    "procrastinate": (
        "procrastinate 3.10 (PyPI)",
        [str(PEER_VENV / "bin" / "python"), str(HERE / "sys_procrastinate.py")],
    ),
    "pgqueuer": ("pgqueuer 1.6 (PyPI)", [str(PEER_VENV / "bin" / "python"), str(HERE / "sys_pgqueuer.py")]),
    "pgboss": ("pg-boss 12 (npm)", [str(PEER_VENV / "bin" / "python"), str(HERE / "sys_pgboss.py")]),
    "graphile": ("graphile-worker 0.18 (npm)", [str(PEER_VENV / "bin" / "python"), str(HERE / "sys_graphile.py")]),
}
COLUMNS = [
    ("a_per_s", "A drain/s", "{:,.0f}"),
    ("a_steady_per_s", "A steady/s", "{:,.0f}"),
    ("a_worker_cpu_ms", "A worker CPU ms/job", "{:.2f}"),
    ("a_pg_cpu_ms", "A Postgres CPU ms/job", "{:.2f}"),
    ("e_per_s", "E 1-by-1/s", "{:,.0f}"),
    ("b_p50_ms", "B p50 ms", "{:.1f}"),
    ("b_p99_ms", "B p99 ms", "{:.1f}"),
    ("c_ratio", "C@100", "{:.3f}"),
    ("c500_ratio", "C@500", "{:.3f}"),
    ("rss_mib", "RSS MiB", "{:.0f}"),
]


def ensure_peer_venv() -> None:
    stamp = PEER_VENV / ".stamp"
    if stamp.exists() and stamp.read_text() == " ".join(PEER_PACKAGES):
        return
    print(f"# installing the peers into {PEER_VENV} (not the project's venv)", flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(PEER_VENV)], check=True)
    subprocess.run(
        [
            str(PEER_VENV / "bin" / "python"),
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            *PEER_PACKAGES,
        ],
        check=True,
    )
    stamp.write_text(" ".join(PEER_PACKAGES))


def ensure_node() -> str | None:
    """Install Node 22 and the npm peers into NODE_DIR (once a pin set); the reason if that fails."""
    stamp, node = NODE_DIR / ".stamp", NODE_DIR / "node_modules" / ".bin" / "node"
    pins = " ".join(f"{k}@{v}" for k, v in NODE_PACKAGES.items())
    if stamp.exists() and stamp.read_text() == pins and node.exists():
        return None
    npm = shutil.which("npm")
    if npm is None:
        return "no npm on PATH to install Node 22 and the npm peers with"
    print(f"# installing {pins} into {NODE_DIR}", flush=True)
    NODE_DIR.mkdir(exist_ok=True)
    stamp.unlink(missing_ok=True)
    (NODE_DIR / "package.json").write_text(json.dumps({"private": True, "dependencies": NODE_PACKAGES}, indent=1))
    try:
        out = subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=NODE_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=600,
        )
    except subprocess.TimeoutExpired:
        return "npm install did not finish within 600 s"
    if out.returncode != 0:
        last = (out.stdout.strip().splitlines() or ["no output"])[-1]
        return f"npm install failed (exit {out.returncode}): {last}"
    try:
        version = subprocess.run([str(node), "--version"], stdout=subprocess.PIPE, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"the installed node does not run: {exc}"
    if not version.startswith("v22."):
        return f"the installed node is {version.strip() or 'nothing'}, not Node 22"
    stamp.write_text(pins)
    return None


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--systems", default=",".join(SYSTEMS))
    parser.add_argument("--workloads", default="a,e,b,c,c500")
    parser.add_argument("--out", default=str(ROOT / ".roastq" / "bench" / "peers.json"))
    args = parser.parse_args()
    systems = args.systems.split(",")
    if any(s in NODE_SYSTEMS for s in systems):
        reason = ensure_node()
        if reason is not None:
            print(f"# skipping {', '.join(s for s in systems if s in NODE_SYSTEMS)}: {reason}", flush=True)
            systems = [s for s in systems if s not in NODE_SYSTEMS]
    if any(s in PEER_VENV_SYSTEMS for s in systems):
        ensure_peer_venv()
    (ROOT / ".roastq" / "bench").mkdir(parents=True, exist_ok=True)
    print(
        f"# peers: {os.cpu_count()} cores, load average {load()} at start; "
        f"{args.reps} reps of {args.workloads} a system",
        flush=True,
    )
    runs: dict[str, list[dict]] = {s: [] for s in systems}
    started = time.monotonic()
    for rep in range(args.reps):
        for key in systems:
            cmd = SYSTEMS[key][1] + args.workloads.split(",")
            out = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
            if out.returncode != 0:
                print(f"# {key} rep {rep + 1} failed (exit {out.returncode})", flush=True)
                continue
            result = json.loads(out.stdout.strip().splitlines()[-1])
            result["load"] = load()
            runs[key].append(result)
            print(f"# rep {rep + 1} {key}: {json.dumps(result)}", flush=True)
    Path(args.out).write_text(json.dumps(runs, indent=1))
    print(
        f"\n# medians of {args.reps} reps; load average {load()} at the end; "
        f"{time.monotonic() - started:.0f} s in all\n"
    )
    header = "| system | " + " | ".join(c[1] for c in COLUMNS) + " |"
    print(header)
    print("|---|" + "---:|" * len(COLUMNS))
    medians = {}
    for key in systems:
        medians[key] = {c[0]: median([r.get(c[0]) for r in runs[key]]) for c in COLUMNS}
        cells = [
            ("–" if medians[key][c[0]] != medians[key][c[0]] else c[2].format(medians[key][c[0]])) for c in COLUMNS
        ]
        print(f"| {SYSTEMS[key][0]} | " + " | ".join(cells) + " |")
    if "jobs" in medians:
        base = medians["jobs"]
        print("\n# roastq jobs / each system, same run (A, E, C: above 1 is roastq faster; B: below 1)")
        for key in systems:
            m = medians[key]
            if key != "jobs" and m["a_per_s"] == m["a_per_s"]:
                print(
                    f"#   {key}: A {base['a_per_s'] / m['a_per_s']:.2f}, E {base['e_per_s'] / m['e_per_s']:.2f}, "
                    f"B p50 {base['b_p50_ms'] / m['b_p50_ms']:.2f}, C {base['c_ratio'] / m['c_ratio']:.2f}"
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
