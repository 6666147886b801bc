"""Every subscription of the culler, at a glance: first the event log's recent activity, then
the live queue.

In: at start, the `bindery.event-log` stream's session-activity of the last idle period (older
activity cannot keep a session); then the culler's durable queue (pod-ready, pod-stopped,
session-activity). Out: each event folded into the culler's view.
"""

from __future__ import annotations

from datetime import timedelta

import structlog

from bindery.bus import Bus, Handlers, eventlog, topology
from bindery.culler.cull import Culler
from bindery.events import Event, PodReady, PodStopped, SessionActivity

log = structlog.get_logger("bindery.culler")


async def replay_recent_activity(amqp_url: str, culler: Culler, window: timedelta) -> int:
    """Fold in the session activity the event log holds from the last `window`: what the
    culler's previous run had taken off the queue. Returns how many events were folded in.
    Activity is a maximum, so events also waiting in the queue fold in twice harmlessly."""
    count = 0
    async for event in eventlog.recent(amqp_url, window, {SessionActivity.type}):
        culler.observe(event)
        count += 1
    log.info("cull.activity_replayed", events=count, window_seconds=window.total_seconds())
    return count


async def subscribe(bus: Bus, culler: Culler) -> None:
    async def observe(event: Event) -> None:
        culler.observe(event)

    sessions = Handlers().on(PodReady, observe).on(PodStopped, observe)
    await bus.consume(topology.CULLER, sessions.on(SessionActivity, observe), prefetch=64)
