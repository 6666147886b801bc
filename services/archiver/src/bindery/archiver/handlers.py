"""Every subscription of the archiver, at a glance: first the event log's recent past, then the
live queue.

In: at start, the `bindery.event-log` stream's last `window` (the longest a launch can last);
then the archiver's durable queue. Out: each event folded into the archive, which writes a
launch's line when it ends.
"""

from __future__ import annotations

from datetime import timedelta

import structlog

from bindery.archiver.archive import STEPS, Archive
from bindery.bus import Bus, Handlers, eventlog, topology
from bindery.events import Event

log = structlog.get_logger("bindery.archiver")


async def replay_in_flight(amqp_url: str, archive: Archive, window: timedelta) -> int:
    """Fold in the event log's last `window`, so a launch in flight when the archiver last
    stopped gets back the stages that run had already taken off the queue. Returns how many
    events were folded in.

    Must finish before `subscribe`: a live end folded in before its launch's earlier stages
    would write a line without them. Events in both the log and the queue fold in twice,
    which the archive ignores (first times kept, launches written once)."""
    count = 0
    async for event in eventlog.recent(amqp_url, window, topology.ARCHIVER.event_types):
        archive.observe(event)
        count += 1
    log.info("archive.replayed", events=count, window_seconds=window.total_seconds())
    return count


async def subscribe(bus: Bus, archive: Archive) -> None:
    async def observe(event: Event) -> None:
        archive.observe(event)

    steps = Handlers()
    for step in STEPS:
        steps.on(step, observe)
    await bus.consume(topology.ARCHIVER, steps, prefetch=64)
