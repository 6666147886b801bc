"""Wires the gateway: the runtime, the subscriptions, the recovery of missed progress after a
reconnect, the web app (routes, the shared client pool, clean shutdown) and the background loops,
all on the shared service runner (bindery.service), which supervises the loops, reports them in
`/health` and closes the resources at the stop.

`create_app(gateway)` takes its dependencies in a `Gateway` (bus, runtime, registry check), so
tests build it with fakes and no broker. `main()` is `python -m bindery.gateway`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from functools import partial
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from bindery import service, telemetry
from bindery.bus.eventlog import StreamReader
from bindery.gateway import (
    buildlog,
    fastlane,
    health,
    info,
    launch,
    metrics,
    pages,
    repoproviders,
    slowclients,
)
from bindery.gateway.abuse import peer
from bindery.gateway.activity import flush_activity
from bindery.gateway.deps import Gateway
from bindery.gateway.fairness import Fairness
from bindery.gateway.handlers import subscribe
from bindery.gateway.keys import CLIENT, GATEWAY, PROXY
from bindery.gateway.metrics import BANNED, family, observe_request
from bindery.gateway.proxy import Proxy
from bindery.gateway.recovery import Recovery
from bindery.gateway.routes import rebuild_routes_once
from bindery.gateway.sessionauth import handoff_handler
from bindery.gateway.settings import GatewaySettings
from bindery.gateway.stages import StageCheck
from bindery.gateway.urlpath import HANDOFF_PATH
from bindery.runtimes import Runtime, make_runtime
from bindery.runtimes.capacity import node_memories, sessions_fitting

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
        path = request.path
        seconds = time.monotonic() - started
        observe_request(family(path), status, seconds)
        # Proxied requests are the hot path: their line is built only when someone reads it.
        quiet = path.startswith(_QUIET_PREFIXES)
        if not quiet or log.is_enabled_for(logging.DEBUG):
            (log.debug if quiet else log.info)(
                "http.request",
                method=request.method,
                path=path,
                status=status,
                duration_ms=round(seconds * 1000, 1),
            )


_NEVER_BANNED = ("/health", "/metrics")


@web.middleware
async def refuse_banned(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Banned networks get nothing but a 403 saying so (health checks and scrapes still work)."""
    abuse = request.app[GATEWAY].abuse
    if (
        abuse is not None
        and not request.path.startswith(_NEVER_BANNED)
        and abuse.banned(*peer(request))
    ):
        BANNED.inc()
        return web.json_response(
            {"message": "Your network is banned from this Bindery because of abuse seen from it."},
            status=403,
        )
    return await handler(request)


def _secure(settings: GatewaySettings) -> bool:
    """Cookies only over HTTPS when people reach the gateway over HTTPS."""
    return settings.public_url.startswith("https://")


async def proxy_handler(request: web.Request) -> web.StreamResponse:
    return await request.app[PROXY].handle(request)


def read_build_logs(gateway: Gateway) -> buildlog.BuildLogs:
    """The gateway's reads of the build-log stream (made by the first call): the answers of
    `/api/builds/<id>/log`, and progress reading back the lines of a build it did not see from
    its first one, over the same connection and read slots."""
    if gateway.build_logs is None:
        settings = gateway.settings
        gateway.build_logs = buildlog.BuildLogs(
            StreamReader(settings.amqp_url, "gateway build-log reader"),
            cache_bytes=settings.build_log_cache_bytes,
            max_reads=settings.build_log_max_reads,
            read_wait=settings.build_log_read_wait,
        )
    gateway.progress.read_back = gateway.build_logs.lines
    return gateway.build_logs


async def _resources(app: web.Application) -> AsyncIterator[None]:
    gateway = app[GATEWAY]
    settings = gateway.settings
    # For the gateway's own checks; proxied requests go through the proxy's pool.
    client = aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.proxy_connect_timeout)
    )
    app[CLIENT] = client
    app[PROXY] = Proxy(
        gateway.routes,
        gateway.credentials,
        gateway.urls,
        fairness=Fairness.of(settings),
        # A client is counted as the launch limits count it (an IPv6 /64 is one client).
        client_of=gateway.abuse.client if gateway.abuse is not None else lambda *_peer: None,
        connect_timeout=settings.proxy_connect_timeout,
        idle_timeout=settings.proxy_idle_timeout,
        body_timeout=settings.client_body_timeout,
        secure_cookie=_secure(settings),
    )
    build_logs = read_build_logs(gateway)
    if gateway.registry_check is None:
        base_url = f"{settings.registry_scheme}://{settings.registry}"

        async def check() -> bool:
            return await health.registry_reachable(client, base_url, settings.registry_timeout)

        gateway.registry_check = check
    yield
    await client.close()
    await build_logs.close()
    if gateway.abuse is not None:
        gateway.abuse.close()


async def _on_shutdown(app: web.Application) -> None:
    """Before connections are closed: end event streams and say goodbye on websockets."""
    app[GATEWAY].progress.close()
    if PROXY in app:
        await app[PROXY].close()


