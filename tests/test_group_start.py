"""The starts of deliveries that begin at the same moment on a worker go out as one statement
(``jobs.start`` with no cursor: ``start_many`` for a group, ``start`` for a lone one), each job
started exactly as ``start`` alone would start it, and a job that cannot start refused alone."""

import threading

import psycopg2
import pytest
from helpers import one, rows, wait_until

from roastq import jobs

_WAITING = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()"
# (not by its text: a session's prepared start is sent as an EXECUTE that names no table)


def _params(db, job_id, worker_id="w-group", running_here=False):
    return {
        "job_id": job_id,
        "message_id": str(one(db, "SELECT message_id FROM jobs WHERE id = %s", job_id)),
        "worker_id": worker_id,
        "stale_after_s": 30.0,
        "not_running_here": not running_here,
    }


def _submit_in_threads(group, requests, out):
    def run(i, request):
        try:
            out[i] = group.submit(request)
        except BaseException as exc:
            out[i] = exc

    threads = [threading.Thread(target=run, args=(i, r)) for i, r in enumerate(requests)]
    for t in threads:
        t.start()
    return threads


@pytest.fixture
def job_ids(db, seeded):
    from roastq.api import enqueue_evaluations

    doc, agent = next(iter(seeded.documents.values())), next(iter(seeded.agents.values()))
    return enqueue_evaluations([(doc, agent)] * 9)


def _behind_a_held_start(db, database_url, group, blocker, requests, wire=None):
    """Start ``blocker`` while the test holds its row's lock (the group's only leader waits on
    it), queue ``requests`` behind it, then let go: the queued go out as one group. Their
    results in order."""
    group.max_leaders = 1
    out: dict = {}
    with psycopg2.connect(database_url) as holder:
        holder.cursor().execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (blocker,))
        first = _submit_in_threads(group, [_params(db, blocker)], {})
        wait_until(lambda: one(db, _WAITING) == 1, timeout=10, what="the first start to wait on the row lock")
        if wire is not None:
            wire.clear()
        later = _submit_in_threads(group, requests, out)
        wait_until(lambda: group.waiting() == len(requests), timeout=10)
        holder.rollback()
        for t in [*first, *later]:
            t.join(10)
    assert group.groups == 2 and group.in_flight() == 0
    return [out[i] for i in range(len(requests))]


def test_starts_that_arrive_together_go_out_in_one_statement(db, database_url, job_ids, wire):
    first, rest = job_ids[0], job_ids[1:]
    # A finished job among them: refused alone, the others start.
    with db.cursor() as cur:
        cur.execute("UPDATE jobs SET status = 'COMPLETED' WHERE id = %s", (rest[3],))
    out = _behind_a_held_start(
        db, database_url, jobs._GroupStart(durable=False), first, [_params(db, j) for j in rest], wire
    )
    sent = [q for q in wire.taken() if "UPDATE jobs" in q]
    assert len(sent) == 1, sent  # the eight in one statement
    assert out[3] is None and all(r["attempts"] == 1 for i, r in enumerate(out) if i != 3)
    started = {str(r[0]): tuple(r[1:]) for r in rows(db, "SELECT id, status, attempts, worker_id FROM jobs")}
    for j in [first, *rest]:
        expected = ("COMPLETED", 0, None) if j == rest[3] else ("RUNNING", 1, "w-group")
        assert started[j] == expected, (j, started[j])
    opened = rows(
        db, "SELECT job_id, attempt, message_id = (SELECT message_id FROM jobs WHERE id = job_id) FROM job_attempts"
    )
    assert sorted(str(j) for j, _, _ in opened) == sorted(j for j in job_ids if j != rest[3])
    assert all(a == 1 and same for _, a, same in opened)


def test_each_start_of_a_group_gets_its_own_row_and_crash_count(db, database_url, job_ids):
    """What ``start_many`` returns a job is what ``start`` returns it: a job whose worker died
    under it (its attempt left open) is taken over, that attempt closed as crashed and counted;
    one of this (live) worker whose delivery here has ended is taken over; one running here still
    is refused."""
    dead, mine_over, mine_running, plain = job_ids[:4]
    with db.cursor() as cur:
        cur.execute("UPDATE jobs SET status = 'RUNNING', attempts = 1, worker_id = 'w-dead' WHERE id = %s", (dead,))
        cur.execute(
            "INSERT INTO job_attempts (job_id, attempt, message_id) SELECT id, 1, message_id FROM jobs WHERE id = %s",
            (dead,),
        )
        cur.execute(
            "UPDATE jobs SET status = 'RUNNING', attempts = 1, worker_id = 'w-group' WHERE id = ANY(%s::uuid[])",
            ([mine_over, mine_running],),
        )
    requests = [
        _params(db, dead),
        _params(db, mine_over, running_here=False),
        _params(db, mine_running, running_here=True),
        _params(db, plain),
    ]
    from test_run_once import LiveWorker

    this_worker = LiveWorker(db, database_url, worker_id="w-group")  # its heartbeat: alive
    try:
        out = _behind_a_held_start(db, database_url, jobs._GroupStart(durable=True), job_ids[4], requests)
    finally:
        this_worker.dies()
    assert out[0]["attempts"] == 2 and out[0]["crashes"] == 1
    assert out[1]["attempts"] == 2 and out[1]["crashes"] == 0
    assert out[2] is None  # runs here: never beside a live attempt
    assert out[3]["attempts"] == 1 and out[3]["crashes"] == 0 and out[3]["time_limit_s"] > 0
    assert set(out[3]) >= {"attempts", "evaluation_id", "agent_id", "time_limit_s", "retry_on_timeout", "crashes"}
    assert rows(db, "SELECT outcome FROM job_attempts WHERE job_id = %s AND attempt = 1", dead) == [("crashed",)]
    assert one(db, "SELECT status FROM jobs WHERE id = %s", mine_running) == "RUNNING"


def test_a_start_that_fails_its_group_fails_alone(db, database_url, job_ids):
    """A request the statement cannot take (an id that is not a UUID fails the whole
    ``start_many``): the group is run again one start at a time, and only that one fails."""
    bad = dict(_params(db, job_ids[1]), job_id="not-a-uuid")
    requests = [_params(db, job_ids[2]), bad, _params(db, job_ids[3])]
    out = _behind_a_held_start(db, database_url, jobs._GroupStart(durable=True), job_ids[0], requests)
    assert isinstance(out[1], psycopg2.errors.InvalidTextRepresentation), out[1]
    assert out[0]["attempts"] == 1 and out[2]["attempts"] == 1
    status = dict(rows(db, "SELECT id::text, status FROM jobs"))
    assert [status[j] for j in job_ids[:4]] == ["RUNNING", "PENDING", "RUNNING", "RUNNING"]
