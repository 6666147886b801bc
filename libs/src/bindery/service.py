"""Runs one service process: logging, tracing, the bus, health and metrics endpoints, and a
clean stop on SIGTERM.

In: the service name, its settings, a `start` coroutine that subscribes handlers and may return
extra background tasks. Out: a process that serves `/health` and `/metrics` on its health port
until stopped.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from bindery import logs, metrics, telemetry
from bindery.bus import Bus
from bindery.settings import CommonSettings

log = structlog.get_logger("bindery.service")

Starter = Callable[[Bus], Awaitable[None]]


def make_bus(settings: CommonSettings, service: str) -> Bus:
    """A service's bus. Services connect as their own broker user (bindery.bus.access), which
    may not configure the shared topology: whoever set the virtual host up declared it, so the
    event log's retention is that setup's setting, not the service's."""
    return Bus(settings.amqp_url, service, declare_topology=False)


async def serve(service: str, settings: CommonSettings, health_port: int, start: Starter) -> None:
    logs.configure(service, settings.log_format, settings.log_level)
    telemetry.configure(service, settings)
    bus = make_bus(settings, service)
    await bus.connect()

    async def health(_request: web.Request) -> web.Response:
        ok = bus.connected
        return web.json_response({"service": service, "broker": ok}, status=200 if ok else 503)

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics.route(lambda: refresh_queue_depths(bus)))
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.health_host, health_port).start()

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await start(bus)
    log.info("service.started", health_port=health_port)
    await stop.wait()
    log.info("service.stopping")
    await runner.cleanup()
    await bus.close()
    telemetry.shutdown()


async def refresh_queue_depths(bus: Bus) -> None:
    """Ask the broker how many messages wait in each queue this service consumes; a broker
    that does not answer leaves the last values rather than failing the scrape."""
    try:
        depths = await bus.queue_depths()
    except Exception as exc:
        log.warning("metrics.queue_depth_failed", error=str(exc))
        return
    for queue, depth in depths.items():
        metrics.QUEUE_DEPTH.labels(queue).set(depth)


def run(service: str, settings: CommonSettings, health_port: int, start: Starter) -> None:
    asyncio.run(serve(service, settings, health_port, start))
