"""Every subscription of the scheduler, at a glance: first the event log's recent launches and
stops, then the live queues.

In: at start, the `bindery.event-log` stream's launches (ref-resolved of an existing image,
image-built) and pod-stopped events of the last popularity window; then the scheduler's queues
(ref-resolved, image-built, idle-detected, launch-abandoned). Out: launches folded into the
popularity the warm pool follows, and the sessions already said stopped
(`Scheduler.ended_before`); launch orders, stops and abandonments handed to the scheduler.
"""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime, timedelta

import structlog

from bindery.bus import Bus, Handlers, eventlog, topology
from bindery.events import (
    IdleDetected,
    ImageBuilt,
    LaunchAbandoned,
    NextStep,
    PodStopped,
    RefResolved,
)
from bindery.scheduler.launch import LaunchOrder, Scheduler

log = structlog.get_logger("bindery.scheduler")

DEMAND_REPLAYED = 10_000
"""Launches at most folded back in at start, the newest: an hour of a busy Binder's launches
(mybinder.org starts a few thousand an hour) in a few megabytes, read in seconds."""


def launch_order(event: RefResolved | ImageBuilt) -> LaunchOrder:
    """What the scheduler needs of a launch whose image exists, from either event."""
    return LaunchOrder(event.launch_id, event.image, event.context)


async def replay_recent(
    amqp_url: str, scheduler: Scheduler, window: timedelta, limit: int = DEMAND_REPLAYED
) -> int:
    """Fold the launches the event log holds from the last `window` (the newest `limit`) into
    the scheduler's popularity, each at its own age, so a restarted scheduler warms the popular
    images at once instead of after an hour of launches. Returns how many were folded in.
    Launches also waiting in the queue count twice: popularity is a ranking, not a ledger.

    The sessions said stopped in the same window go to `ended_before`: one whose node was down
    when it was said lost is removed quietly when that node is back, not said stopped twice
    (a node down for longer than the window may still get its second pod-stopped)."""
    kept: deque[RefResolved | ImageBuilt] = deque(maxlen=limit)
    wanted = {RefResolved.type, ImageBuilt.type, PodStopped.type}
    async for event in eventlog.recent(amqp_url, window, wanted):
        if isinstance(event, PodStopped):
            scheduler.ended_before.add(event.session)
        elif isinstance(event, RefResolved | ImageBuilt) and event.route == NextStep.LAUNCH:
            kept.append(event)
    # Popularity counts on the scheduler's clock: place each launch as long ago as it happened.
    now, wall = scheduler.clock(), datetime.now(UTC)
    for event in kept:
        ago = (wall - event.time).total_seconds()
        scheduler.popularity.record(
            event.image, event.context.repo_url, event.context.session_env, now - ago
        )
    log.info(
        "demand.replayed",
        launches=len(kept),
        said_stopped=len(scheduler.ended_before),
        window_seconds=window.total_seconds(),
    )
    return len(kept)


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
