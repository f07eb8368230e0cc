"""pg-boss 12 (npm) in the peer comparison, run in the peers' venv with Node 22 from
``bench/peers/.node`` (bench/peers/run.py installs both):

    bench/peers/.venv/bin/python bench/peers/sys_pgboss.py [a e b c c500]

pg-boss has only a Node client (no SQL function to send a job), so jobs are sent the way a user of
pg-boss sends them, by its own API, from a long-lived Node process (``node/pgboss.mjs enqueuer``,
started after the fresh database; its ``start()`` installs the schema): Python writes one line on
its standard input, ``one <tag>`` (E, B: ``boss.send``) or ``batch <first> <n>`` (A, C: one
``boss.insert`` of n jobs), and waits for its ``ok``. The timings are taken on the Python side, so
they include that pipe hop (about 20 us a round trip through a Node echo on this machine, against
a commit's milliseconds).

The worker (``node/pgboss.mjs worker``), in the harness's default mode (``PEER_PGBOSS_MODE=batch``):
``useListenNotify`` on and the queue created with ``notify``, as the Python peers have
LISTEN/NOTIFY at their defaults, and one ``work()`` with ``batchSize`` = the concurrency and
``burstWhenBatchFull``, its handler running the batch's bodies at once (``Promise.all``) and
pg-boss completing the batch in one statement; the rest at pg-boss's defaults (a pool of 10,
supervision and maintenance on). pg-boss at its plain defaults (``PEER_PGBOSS_MODE=polling``:
``localConcurrency`` = the concurrency, one job a worker, no LISTEN/NOTIFY) polls every 2 s after
each job, "1 job every 2 seconds" a worker in its docs: 5 jobs/s at concurrency 10, so A's 5,000
jobs would outlast the harness's 600 s timeout. The worker's RSS is the Node process's.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import nodepeer  # noqa: E402
import peerlib  # noqa: E402


class PgBoss(peerlib.System):
    name = "pgboss"
    dsn = nodepeer.URL

    def __init__(self):
        self.enqueuer = None
        self._tags = itertools.count()

    def _ask(self, line: str) -> None:
        self.enqueuer.stdin.write(line + "\n")
        self.enqueuer.stdin.flush()
        answer = self.enqueuer.stdout.readline()
        if answer != "ok\n":
            raise SystemExit(f"peers: the pg-boss enqueuer answered {answer!r} to {line!r} (see its log)")

    def _stop_enqueuer(self):
        if self.enqueuer is not None:
            self.enqueuer.stdin.close()
            try:
                self.enqueuer.wait(10)
            except subprocess.TimeoutExpired:
                self.enqueuer.kill()
                self.enqueuer.wait()
            self.enqueuer = None

    def setup(self):
        self._stop_enqueuer()
        nodepeer.fresh_database()
        self.enqueuer = subprocess.Popen(
            [str(nodepeer.NODE), str(nodepeer.SCRIPTS / "pgboss.mjs"), "enqueuer"],
            env=nodepeer.node_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=nodepeer.log_file("pgboss"),
            text=True,
            bufsize=1,
        )
        ready = self.enqueuer.stdout.readline()
        if ready != "ready\n":
            raise SystemExit(f"peers: the pg-boss enqueuer did not start ({ready!r}; see its log)")

    def enqueue_one(self):
        tag = f"t{next(self._tags)}"
        self._ask(f"one {tag}")
        return tag

    def enqueue_batch(self, n):
        first = next(self._tags)
        self._tags = itertools.count(first + n)
        self._ask(f"batch {first} {n}")

    def start_worker(self, concurrency, wait_s, probe_at, port):
        return nodepeer.start_node_worker("pgboss", "pgboss.mjs", concurrency, wait_s, probe_at, port)

    def close(self):
        self._stop_enqueuer()


if __name__ == "__main__":
    raise SystemExit(peerlib.main(PgBoss(), sys.argv[1:]))
