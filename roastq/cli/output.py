"""How the CLI speaks: tables and figures for people, JSON for scripts, progress on stderr, and
the one way a command ends on a usage error (``error: ...``, exit 2)."""

from __future__ import annotations

import functools
import json
import sys
import time
from decimal import Decimal

from roastq import humanize
from roastq.humanize import AgeError


def print_json(data) -> None:
    print(json.dumps(data, indent=2, default=jsonable))


def jsonable(value):
    if isinstance(value, Decimal):
        return float(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)


def table(rows: list[dict], columns: list[str]) -> str:
    if not rows:
        return "(none)"
    cells = [[human(c, r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.upper().ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def human(column: str, value) -> str:
    """A figure for a person, by what its column holds: seconds as ages ('8m 08s'), dollars to the
    cent (a tenth of a cent under a dollar); --json keeps the raw values."""
    if value is not None and column.endswith("_s"):
        return humanize.age(value)
    if value is not None and column.endswith("usd"):
        return humanize.usd(value)
    if isinstance(value, int) and not isinstance(value, bool) and column.endswith(("tokens", "calls")):
        return humanize.count(value)
    return fmt(value)


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, Decimal):
        return f"{value:.4f}"
    if hasattr(value, "strftime"):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    text = str(value)
    return text if len(text) <= 60 else text[:57] + "..."


class UsageError(ValueError):
    """The command line asks for something that cannot be done as asked."""


def command(fn):
    """Usage errors exit 2 with one clear line (no traceback)."""

    @functools.wraps(fn)
    def run(args) -> int:
        try:
            return fn(args)
        except (UsageError, AgeError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return run


def progress_printer(label: str):
    """A progress callback for long operations: a line on stderr at most twice a second."""
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if done >= total or now - last[0] >= 0.5:
            last[0] = now
            print(f"{label}: {done}/{total}", file=sys.stderr, flush=True)

    return report
