"""Time-ordered ids (roastq/ids.py, migration 0019): every id roastq makes, in Python or in the
database, is a UUID of version 7 whose first 48 bits are its millisecond, so that a new row's
index entries land at the right edge of the hot tables' indexes (issue 14, item 5: the drain
with a million finished jobs in the tables)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from helpers import one, rows
from messages import MESSAGES

from roastq.api import enqueue_evaluation, enqueue_evaluations, rerun_job
from roastq.ids import new_id


def _millisecond(value) -> int:
    return uuid.UUID(str(value)).int >> 80


def _is_v7(value) -> bool:
    u = uuid.UUID(str(value))
    return u.version == 7 and u.variant == uuid.RFC_4122


@pytest.mark.unit
def test_new_ids_are_version_7_in_the_order_made_and_carry_the_clock():
    before = time.time_ns() // 1_000_000
    ids = [new_id() for _ in range(20_000)]  # many within one millisecond: they still sort
    after = time.time_ns() // 1_000_000
    assert all(_is_v7(i) for i in ids)
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)
    assert before <= _millisecond(ids[0]) <= _millisecond(ids[-1]) <= after


@pytest.mark.unit
def test_new_ids_made_by_many_threads_at_once_are_distinct():
    made: list[list[str]] = [[] for _ in range(8)]

    def make(out):
        for _ in range(5_000):
            out.append(new_id())

    threads = [threading.Thread(target=make, args=(out,)) for out in made]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for out in made for i in out]
    assert len(set(every)) == len(every) == 40_000
    assert all(out == sorted(out) for out in made)


def test_the_databases_ids_are_version_7_with_the_time_asked(db):
    at_ms = 1_577_836_800_123  # 2020-01-01 00:00:00.123 UTC
    value = one(db, "SELECT roastq_uuid7(to_timestamp(%s / 1000.0))", at_ms)
    assert _is_v7(value) and _millisecond(value) == at_ms
    made = rows(db, "SELECT roastq_uuid7() FROM generate_series(1, 1000)")
    assert len({r[0] for r in made}) == 1000
    assert all(_is_v7(r[0]) for r in made)
    now_ms = time.time_ns() // 1_000_000
    assert all(abs(_millisecond(r[0]) - now_ms) < 60_000 for r in made)


def test_no_id_column_defaults_to_a_random_uuid(db):
    """Every uuid id the schema fills in itself is time-ordered; an app inserting a row without
    an id gets the same kind of id as roastq's own."""
    defaults = rows(
        db,
        "SELECT table_name, column_default FROM information_schema.columns "
        "WHERE table_schema = 'public' AND data_type = 'uuid' AND column_default IS NOT NULL",
    )
    assert defaults, "the schema has uuid columns with defaults"
    assert {d for _, d in defaults} == {"roastq_uuid7()"}, defaults


def _pair(seeded):
    return next(iter(seeded.documents.values())), next(iter(seeded.agents.values()))


def test_jobs_and_their_messages_get_ids_in_the_order_they_are_enqueued(db, seeded):
    doc, agent = _pair(seeded)
    one_by_one = [enqueue_evaluation(doc, agent) for _ in range(3)]
    batch = enqueue_evaluations([(doc, agent)] * 3)
    with db.cursor() as cur:
        cur.execute("UPDATE jobs SET status = 'COMPLETED', completed_at = now() WHERE id = %s", (one_by_one[0],))
    rerun = rerun_job(one_by_one[0])
    made = [*one_by_one, *batch, rerun]
    assert all(_is_v7(j) for j in made)
    assert made == sorted(made)
    messages = [one(db, "SELECT message_id FROM jobs WHERE id = %s", j) for j in made]
    assert all(_is_v7(m) for m in messages)
    assert [str(m) for m in messages] == sorted(str(m) for m in messages)
    # the message the broker stores is the one the job row names
    stored = {str(r[0]) for r in rows(db, f"SELECT message_id FROM {MESSAGES}")}
    assert {str(m) for m in messages} <= stored


def test_rows_the_database_makes_get_time_ordered_ids(db, seeded):
    doc, agent = _pair(seeded)
    enqueue_evaluation(doc, agent)
    evaluation = one(db, "SELECT evaluation_id FROM jobs")
    assert _is_v7(evaluation)
    assert _is_v7(one(db, "SELECT id FROM documents WHERE id = %s", doc))
