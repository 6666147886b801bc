"""Wires the scheduler: settings, the runtime over every node, the recent demand the event log
holds (popularity, which the warm pool follows), reconciliation, subscriptions,
and the background loops, supervised by the service runner: one keeps the warm pool filled, one
pulls images onto nodes ahead of their launches, one stops sessions over the disk limit, one
follows the runtime's exits, one reconciles the seats with the sessions the runtime lists, in
case an exit went unreported, and one pings the nodes (down when they fail, used again as soon
as they answer). The runner closes the runtime and the HTTP client at the stop, once the bus
no longer delivers.

One replica is active at a time (the service runner's `one_active`), the others standing by:
seats, quotas and the warm pool are counted over every node in one process, and the replica
that takes over rebuilds them from the runtime (`reconcile`) before its first launch."""

from __future__ import annotations

from datetime import timedelta

import aiohttp
import structlog

from bindery import service
from bindery.runtimes import make_runtime
from bindery.scheduler.handlers import replay_recent, subscribe
from bindery.scheduler.launch import NODE_PROBE_INTERVAL, Scheduler
from bindery.scheduler.settings import SchedulerSettings

log = structlog.get_logger("bindery.scheduler")


def main() -> None:
    settings = SchedulerSettings()
    settings.require_secret()

    async def start(starter: service.Starter) -> list[service.Loop]:
        runtime = await make_runtime(settings)
        starter.resources.push_async_callback(runtime.close)
        http = await starter.resources.enter_async_context(
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        )
        scheduler = await Scheduler.create(settings, runtime, starter.bus.publish, http)
        # The demand the warm pool follows: the launches of the window, not the sessions
        # reconcile adopts (those count for nothing); and the sessions already said stopped.
        try:
            await replay_recent(
                settings.amqp_url, scheduler, timedelta(seconds=settings.popularity_window)
            )
        except Exception as exc:  # no stream, no read permission, broker gone: start anyway
            log.warning("demand.replay_failed", error=str(exc) or type(exc).__name__)
        # The view must be whole before the first (possibly redelivered) launch arrives.
        await scheduler.reconcile()
        await subscribe(starter.bus, scheduler)
        return loops(scheduler)

    service.run("scheduler", settings, settings.health_port, start, one_active=True)


def loops(scheduler: Scheduler) -> list[service.Loop]:
    """The scheduler's background loops. Those whose step waits by itself (for a launch asking
    for maintenance, a node found down, the runtime's next exit, or else their interval) run
    again as soon as a step ends."""
    settings = scheduler.settings
    return [
        service.Loop("maintain", scheduler.maintain_when_due, 0),
        service.Loop("prepull", scheduler.prepull_when_due, 0),
        service.Loop("disk", scheduler.check_disk, settings.disk_check_interval),
        service.Loop("exits", scheduler.handle_next_exit, 0, close=scheduler.stop_following_exits),
        service.Loop("reconcile", scheduler.end_vanished, settings.reconcile_interval),
        service.Loop("nodes", scheduler.watch_nodes, NODE_PROBE_INTERVAL),
    ]
