"""Every subscription of the scheduler, at a glance."""

from __future__ import annotations

from bindery.bus import Bus, topology
from bindery.events import Event, IdleDetected, ImageBuilt, LaunchAbandoned, RefResolved
from bindery.naming import repo_key
from bindery.scheduler.launch import LaunchOrder, Scheduler


async def subscribe(bus: Bus, scheduler: Scheduler) -> None:
    async def on_launch(event: Event) -> None:
        if isinstance(event, RefResolved) and event.image_exists and not event.build_only:
            order = LaunchOrder(
                event.launch_id,
                event.image,
                event.repo_url,
                event.resolved_ref,
                event.repo_key,
                event.repo_config.quota,
                event.session_env,
                event.requested_at,
            )
        elif isinstance(event, ImageBuilt) and not event.build_only:
            order = LaunchOrder(
                event.launch_id,
                event.image,
                event.repo_url,
                event.resolved_ref,
                repo_key(event.repo_url),
                event.repo_config.quota,
                event.session_env,
                event.requested_at,
            )
        else:
            return
        await scheduler.launch(order)

    async def on_stop(event: Event) -> None:
        if isinstance(event, IdleDetected):
            await scheduler.stop(event)
        elif isinstance(event, LaunchAbandoned):
            await scheduler.abandon(event)

    # Launches hold their delivery while they wait for a seat and for Jupyter; stops (and
    # abandonments, which end a launch waiting there) travel on a queue of their own so a full
    # launch queue can never hold them back.
    await bus.consume(topology.SCHEDULER, on_launch, prefetch=scheduler.settings.launch_prefetch)
    await bus.consume(topology.SCHEDULER_STOPS, on_stop, prefetch=32)
