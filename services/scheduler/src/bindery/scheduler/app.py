"""Wires the scheduler: settings, the podman runtime over every node, subscriptions."""

from __future__ import annotations

import aiohttp

from bindery import service
from bindery.bus import Bus
from bindery.runtimes import PodmanRuntime
from bindery.scheduler.handlers import subscribe
from bindery.scheduler.launch import Scheduler
from bindery.scheduler.settings import SchedulerSettings


def main() -> None:
    settings = SchedulerSettings()
    settings.require_secret()

    async def start(bus: Bus) -> None:
        nodes = settings.node_urls()
        runtime = PodmanRuntime(settings.instance, nodes)
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        await subscribe(bus, Scheduler(settings, runtime, list(nodes), bus.publish, http))

    service.run("scheduler", settings, settings.health_port, start)
