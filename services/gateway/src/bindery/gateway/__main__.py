"""`python -m bindery.gateway`: connect to the broker, subscribe, serve HTTP until SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Coroutine
from typing import Any

import structlog

from bindery import logs, telemetry
from bindery.gateway import slowclients
from bindery.gateway.app import create_app
from bindery.gateway.deps import Gateway, NodeCheck
from bindery.gateway.handlers import subscribe
from bindery.gateway.recovery import Recovery
from bindery.gateway.settings import GatewaySettings
from bindery.gateway.stages import StageCheck
from bindery.runtimes import PodmanRuntime, Runtime, make_runtime
from bindery.runtimes.capacity import node_memories, sessions_fitting
from bindery.runtimes.podman import PodmanNode
from bindery.service import make_bus

log = structlog.get_logger("bindery.gateway")


async def serve(settings: GatewaySettings) -> None:
    bus = make_bus(settings, "gateway")
    await bus.connect()
    runtime = await make_runtime(settings)
    # Podman nodes answer pings; a Kubernetes cluster reports its nodes itself.
    node_checks = (
        {name: ping(node) for name, node in runtime.nodes.items()}
        if isinstance(runtime, PodmanRuntime)
        else {}
    )
    # The nodes are asked only when the operator did not say (`max_sessions`).
    found = 0 if settings.max_sessions else await nodes_capacity(settings, runtime)
    gateway = Gateway.create(
        settings,
        bus,
        runtime,
        node_checks=node_checks,
        capacity=found,
        stage_check=StageCheck(bus.consumer_counts, settings.stage_check_interval),
    )
    # Subscribe before serving: no /build stream may start before its answers can arrive.
    handlers = await subscribe(bus, gateway)
    # What its exclusive queue missed while the broker was away comes from the event log.
    recovery = Recovery(settings.amqp_url, gateway.progress, handlers.on_event)
    bus.on_reconnect(recovery.reconnected)
    runner, server = await slowclients.serve(
        create_app(gateway), settings, settings.host, settings.port
    )
    log.info("gateway.started", url=settings.public_url, host=settings.host, port=settings.port)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("gateway.stopping")
    server.close()
    await runner.cleanup()
    await recovery.close()
    await bus.close()
    await runtime.close()
    telemetry.shutdown()


async def nodes_capacity(settings: GatewaySettings, runtime: Runtime) -> int:
    """Sessions the nodes hold at once, as the scheduler admits them (a node down now counts
    for none, as it does for the scheduler started now)."""
    sessions = sessions_fitting(await node_memories(runtime, settings.node_memory), settings)
    log.info("gateway.capacity", sessions=sessions)
    return sessions


def ping(node: PodmanNode) -> NodeCheck:
    async def check() -> bool:
        await node.request("GET", "/_ping")
        return True

    return check


def main() -> None:
    settings = GatewaySettings()
    settings.require_secret()
    logs.configure("gateway", settings.log_format, settings.log_level)
    telemetry.configure("gateway", settings)
    run(serve(settings))


def run(main: Coroutine[Any, Any, None]) -> None:
    """On uvloop where it is installed: the proxy's per-request cost is mostly the loop's."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
    else:
        uvloop.run(main)


if __name__ == "__main__":
    main()
