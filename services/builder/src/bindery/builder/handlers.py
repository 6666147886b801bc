"""Every subscription of the builder, at a glance."""

from __future__ import annotations

from bindery.builder.coordinator import Builder
from bindery.bus import Bus, Handlers, topology
from bindery.events import NextStep, RefResolved


async def subscribe(bus: Bus, builder: Builder, replica: str, prefetch: int) -> None:
    # Only launches that need a build reach a builder (topology.BUILDS).
    builds = Handlers().on(RefResolved, builder.on_ref_resolved, route=NextStep.BUILD)

    # Sticky: the repositories the consistent-hash exchange gives this replica (topology.py).
    # A build holds its delivery until the image is pushed: if this replica dies mid-build, the
    # launch waits out the spill delay in this queue, then goes to the unclaimed queue below.
    await bus.consume(topology.builder_replica(replica), builds, prefetch=prefetch)
    # Launches no live replica claimed: every replica takes from here.
    await bus.consume(topology.BUILDER, builds, prefetch=prefetch)
