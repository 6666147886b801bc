"""`GET /health`: whether this gateway can launch, and what it depends on.

Out: `broker`, `registry`, `nodes` (each runtime node's answer), `sessions` with the headroom
when the deployment's capacity is known (`BINDERY_MAX_SESSIONS`, or found from the nodes),
`stages` (live consumers of the resolver's, builder's and scheduler's queues, from stages.py's
cached count), `degraded` (those with none) and `failing_loops` (background loops the service
runner finds failing or ended, if any). 503 when a hard dependency is down: the broker, the
registry, or every runtime node (one node down leaves the others to run sessions, so it is only
reported); when a stage has no consumer, since launches reaching it cannot progress; and when a
background loop fails, as every service's /health does.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
from aiohttp import web

from bindery.gateway.keys import GATEWAY
from bindery.gateway.stages import Stages
from bindery.runtimes.base import NodeCheck


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
    registry, nodes, stages = await asyncio.gather(
        registry_check() if registry_check is not None else _false(),
        nodes_reachable(nodes_check, settings.registry_timeout),
        gateway.stage_check() if gateway.stage_check is not None else _none(),
    )
    degraded = stages.stalled if stages is not None else []
    failing = gateway.failing_loops()
    ok = broker and registry and (not nodes or any(nodes.values())) and not degraded
    ok = ok and not failing
    body: dict[str, Any] = {
        "ok": ok,
        "broker": broker,
        "registry": registry,
        "nodes": nodes,
        "sessions": len(gateway.routes),
        "stages": stages.consumers if stages is not None else {},
        "degraded": degraded,
    }
    if failing:
        body["failing_loops"] = failing
    if gateway.capacity:
        body["max_sessions"] = gateway.capacity
        body["headroom"] = max(0, gateway.capacity - len(gateway.routes))
    return web.json_response(body, status=200 if ok else 503, headers={"Cache-Control": "no-store"})


async def _false() -> bool:
    return False


async def _none() -> Stages | None:
    return None
