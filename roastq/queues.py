"""Queue and actor names, defined once: the actors are declared with them (``actors/``), and the
core sends messages by them without importing the actors (an app's process is not a worker).

A job's message is ``JOB_ACTORS[queue](job_id)``: ``interactive`` jobs (a person is waiting) and
``batch`` jobs (re-evaluations) are two actors over one function, so that a worker takes
interactive work first (dramatiq orders a worker's work by actor priority).
"""

from __future__ import annotations

import dramatiq

from roastq.ids import new_id

INTERACTIVE = "interactive"
BATCH = "batch"
MAINTENANCE = "maintenance"  # the periodic housekeeping actors (actors/periodic.py)

#: The queues jobs go to (``priority=`` of the enqueue API), and the actor that runs each.
JOB_QUEUES = (INTERACTIVE, BATCH)
JOB_ACTORS = {INTERACTIVE: "evaluate_document", BATCH: "evaluate_document_batch"}
#: dramatiq actor priorities (lower runs first).
JOB_PRIORITIES = {INTERACTIVE: 0, BATCH: 100}
#: A job's message parked while a step waits in the batch lane: ``<queue>.lane``, which no consumer
#: serves, until the lane wakes it (``roastq.llm.batch``).
LANE_SUFFIX = ".lane"
#: Every queue roastq declares, for status and metrics.
ALL_QUEUES = (INTERACTIVE, BATCH, MAINTENANCE)


def job_message(queue: str, job_id: str) -> dramatiq.Message:
    """The message that runs job ``job_id`` on ``queue`` (what ``actor.message(job_id)`` builds,
    with a time-ordered id: ``roastq.ids``)."""
    return dramatiq.Message(
        queue_name=queue,
        actor_name=JOB_ACTORS[queue],
        args=(str(job_id),),
        kwargs={},
        options={},
        message_id=new_id(),
    )
