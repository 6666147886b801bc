"""Wires the scheduler: settings, the runtime over every node, reconciliation, subscriptions,
and the background loops: one keeps popular images pre-pulled and the warm pool filled, one
stops sessions over the disk limit, one follows the runtime's exits and one reconciles the seats
with the sessions the runtime lists, in case an exit went unreported."""

from __future__ import annotations

import aiohttp

from bindery import service
from bindery.bus import Bus
from bindery.runtimes import make_runtime
from bindery.scheduler.handlers import subscribe
from bindery.scheduler.launch import Scheduler
from bindery.scheduler.settings import SchedulerSettings


def main() -> None:
    settings = SchedulerSettings()
    settings.require_secret()

    async def start(bus: Bus) -> None:
        runtime = await make_runtime(settings)
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        scheduler = await Scheduler.create(settings, runtime, bus.publish, http)
        # The view must be whole before the first (possibly redelivered) launch arrives.
        await scheduler.reconcile()
        await subscribe(bus, scheduler)
        scheduler.background(scheduler.maintain_forever())
        scheduler.background(scheduler.check_disk_forever())
        scheduler.background(scheduler.follow_exits_forever())
        scheduler.background(scheduler.reconcile_forever())

    service.run("scheduler", settings, settings.health_port, start)
