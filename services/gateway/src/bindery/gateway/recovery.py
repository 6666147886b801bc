"""Progress the gateway missed while its broker connection was down.

In: the bus's reconnects (`Bus.on_reconnect`), the launches this replica holds that have not
ended, the event log. Out: those launches' events that the event log kept since the earliest of
them began, and every pod-ready and pod-stopped since (routes), handed to the gateway's event
handler as if they had come on its queue; progress drops those it already has by event id.

Why: the gateway's queue is exclusive, so it goes with the connection. The robust connection
declares and binds it again once it has reconnected, but whatever services that reconnected
first published in between (a builder's image-built, the scheduler's pod-ready) never reached
it, and the launch page would wait for good. The event log keeps every event, so the launch
still ends there, ready or failed. Build-log lines of that gap stay in the build-log stream
(the build's `/api/builds/<id>/log`), not in the live stream.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from datetime import timedelta
from typing import cast

import structlog

from bindery.bus.eventlog import Recorded, read
from bindery.events import Event, PodReady, PodStopped
from bindery.gateway.progress import ProgressHub

log = structlog.get_logger("bindery.gateway.recovery")

#: Read from this long before the earliest launch began: its events carry their publishers'
#: clocks, and the stream finds a time by the broker's.
CLOCK_SKEW = timedelta(minutes=1)
#: The broker has just come back: the event log may not answer at the first try.
ATTEMPTS = 5
PAUSE = 2.0


class Recovery:
    def __init__(
        self,
        url: str,
        progress: ProgressHub,
        on_event: Callable[[Event], Awaitable[None]],
        *,
        idle: float = 1.0,
    ) -> None:
        self._url = url
        self._progress = progress
        self._on_event = on_event
        self._idle = idle
        self._tasks: set[asyncio.Task[int]] = set()

    def reconnected(self) -> None:
        """The bus's reconnect callback: recover in the background (the connection's own
        recovery waits for its callbacks)."""
        task = asyncio.create_task(self.recover(), name="progress-recovery")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def recover(self) -> int:
        """Hand the missed events over; returns how many."""
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return await self._recover_once()
            except Exception as exc:
                log.warning("progress.recovery_failed", attempt=attempt, error=repr(exc))
                await asyncio.sleep(PAUSE)
        log.error("progress.recovery_gave_up", attempts=ATTEMPTS)
        return 0

    async def _recover_once(self) -> int:
        unfinished = {
            launch.launch_id: launch for launch in self._progress.launches() if not launch.finished
        }
        if not unfinished:
            return 0
        since = min(launch.opened for launch in unfinished.values()) - CLOCK_SKEW
        handed = 0
        records = cast(
            AsyncGenerator[Recorded, None], read(self._url, start=since, idle=self._idle)
        )
        async with aclosing(records):
            async for record in records:
                event = record.event
                launch = unfinished.get(event.launch_id)
                wanted = launch is not None or isinstance(event, PodReady | PodStopped)
                if not wanted or (launch is not None and event.event_id in launch.seen_event_ids):
                    continue
                await self._on_event(event)
                handed += 1
        log.info("progress.recovered", launches=len(unfinished), events=handed)
        return handed

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
