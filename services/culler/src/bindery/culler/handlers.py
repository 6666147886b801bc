"""Every subscription of the culler, at a glance."""

from __future__ import annotations

from bindery.bus import Bus, topology
from bindery.culler.cull import Culler
from bindery.events import Event


async def subscribe(bus: Bus, culler: Culler) -> None:
    async def on_event(event: Event) -> None:
        culler.observe(event)

    await bus.consume(topology.CULLER, on_event, prefetch=64)
