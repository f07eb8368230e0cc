"""The periodic actors: ``periodiq actors`` schedules them, ``dramatiq actors`` workers run them.

One actor per task of ``roastq.ops.maintenance.TASKS``, on their own ``maintenance`` queue so that
housekeeping never waits behind a backlog of evaluations. Each run goes through
``roastq.ops.scheduler.run_tick``: however many schedulers fire a tick (two schedulers, a restart
within the minute), the task runs once for it.
"""

from __future__ import annotations

import dramatiq
from dramatiq.middleware import CurrentMessage
from periodiq import cron

from roastq.ops import maintenance, scheduler
from roastq.queues import MAINTENANCE

QUEUE = MAINTENANCE


def _periodic_actor(name: str, task: maintenance.Task):
    def run() -> None:
        message = CurrentMessage.get_current_message()
        scheduled_at = message.options.get("scheduled_at") if message is not None else None
        scheduler.run_tick(name, scheduled_at, task.fn)

    run.__name__ = run.__qualname__ = name
    run.__doc__ = task.what
    return dramatiq.actor(run, actor_name=name, queue_name=QUEUE, priority=0, periodic=cron(task.cron))


PERIODIC = {name: _periodic_actor(name, task) for name, task in maintenance.TASKS.items()}
