"""Wires the gateway: routes, the shared client pool, background tasks, clean shutdown.

`create_app(gateway)` takes its dependencies in a `Gateway` (bus, runtime, registry check), so
tests build it with fakes and no broker.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from bindery.gateway import health, launch, pages
from bindery.gateway.deps import Gateway
from bindery.gateway.keys import CLIENT, GATEWAY, PROXY
from bindery.gateway.proxy import Proxy, rebuild_routes_until_done, run_activity_flusher

log = structlog.get_logger("bindery.gateway")

_QUIET_PREFIXES = ("/user/", "/static/", "/health")


@web.middleware
async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One line per request: method, path (never the query string: it may hold a token),
    status and duration. No stack trace ever reaches a client."""
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except (asyncio.CancelledError, ConnectionError):
        status = 499
        raise
    except Exception:
        log.exception("http.unhandled", method=request.method, path=request.path)
        return web.json_response({"message": "Internal error in the gateway."}, status=500)
    finally:
        quiet = request.path.startswith(_QUIET_PREFIXES)
        (log.debug if quiet else log.info)(
            "http.request",
            method=request.method,
            path=request.path,
            status=status,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )


async def proxy_handler(request: web.Request) -> web.StreamResponse:
    return await request.app[PROXY].handle(request)


async def _resources(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    settings = gateway.settings
    client = Proxy.make_client(settings.proxy_max_connections, settings.proxy_connect_timeout)
    app[CLIENT] = client
    app[PROXY] = Proxy(gateway.routes, client)
    if gateway.registry_check is None:
        base_url = f"{settings.registry_scheme}://{settings.registry}"

        async def check() -> bool:
            return await health.registry_reachable(client, base_url, settings.registry_timeout)

        gateway.registry_check = check
    tasks = [
        asyncio.create_task(
            run_activity_flusher(
                gateway.routes, gateway.bus.publish, settings.activity_flush_interval
            ),
            name="activity-flusher",
        )
    ]
    if gateway.runtime is not None:
        tasks.append(
            asyncio.create_task(
                rebuild_routes_until_done(
                    gateway.runtime, gateway.routes, settings.routes_retry_interval
                ),
                name="routes-rebuild",
            )
        )
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    await client.close()


async def _on_shutdown(app: web.Application) -> None:
    """Before connections are closed: end event streams and say goodbye on websockets."""
    app[GATEWAY].progress.close()
    if PROXY in app:
        await app[PROXY].close()


def create_app(gateway: Gateway) -> web.Application:
    app = web.Application(middlewares=[access_log])
    app[GATEWAY] = gateway
    app.cleanup_ctx.append(_resources)
    app.on_shutdown.append(_on_shutdown)

    router = app.router
    router.add_get("/", pages.home)
    router.add_get("/launch", pages.launch_form)
    router.add_get(r"/v2/{tail:[\s\S]*}", pages.launch_page)
    router.add_get(r"/build/{tail:[\s\S]*}", launch.build)
    router.add_get("/health", health.health)
    router.add_static("/static/", pages.STATIC, append_version=False)
    router.add_route("*", "/user/{session}", proxy_handler)
    router.add_route("*", r"/user/{session}/{tail:[\s\S]*}", proxy_handler)
    return app
