"""Progress the gateway missed while its broker connection was down.

In: the bus's reconnects (`Bus.on_reconnect`), the launches this replica holds that have not
ended, the event log. Out: those launches' events that the event log kept since the earliest of
them began, and every pod-ready and pod-stopped since (routes), handed to the gateway's event
handler as if they had come on its queue; progress drops those it already has by event id.

Why: the gateway's queue is exclusive, so it goes with the connection. The robust connection
declares and binds it again once it has reconnected, but whatever services that reconnected
first published in between (a builder's image-built, the scheduler's pod-ready) never reached
it, and the launch page would wait for good. The event log keeps every event, so the launch
still ends there, ready or failed. Build-log lines of that gap are not in the event log:
progress reads them back from the build-log stream when the next line of their build shows
the gap (progress.py).
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
#: The broker has just come back: it brings its queues back one by one after it takes
#: connections, the event log among them ("no event log", "home node down" meanwhile), later
#: still on a loaded machine. A launch page waits on the recovery, so it is tried again, pausing
#: from PAUSE up to MAX_PAUSE, for as long as a launch it would end waits.
PAUSE = 0.5
MAX_PAUSE = 5.0
#: A read ends after this long without a message: a stream that has just come back may pause
#: between its chunks, and a read cut short would miss the newest events, the ones wanted.
IDLE = 3.0


class Recovery:
    def __init__(
        self,
        url: str,
        progress: ProgressHub,
        on_event: Callable[[Event], Awaitable[None]],
    ) -> None:
        self._url = url
        self._progress = progress
        self._on_event = on_event
        self._tasks: set[asyncio.Task[int]] = set()

    def reconnected(self) -> None:
        """The bus's reconnect callback: recover in the background (the connection's own
        recovery waits for its callbacks). A recovery still trying from an earlier reconnect
        is replaced: this one reads from the same point, later."""
        for earlier in self._tasks:
            earlier.cancel()
        task = asyncio.create_task(self.recover(), name="progress-recovery")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def recover(self) -> int:
        """Hand the missed events over; returns how many. Tries until the event log answers or
        no launch waits any more."""
        pause = PAUSE
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._recover_once()
            except Exception as exc:
                log.warning("progress.recovery_failed", attempt=attempt, error=repr(exc))
            await asyncio.sleep(pause)
            pause = min(pause * 2, MAX_PAUSE)

    async def _recover_once(self) -> int:
        unfinished = {
            launch.launch_id: launch for launch in self._progress.launches() if not launch.finished
        }
        if not unfinished:
            return 0
        since = min(launch.opened for launch in unfinished.values()) - CLOCK_SKEW
        handed = 0
        records = cast(AsyncGenerator[Recorded, None], read(self._url, start=since, idle=IDLE))
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
