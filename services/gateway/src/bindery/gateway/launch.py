"""`GET /build/<provider>/<spec>`: start a launch and stream its progress (BinderHub's API).

In: the raw request path, `?build_only=true`, and a resume point on a reconnect (`Last-Event-ID`,
or `?launch_id=<id>&after=<n>`, where after=-1 replays everything). Out: a launch-requested event
(only for a new launch) and its progress until `ready` or `failed`: Server-Sent Events, or JSON
messages when the request is a websocket upgrade (Bindery's own launch page).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from bindery.events import LaunchRequested
from bindery.gateway import sse
from bindery.gateway.deps import Gateway
from bindery.gateway.keys import GATEWAY
from bindery.gateway.metrics import LAUNCHES_REQUESTED, LAUNCHES_RESUMED, RATE_LIMITED
from bindery.gateway.progress import Entry, LaunchProgress, ProgressHub
from bindery.gateway.specs import InvalidSpec, parse_raw_spec

log = structlog.get_logger("bindery.gateway.launch")

BUS_DOWN_MESSAGE = (
    "Bindery could not start the launch: its message broker is unavailable. "
    "Try again in a minute.\n"
)
_LAUNCH_ID = re.compile(r"^[0-9a-f]{1,64}$")

SendEntry = Callable[[LaunchProgress, Entry], Awaitable[None]]
SendKeepalive = Callable[[], Awaitable[None]]


def resume_point(request: web.Request) -> tuple[str, int] | None:
    """Where a reconnecting client left: `Last-Event-ID` (what EventSource sends back) or the
    `launch_id`/`after` query (what a page reload or a websocket can send)."""
    parsed = sse.parse_last_event_id(request.headers.get("Last-Event-ID"))
    if parsed is not None:
        return parsed
    launch_id = request.query.get("launch_id", "")
    if not _LAUNCH_ID.match(launch_id):
        return None
    try:
        after = max(-1, int(request.query.get("after", "-1")))
    except ValueError:
        after = -1
    return launch_id, after


def resumable(
    progress: ProgressHub, point: tuple[str, int] | None, provider: str, spec: str
) -> tuple[LaunchProgress, int] | None:
    """The launch (and position) a reconnecting client left, if this replica still holds it and
    it is the same provider/spec (an id alone must not hand out another launch's progress)."""
    if point is None:
        return None
    launch = progress.get(point[0])
    if launch is None or (launch.provider, launch.spec) != (provider, spec):
        return None
    return launch, point[1]


async def start_launch(
    gateway: Gateway, provider: str, spec: str, build_only: bool
) -> LaunchProgress:
    """Open the launch's buffer (with `waiting`), then publish its request."""
    launch_id = uuid.uuid4().hex
    # Listen before publishing: the first answer may come back before publish() returns.
    launch = gateway.progress.open(launch_id, provider, spec, build_only)
    log.info("launch.requested", launch_id=launch_id, provider=provider, build_only=build_only)
    LAUNCHES_REQUESTED.labels(provider=provider).inc()
    try:
        await gateway.bus.publish(
            LaunchRequested(
                launch_id=launch_id, provider=provider, spec=spec, build_only=build_only
            )
        )
    except Exception as exc:
        log.error("launch.publish_failed", launch_id=launch_id, error=str(exc))
        gateway.progress.fail(launch_id, BUS_DOWN_MESSAGE)
    return launch


async def build(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    try:
        provider, spec = parse_raw_spec(request.raw_path, "/build/")
    except InvalidSpec as exc:
        return web.json_response({"message": str(exc)}, status=400)
    build_only = request.query.get("build_only", "").lower() == "true"
    websocket = request.headers.get("Upgrade", "").lower() == "websocket"

    resume = resumable(gateway.progress, resume_point(request), provider, spec)
    if resume is not None:
        launch, after = resume
        log.info("launch.resumed", launch_id=launch.launch_id, after=after)
        LAUNCHES_RESUMED.inc()
    else:
        wait = gateway.abuse.launch_wait(request) if gateway.abuse else 0.0
        if wait > 0:
            RATE_LIMITED.inc()
            return web.json_response(
                {
                    "phase": "failed",
                    "reason": "rate_limited",
                    "message": f"Too many launches from your address: try again in {wait:.0f} s.",
                },
                status=429,
                headers={"Retry-After": str(max(1, round(wait)))},
            )
        launch = await start_launch(gateway, provider, spec, build_only)
        after = -1
        if gateway.abuse:
            gateway.abuse.record(request, launch.launch_id, provider, spec)
    if websocket:
        return await _progress_socket(request, gateway, launch, after)
    return await _progress_events(request, gateway, launch, after)


async def _progress_events(
    request: web.Request, gateway: Gateway, launch: LaunchProgress, after: int
) -> web.StreamResponse:
    response = web.StreamResponse(headers=sse.HEADERS)
    await response.prepare(request)

    async def send_entry(launch: LaunchProgress, entry: Entry) -> None:
        await response.write(
            sse.format_event(entry.payload, sse.event_id(launch.launch_id, entry.seq))
        )

    async def send_keepalive() -> None:
        await response.write(sse.KEEPALIVE)

    try:
        await stream(
            launch,
            after,
            gateway.progress,
            gateway.settings.keepalive_interval,
            send_entry,
            send_keepalive,
        )
        await response.write_eof()
    except ConnectionError:
        log.info("launch.client_gone", launch_id=launch.launch_id)
    return response


async def _progress_socket(
    request: web.Request, gateway: Gateway, launch: LaunchProgress, after: int
) -> web.StreamResponse:
    """The same entries as JSON messages, each with its `id` for resuming; pings keep it open."""
    ws = web.WebSocketResponse(heartbeat=gateway.settings.keepalive_interval)
    await ws.prepare(request)

    async def send_entry(launch: LaunchProgress, entry: Entry) -> None:
        await ws.send_json({"id": sse.event_id(launch.launch_id, entry.seq), **entry.payload})

    async def send_keepalive() -> None:
        """Pings (heartbeat) already keep the connection open."""

    sender = asyncio.create_task(
        stream(
            launch,
            after,
            gateway.progress,
            gateway.settings.keepalive_interval,
            send_entry,
            send_keepalive,
        )
    )

    async def read_until_closed() -> None:
        async for _message in ws:  # the client has nothing to say; this sees its close
            pass

    reader = asyncio.create_task(read_until_closed())
    try:
        await asyncio.wait({sender, reader}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in (sender, reader):
            task.cancel()
        for task in (sender, reader):
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await task
        await ws.close()
    return ws


async def stream(
    launch: LaunchProgress,
    after: int,
    progress: ProgressHub,
    keepalive: float,
    send_entry: SendEntry,
    send_keepalive: SendKeepalive,
) -> None:
    """Send entries as they come, a keepalive when idle, until a terminal phase. The client
    counts as watching the launch until it leaves (or the stream ends)."""
    with progress.watching(launch):
        while True:
            for entry in launch.since(after):
                await send_entry(launch, entry)
                after = entry.seq
                if entry.terminal:
                    return
            if progress.closing:
                return
            if not await launch.wait(after, keepalive):
                await send_keepalive()
