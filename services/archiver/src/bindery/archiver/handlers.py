"""Every subscription of the archiver, at a glance: first the event log's recent past, then the
live queue.

In: at start, the `bindery.event-log` stream's last `window` (the longest a launch can last);
then the archiver's durable queue. Out: each event folded into the archive, which writes a
launch's line when it ends.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from typing import cast

import structlog

from bindery.archiver.archive import Archive
from bindery.bus import Bus, eventlog, topology
from bindery.events import Event

log = structlog.get_logger("bindery.archiver")


async def replay_in_flight(amqp_url: str, archive: Archive, window: timedelta) -> int:
    """Fold in the event log's last `window`, so a launch in flight when the archiver last
    stopped gets back the stages that run had already taken off the queue. Returns how many
    events were folded in.

    Must finish before `subscribe`: a live end folded in before its launch's earlier stages
    would write a line without them. Events in both the log and the queue fold in twice,
    which the archive ignores (first times kept, launches written once)."""
    started = datetime.now(UTC)
    count = 0
    # `read` is an async generator: closing it now, not at garbage collection, closes its
    # connection when the loop below breaks.
    records = cast(
        AsyncGenerator[eventlog.Recorded, None], eventlog.read(amqp_url, start=started - window)
    )
    async with aclosing(records):
        async for record in records:
            if record.event.time > started:
                # Newer events wait in the queue anyway; a busy log would never fall idle.
                break
            if record.event.type in topology.ARCHIVER.routing_keys:
                archive.observe(record.event)
                count += 1
    log.info("archive.replayed", events=count, window_seconds=window.total_seconds())
    return count


async def subscribe(bus: Bus, archive: Archive) -> None:
    async def on_event(event: Event) -> None:
        archive.observe(event)

    await bus.consume(topology.ARCHIVER, on_event, prefetch=64)
