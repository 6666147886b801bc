"""Every subscription of the scheduler, at a glance."""

from __future__ import annotations

from bindery.bus import Bus, topology
from bindery.events import Event, IdleDetected, ImageBuilt, RefResolved
from bindery.scheduler.launch import LaunchOrder, Scheduler


async def subscribe(bus: Bus, scheduler: Scheduler) -> None:
    async def on_event(event: Event) -> None:
        if (isinstance(event, RefResolved) and event.image_exists and not event.build_only) or (
            isinstance(event, ImageBuilt) and not event.build_only
        ):
            await scheduler.launch(
                LaunchOrder(event.launch_id, event.image, event.repo_url, event.resolved_ref)
            )
        elif isinstance(event, IdleDetected):
            await scheduler.stop(event)

    # Launches wait for Jupyter while holding their delivery; allow many at once.
    await bus.consume(topology.SCHEDULER, on_event, prefetch=32)
