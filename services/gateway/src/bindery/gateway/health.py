"""`GET /health`: 200 only when the broker and the registry both answer, else 503 naming which."""

from __future__ import annotations

import aiohttp
from aiohttp import web

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


async def health(request: web.Request) -> web.Response:
    gateway = request.app[GATEWAY]
    broker = gateway.bus.connected
    registry = gateway.registry_check is not None and await gateway.registry_check()
    status = 200 if broker and registry else 503
    return web.json_response(
        {"broker": broker, "registry": registry},
        status=status,
        headers={"Cache-Control": "no-store"},
    )
