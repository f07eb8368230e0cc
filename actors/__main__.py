"""``python -m actors [dramatiq options]``: ``dramatiq actors``, with roastq's logging everywhere.

``dramatiq actors`` configures our logging in its worker processes (they import this package),
but its main process never imports it and writes its own lines (booting, signals, a worker that
died) in dramatiq's text format. Here the main process sets up the same JSON logging before
dramatiq's CLI runs, so every line of the pool, main process included, is one JSON object.
Options are dramatiq's (``--processes``, ``--threads``, ``--queues``...). dramatiq's SIGHUP reload
re-executes ``dramatiq`` itself: restart this command instead.
"""

from __future__ import annotations

import sys

import dramatiq.cli

from observability.process import setup_process


def main(argv: list[str] | None = None) -> int:
    setup_process()
    args = dramatiq.cli.make_argument_parser().parse_args(["actors", *(sys.argv[1:] if argv is None else argv)])
    return dramatiq.cli.main(args)


if __name__ == "__main__":
    sys.exit(main())
