"""Every subscription of the scheduler, at a glance."""

from __future__ import annotations

from bindery.bus import Bus, Handlers, topology
from bindery.events import IdleDetected, ImageBuilt, LaunchAbandoned, NextStep, RefResolved
from bindery.scheduler.launch import LaunchOrder, Scheduler


def launch_order(event: RefResolved | ImageBuilt) -> LaunchOrder:
    """What the scheduler needs of a launch whose image exists, from either event."""
    context = event.context
    return LaunchOrder(
        event.launch_id,
        event.image,
        context.repo_url,
        context.resolved_ref,
        context.repo_key,
        context.repo_config.quota,
        context.session_env,
        context.requested_at,
    )


async def subscribe(bus: Bus, scheduler: Scheduler) -> None:
    async def launch(event: RefResolved | ImageBuilt) -> None:
        await scheduler.launch(launch_order(event))

    # Only launches whose image exists and that want a session reach the scheduler: the
    # resolver's and the builder's routing keys say so (topology.SCHEDULER).
    launches = (
        Handlers()
        .on(RefResolved, launch, route=NextStep.LAUNCH)
        .on(ImageBuilt, launch, route=NextStep.LAUNCH)
    )
    stops = Handlers().on(IdleDetected, scheduler.stop).on(LaunchAbandoned, scheduler.abandon)
    # Launches hold their delivery while they wait for a seat and for Jupyter; stops (and
    # abandonments, which end a launch waiting there) travel on a queue of their own so a full
    # launch queue can never hold them back.
    await bus.consume(topology.SCHEDULER, launches, prefetch=scheduler.settings.launch_prefetch)
    await bus.consume(topology.SCHEDULER_STOPS, stops, prefetch=32)
