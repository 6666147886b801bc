"""Run some of a scheduler's background loops in a test, supervised as the service runs them.

In: a Scheduler and the names of its loops (`bindery.scheduler.app.loops`). Out: those loops
running under the shared runner's supervision while the `async with` block runs.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from bindery import service
from bindery.scheduler import app
from bindery.scheduler.launch import Scheduler


@contextlib.asynccontextmanager
async def running_loops(scheduler: Scheduler, *names: str) -> AsyncIterator[None]:
    loops = service.Loops("scheduler")
    loops.start(loop for loop in app.loops(scheduler) if loop.name in names)
    try:
        yield
    finally:
        await loops.stop()
