"""One peer workload for two checkouts of roastq, run alternately (issue 14: each step's effect).

    .venv/bin/python bench/peers_ab.py /tmp/before /tmp/after [--reps 5] [--mode jobs] [--workloads a]

On a machine whose load swings from one minute to the next, the runs of one checkout after the
other's measure the load as much as the code. Here the two run in turn, ABAB..., each a whole
``bench/peers/sys_dramatiq.py <mode> <workloads>`` from its own tree (its ``roastq`` first on the
path, in the worker too, at the defaults a user runs), and the medians of each figure and their
ratio (after / before) are printed. The checkouts: ``git archive <rev> | tar -x -C /tmp/before``.

``--after-env NAME=VALUE`` (repeatable) sets a variable for the second run of each pair only: one
checkout against itself under two conditions, as the growth run of issue 14 (item 5) does:

    .venv/bin/python bench/peers_ab.py . . --reps 4 --after-env PEER_PREFILL=1000000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(root: Path, mode: str, workloads: list[str], env: dict | None = None) -> dict:
    out = subprocess.run(
        [sys.executable, str(root / "bench" / "peers" / "sys_dramatiq.py"), mode, *workloads],
        cwd=root,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs=2, type=Path)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--mode", default="jobs", choices=["jobs", "plain", "stock"])
    parser.add_argument("--workloads", default="a")
    parser.add_argument("--after-env", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    try:
        after_env = dict(item.split("=", 1) for item in args.after_env)
    except ValueError:
        parser.error(f"--after-env takes NAME=VALUE, not {args.after_env}")
    workloads = args.workloads.split(",")
    names = [str(args.roots[0]), " ".join([str(args.roots[1]), *args.after_env])]
    results: list[list[dict]] = [[], []]
    print(f"# {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f} at start", flush=True)
    for rep in range(args.reps):
        for i, root in enumerate(args.roots):
            result = run(root, args.mode, workloads, after_env if i == 1 else None)
            results[i].append(result)
            shown = {k: v for k, v in result.items() if k != "system"}
            print(f"# rep {rep + 1} {names[i]}: {json.dumps(shown)} load {os.getloadavg()[0]:.2f}", flush=True)
    keys = [k for k, v in results[0][0].items() if isinstance(v, int | float)]
    print(f"\n| figure | {names[0]} | {names[1]} | ratio |\n|---|---:|---:|---:|")
    for key in keys:
        before, after = (statistics.median(r[key] for r in rs if key in r) for rs in results)
        print(f"| {key} | {before:.3f} | {after:.3f} | {after / before if before else float('nan'):.2f} |")
    print(f"\n# medians of {args.reps} alternating reps; load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
