"""Every subscription of the resolver, at a glance."""

from __future__ import annotations

from bindery.bus import Bus, Handlers, topology
from bindery.events import LaunchRequested
from bindery.resolver.resolve import Resolver


async def subscribe(bus: Bus, resolver: Resolver) -> None:
    launches = Handlers().on(LaunchRequested, resolver.on_launch_requested)
    await bus.consume(topology.RESOLVER, launches, prefetch=16)
