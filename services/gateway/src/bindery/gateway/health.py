"""`GET /health`: whether this gateway can launch, and what it depends on.

Out: `broker`, `registry`, `nodes` (each runtime node's answer), `sessions` with the headroom
when the deployment's capacity is known (`BINDERY_MAX_SESSIONS`, or found from the nodes). 503
when a hard dependency is down: the broker, the registry, or every runtime node (one node down
leaves the others to run sessions, so it is only reported).
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import web

from bindery.gateway.deps import NodeCheck
from bindery.gateway.keys import GATEWAY


async def registry_reachable(
    client: aiohttp.ClientSession,
    base_url: str,
    timeout: float,  # noqa: ASYNC109
) -> bool:
    """The OCI distribution API's base endpoint answers 200 when the registry serves requests."""
    try:
        async with client.get(
            f"{base_url}/v2/", timeout=aiohttp.ClientTimeout(total=timeout)
        ) as response:
            return response.status == 200
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False


async def nodes_reachable(nodes: dict[str, NodeCheck], timeout: float) -> dict[str, bool]:  # noqa: ASYNC109
    """Ask every node at once, each within `timeout`; a node that errs or hangs is down."""

    async def one(check: NodeCheck) -> bool:
        try:
            return await asyncio.wait_for(check(), timeout)
        except Exception:
            return False

    names = list(nodes)
    answers = await asyncio.gather(*(one(nodes[name]) for name in names))
    return dict(zip(names, answers, strict=True))


async def health(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    settings = gateway.settings
    broker = gateway.bus.connected
    registry_check, nodes_check = gateway.registry_check, gateway.node_checks
    registry, nodes = await asyncio.gather(
        registry_check() if registry_check is not None else _false(),
        nodes_reachable(nodes_check, settings.registry_timeout),
    )
    ok = broker and registry and (not nodes or any(nodes.values()))
    body: dict[str, Any] = {
        "ok": ok,
        "broker": broker,
        "registry": registry,
        "nodes": nodes,
        "sessions": len(gateway.routes),
    }
    if gateway.capacity:
        body["max_sessions"] = gateway.capacity
        body["headroom"] = max(0, gateway.capacity - len(gateway.routes))
    return web.json_response(body, status=200 if ok else 503, headers={"Cache-Control": "no-store"})


async def _false() -> bool:
    return False
