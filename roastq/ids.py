"""The ids roastq makes: time-ordered UUIDs (version 7, RFC 9562).

A job's id and its message's id key the hot tables' busiest indexes (``jobs``, ``job_attempts``,
``job_logs``, ``dramatiq.queue``). A random id (version 4) puts each new row's index entry on a
random leaf page: once those indexes outgrow shared buffers, every enqueue, start and result
reads a page from disk or the OS cache, and the drain slows as the tables grow (issue 14,
item 5: 1.28x faster with a million finished jobs in the tables, docs/benchmarks.md). A version 7
id begins with its millisecond, so new entries land on the few rightmost pages, which stay in
memory. The ids the database makes follow the same rule (``roastq_uuid7()``, migration 0019).
"""

from __future__ import annotations

import uuid_utils


def new_id() -> str:
    """A new id, as text: a later id sorts after an earlier one, within a millisecond too in one
    process (uuid_utils counts there), and its millisecond is the clock's."""
    return str(uuid_utils.uuid7())
