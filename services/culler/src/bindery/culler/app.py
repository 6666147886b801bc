"""Wires the culler: rebuild the view from the runtime, subscribe, check on a timer.

The culler is a singleton: replicas would split the activity events between them.
"""

from __future__ import annotations

import asyncio

from bindery import service
from bindery.bus import Bus
from bindery.culler.cull import Culler
from bindery.culler.handlers import subscribe
from bindery.culler.settings import CullerSettings
from bindery.runtimes import make_runtime


def main() -> None:
    settings = CullerSettings()
    tasks: set[asyncio.Task[None]] = set()

    async def start(bus: Bus) -> None:
        culler = Culler(settings.idle_timeout, settings.max_age, bus.publish)
        runtime = await make_runtime(settings)
        culler.adopt(await runtime.list_sessions())
        await runtime.close()
        await subscribe(bus, culler)

        async def tick() -> None:
            while True:
                await asyncio.sleep(settings.check_interval)
                await culler.check()

        task = asyncio.create_task(tick())
        tasks.add(task)

    service.run("culler", settings, settings.health_port, start)
