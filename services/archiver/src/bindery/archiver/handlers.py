"""Every subscription of the archiver, at a glance."""

from __future__ import annotations

from bindery.archiver.archive import Archive
from bindery.bus import Bus, topology
from bindery.events import Event


async def subscribe(bus: Bus, archive: Archive) -> None:
    async def on_event(event: Event) -> None:
        archive.observe(event)

    await bus.consume(topology.ARCHIVER, on_event, prefetch=64)
