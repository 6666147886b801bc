"""`python -m bindery.gateway`: connect to the broker, subscribe, serve HTTP until SIGTERM."""

from __future__ import annotations

import asyncio
import signal

import structlog
from aiohttp import web

from bindery import logs
from bindery.gateway.app import create_app
from bindery.gateway.deps import Gateway
from bindery.gateway.handlers import subscribe
from bindery.gateway.settings import GatewaySettings
from bindery.runtimes import PodmanRuntime
from bindery.service import make_bus

log = structlog.get_logger("bindery.gateway")


async def serve(settings: GatewaySettings) -> None:
    bus = make_bus(settings, "gateway")
    await bus.connect()
    runtime = PodmanRuntime(settings.instance, settings.node_urls())
    gateway = Gateway.create(settings, bus, runtime)
    # Subscribe before serving: no /build stream may start before its answers can arrive.
    await subscribe(bus, gateway)
    # aiohttp's access log would print query strings, which may hold tokens: ours does not.
    runner = web.AppRunner(create_app(gateway), access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    await web.TCPSite(runner, settings.host, settings.port).start()
    log.info("gateway.started", url=settings.public_url, host=settings.host, port=settings.port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("gateway.stopping")
    await runner.cleanup()
    await bus.close()
    await runtime.close()


def main() -> None:
    settings = GatewaySettings()
    settings.require_secret()
    logs.configure("gateway", settings.log_format, settings.log_level)
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
