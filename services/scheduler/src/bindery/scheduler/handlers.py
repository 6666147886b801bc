"""Every subscription of the scheduler, at a glance."""

from __future__ import annotations

from bindery.bus import Bus, Handlers, topology
from bindery.events import IdleDetected, ImageBuilt, LaunchAbandoned, RefResolved
from bindery.naming import repo_key
from bindery.scheduler.launch import LaunchOrder, Scheduler


def launch_order(event: RefResolved | ImageBuilt, key: str) -> LaunchOrder:
    """What the scheduler needs of a launch whose image exists, from either event."""
    return LaunchOrder(
        event.launch_id,
        event.image,
        event.repo_url,
        event.resolved_ref,
        key,
        event.repo_config.quota,
        event.session_env,
        event.requested_at,
    )


async def subscribe(bus: Bus, scheduler: Scheduler) -> None:
    async def on_resolved(event: RefResolved) -> None:
        if event.image_exists and not event.build_only:  # else a builder takes it
            await scheduler.launch(launch_order(event, event.repo_key))

    async def on_built(event: ImageBuilt) -> None:
        if not event.build_only:
            await scheduler.launch(launch_order(event, repo_key(event.repo_url)))

    launches = Handlers().on(RefResolved, on_resolved).on(ImageBuilt, on_built)
    stops = Handlers().on(IdleDetected, scheduler.stop).on(LaunchAbandoned, scheduler.abandon)
    # Launches hold their delivery while they wait for a seat and for Jupyter; stops (and
    # abandonments, which end a launch waiting there) travel on a queue of their own so a full
    # launch queue can never hold them back.
    await bus.consume(topology.SCHEDULER, launches, prefetch=scheduler.settings.launch_prefetch)
    await bus.consume(topology.SCHEDULER_STOPS, stops, prefetch=32)
