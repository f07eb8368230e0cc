"""Results of actors declared with ``store_results=True``, in Postgres.

dramatiq-pg's results backend, kept for how it stores a result (on the message's row of
``dramatiq.queue``, with a NOTIFY), run on our shared pool, and fixed where it was measured wrong:

* a failed result (the actor failed for good) raises dramatiq's ``ResultFailure`` when fetched;
  stock returns the failure's dict as if it were the result (DESIGN.md, defect 5);
* a result expires after its ``result_ttl`` (dramatiq's default: 10 minutes): after that it is
  missing; stock serves it until the row itself is deleted. ``clear_expired`` (the scheduler's
  retention task) drops the expired ones;
* waiting for a result (``block=True``) polls with dramatiq's backoff instead of LISTENing on a
  pooled connection, which would keep its LISTEN after it goes back to the pool.
"""

from __future__ import annotations

from dramatiq.results.backend import Missing, ResultBackend
from dramatiq_pg.results import PostgresBackend

from roastq import db
from roastq.sql import load_queries

SQL = load_queries("results.sql", __package__)


class PostgresResults(PostgresBackend):
    def __init__(self, pool):
        super().__init__(pool=pool)

    # dramatiq's own get_result: poll _get, unwrap (a failure raises ResultFailure), time out.
    get_result = ResultBackend.get_result

    def _get(self, message_key: str):
        with db.transaction() as cur:
            cur.execute(SQL.get_result, {"message_id": message_key})
            row = cur.fetchone()
        return Missing if row is None else row["result"]


def clear_expired(batch: int = 5000) -> int:
    """Drop expired results; return how many."""
    with db.transaction() as cur:
        cur.execute(SQL.clear_expired_results, {"batch": batch})
        return cur.rowcount
