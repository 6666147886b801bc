"""Every subscription of the builder, at a glance."""

from __future__ import annotations

from bindery.builder.builds import Builder
from bindery.bus import Bus, topology
from bindery.events import Event, RefResolved


async def subscribe(bus: Bus, builder: Builder, prefetch: int) -> None:
    async def on_event(event: Event) -> None:
        if isinstance(event, RefResolved) and not event.image_exists:
            await builder.on_ref_resolved(event)

    # A build holds its delivery until the image is pushed: a builder that dies mid-build leaves
    # the launch to be redelivered to another replica instead of lost.
    await bus.consume(topology.BUILDER, on_event, prefetch=prefetch)