def create_app(gateway: Gateway) -> web.Application:
    app = web.Application(
        middlewares=[
            slowclients.head_deadline,
            access_log,
            refuse_banned,
            gateway.urls.middleware(),
            telemetry.http_middleware(("/build/",)),
        ]
    )
    app[GATEWAY] = gateway
    app.cleanup_ctx.append(_resources)
    app.on_shutdown.append(_on_shutdown)

    router = app.router
    router.add_get("/", pages.home)
    router.add_get("/launch", pages.launch_form)
    router.add_get(r"/v2/{tail:[\s\S]*}", pages.launch_page)
    router.add_get(r"/repo/{tail:[\s\S]*}", pages.legacy_repo)
    router.add_get(r"/build/{tail:[\s\S]*}", launch.build)
    router.add_get("/health", health.health)
    router.add_get("/api/builds/{build_id}/log", buildlog.build_log)
    router.add_get("/api/repoproviders", repoproviders.repoproviders)
    router.add_get("/versions", info.versions)
    router.add_get("/metrics", metrics.handler(gateway))
    router.add_get("/api/openapi.json", info.openapi)
    router.add_get("/badge.svg", pages.badge)
    router.add_get("/badge_logo.svg", pages.badge_logo)
    router.add_get("/favicon.ico", pages.favicon)
    router.add_static("/static/", pages.STATIC, append_version=False)
    router.add_get(
        f"/user/{{session}}/{HANDOFF_PATH}",
        handoff_handler(gateway.credentials, secure_cookie=_secure(gateway.settings)),
    )
    # Proxied paths are nearly all requests: their pattern is tried first among the rest.
    router.add_route("*", r"/user/{session}/{tail:[\s\S]*}", proxy_handler)
    router.add_route("*", "/user/{session}", proxy_handler)
    return app


def loops(gateway: Gateway) -> list[service.Loop]:
    """The gateway's background loops: activity published once per interval, and the routes
    of sessions that outlived a restart rebuilt from the runtime, retried until done."""
    settings = gateway.settings
    found = [
        service.Loop(
            "activity",
            partial(flush_activity, gateway.routes, gateway.bus.publish),
            settings.activity_flush_interval,
        )
    ]
    if gateway.runtime is not None:
        found.append(
            service.Loop(
                "routes",
                partial(rebuild_routes_once, gateway.runtime, gateway.routes),
                settings.routes_retry_interval,
                at_start=True,
            )
        )
    return found


async def serving(app: web.Application, settings: GatewaySettings) -> service.Loop:
    """Serve `app` as a loop of the runner, whose stop closes it before the bus: no request
    then finds a closed bus, and event streams end, telling browsers to reconnect elsewhere."""
    served = await fastlane.serve(app, settings, settings.host, settings.port)

    async def held_until_the_stop() -> None:
        # The server accepts connections by itself; the step only keeps its place.
        await asyncio.Event().wait()

    async def stop() -> None:
        await served.close()

    return service.Loop("http", held_until_the_stop, 0, close=stop)


async def nodes_capacity(settings: GatewaySettings, runtime: Runtime) -> int:
    """Sessions the nodes hold at once, as the scheduler admits them (a node down now counts
    for none, as it does for the scheduler started now)."""
    sessions = sessions_fitting(await node_memories(runtime, settings.node_memory), settings)
    log.info("gateway.capacity", sessions=sessions)
    return sessions


def main() -> None:
    settings = GatewaySettings()
    settings.require_secret()

    async def start(starter: service.Starter) -> list[service.Loop]:
        bus = starter.bus
        runtime = await make_runtime(settings)
        starter.resources.push_async_callback(runtime.close)
        # The nodes are asked only when the operator did not say (`max_sessions`).
        found = 0 if settings.max_sessions else await nodes_capacity(settings, runtime)
        gateway = Gateway.create(
            settings,
            bus,
            runtime,
            node_checks=runtime.node_checks(),
            capacity=found,
            stage_check=StageCheck(bus.consumer_counts, settings.stage_check_interval),
            failing_loops=starter.loops.unhealthy,
        )
        # Before subscribing: the first lines this replica gets may be of a build it must
        # read the earlier lines of.
        read_build_logs(gateway)
        # Subscribe before serving: no /build stream may start before its answers can arrive.
        handlers = await subscribe(bus, gateway)
        # What its exclusive queue missed while the broker was away comes from the event log.
        recovery = Recovery(settings.amqp_url, gateway.progress, handlers.on_event)
        starter.resources.push_async_callback(recovery.close)
        bus.on_reconnect(recovery.reconnected)
        http = await serving(create_app(gateway), settings)
        log.info("gateway.started", url=settings.public_url, host=settings.host, port=settings.port)
        return [http, *loops(gateway)]

    # Its /health and /metrics are the web app's, on its own port.
    service.run("gateway", settings, None, start, event_loop=on_uvloop)


def on_uvloop(coroutine: Coroutine[Any, Any, int]) -> int:
    """On uvloop where it is installed: the proxy's per-request cost is mostly the loop's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coroutine)
    return uvloop.run(coroutine)
