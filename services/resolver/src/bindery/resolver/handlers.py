"""Every subscription of the resolver, at a glance."""

from __future__ import annotations

from bindery.bus import Bus, topology
from bindery.events import Event, LaunchRequested
from bindery.resolver.resolve import Resolver


async def subscribe(bus: Bus, resolver: Resolver) -> None:
    async def on_event(event: Event) -> None:
        if isinstance(event, LaunchRequested):
            await resolver.on_launch_requested(event)

    await bus.consume(topology.RESOLVER, on_event, prefetch=16)
