"""Small helpers for tests: polling the jobs table and one-line queries."""

import time


def wait_for_status(conn, job_ids, statuses=("COMPLETED", "FAILED", "CANCELLED"), timeout=30.0) -> dict:
    """Poll until every job has one of ``statuses``; return {job_id: status}."""
    deadline = time.monotonic() + timeout
    ids = [str(j) for j in job_ids]
    while True:
        with conn.cursor() as cur:
            cur.execute("SELECT id::text, status FROM jobs WHERE id = ANY(%s::uuid[])", (ids,))
            found = dict(cur.fetchall())
        if len(found) == len(ids) and all(s in statuses for s in found.values()):
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs not finished after {timeout} s: {found}")
        time.sleep(0.05)


def one(conn, sql, *params):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        row = cur.fetchone()
    return row[0] if row and len(row) == 1 else row


def rows(conn, sql, *params):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall()
