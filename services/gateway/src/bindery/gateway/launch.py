"""`GET /build/<provider>/<spec>`: start a launch and stream its progress (BinderHub's API).

In: the raw request path, `?build_only=true`, a resume point on a reconnect (`Last-Event-ID`,
or `?launch_id=<id>&after=<n>&resume=<secret>`, where after=-1 replays everything), and the
page's Origin. Out: a launch-requested event (only for a new launch) and its progress until
`ready` or `failed`: Server-Sent Events, or JSON messages when the request is a websocket upgrade
(Bindery's own launch page).

A launch started while a stage (resolver, builder, scheduler) has no live consumer gets a
`waiting` line naming it (stages.py), not a failure: its request waits durably in that stage's
queue and goes on the moment a supervisor has the service back (seconds), as a mybinder.org user
waits on "Waiting for build to start...": failing would make them start over for an outage
shorter than their retry, and saying nothing would leave them watching a launch that cannot move.

A ready session's token and handoff code go only to the client that started the launch, or one
that resumes with the launch's resume secret (sessionauth.py); anyone else who knows the launch
id sees its progress and nothing more. Pages on other origins may start launches only if
`BINDERY_ALLOWED_ORIGINS` allows them (bindery.origins): browsers do not apply CORS to websockets
or stop a cross-origin request from reaching us, so the Origin is checked here.
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
from bindery.gateway.abuse import Network, Refusal, peer
from bindery.gateway.deps import Gateway
from bindery.gateway.keys import GATEWAY
from bindery.gateway.metrics import LAUNCHES_REQUESTED, LAUNCHES_RESUMED
from bindery.gateway.progress import Entry, LaunchProgress, Payload, ProgressHub
from bindery.gateway.specs import InvalidSpec, parse_raw_spec
from bindery.origins import InvalidOrigins, normalise_origin

log = structlog.get_logger("bindery.gateway.launch")

BUS_DOWN_MESSAGE = (
    "Bindery could not start the launch: its message broker is unavailable. "
    "Try again in a minute.\n"
)
_LAUNCH_ID = re.compile(r"^[0-9a-f]{1,64}$")

SendEntry = Callable[[LaunchProgress, Entry], Awaitable[None]]
SendKeepalive = Callable[[], Awaitable[None]]


ResumePoint = tuple[str, int, str]
"""A reconnecting client's launch id, the last entry it saw, and the resume secret it holds."""


def resume_point(request: web.Request) -> ResumePoint | None:
    """Where a reconnecting client left: `Last-Event-ID` (what EventSource sends back) or the
    `launch_id`/`after`/`resume` query (what a page reload or a websocket can send)."""
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
    return launch_id, after, request.query.get("resume", "")


def resumable(
    progress: ProgressHub, point: ResumePoint | None, provider: str, spec: str
) -> tuple[LaunchProgress, int] | None:
    """The launch (and position) a reconnecting client left, if this replica still holds it and
    it is the same provider/spec (an id alone must not hand out another launch's progress)."""
    if point is None:
        return None
    launch = progress.get(point[0])
    if launch is None or (launch.provider, launch.spec) != (provider, spec):
        return None
    return launch, point[1]


def cors_headers(gateway: Gateway, request: web.Request) -> dict[str, str]:
    """`Access-Control-Allow-Origin` for a page on an allowed other origin; nothing otherwise."""
    origin = request.headers.get("Origin")
    allowed = gateway.origins.allow_origin_header(origin) if origin else None
    return {"Access-Control-Allow-Origin": allowed, "Vary": "Origin"} if allowed else {}


def origin_refused(gateway: Gateway, request: web.Request) -> web.Response | None:
    """A 403 for a page on another origin that may not embed this Bindery; None to go on."""
    origin = request.headers.get("Origin")
    if origin is None or gateway.origins.allows(origin):
        return None
    try:
        own = {normalise_origin(gateway.settings.public_url), f"{request.scheme}://{request.host}"}
        if normalise_origin(origin) in own:
            return None
    except InvalidOrigins:
        pass
    return web.json_response(
        {
            "phase": "failed",
            "reason": "origin_not_allowed",
            "message": f"Pages on {origin} may not start launches on this Bindery: its operators "
            "allow other sites to embed it only by name (BINDERY_ALLOWED_ORIGINS).",
        },
        status=403,
    )


def shown(gateway: Gateway, launch: LaunchProgress, entry: Entry, entitled: bool) -> Payload:
    """An entry as this client sees it: `ready` with the session's token (for API clients such
    as Thebe) and a one-time handoff code (for a browser: sessionauth.py) when it is entitled."""
    payload = entry.payload
    if not entitled or not launch.session or payload.get("phase") != "ready":
        return payload
    credentials = gateway.credentials
    return {
        **payload,
        "token": credentials.token(launch.session),
        "handoff": credentials.handoff(launch.session),
    }


async def start_launch(
    gateway: Gateway, provider: str, spec: str, build_only: bool, client: Network | None = None
) -> LaunchProgress:
    """Open the launch's buffer (with `waiting`, and a note naming any stage that no service
    consumes right now), count it against `client`, and publish its request in the background:
    through a broker restart the publish waits for the broker to come back (Bus.publish), and the
    client watches `waiting` meanwhile instead of an empty answer."""
    launch_id = uuid.uuid4().hex
    # Listen before publishing: the first answer may come back before publish() returns.
    launch = gateway.progress.open(launch_id, provider, spec, build_only)
    stages = await gateway.stage_check() if gateway.stage_check is not None else None
    if stages is not None and stages.stalled:
        gateway.progress.stalled(launch_id, stages.stalled)
    if gateway.abuse and client is not None:
        gateway.abuse.launches.start(client, launch_id)
    log.info("launch.requested", launch_id=launch_id, provider=provider, build_only=build_only)
    LAUNCHES_REQUESTED.labels(provider=provider).inc()
    request = LaunchRequested(
        launch_id=launch_id,
        provider=provider,
        spec=spec,
        build_only=build_only,
        launch_host=gateway.settings.public_url.rstrip("/") + "/",
    )
    publishing = asyncio.create_task(_publish_request(gateway, request))
    _PUBLISHING.add(publishing)
    publishing.add_done_callback(_PUBLISHING.discard)
    return launch


#: Requests being published (the event loop holds tasks only weakly).
_PUBLISHING: set[asyncio.Task[None]] = set()


async def _publish_request(gateway: Gateway, request: LaunchRequested) -> None:
    try:
        await gateway.bus.publish(request)
    except Exception as exc:
        log.error("launch.publish_failed", launch_id=request.launch_id, error=str(exc))
        gateway.progress.fail(request.launch_id, BUS_DOWN_MESSAGE)
        if gateway.abuse:
            gateway.abuse.launches.end(request.launch_id)


async def build(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    try:
        provider, spec = parse_raw_spec(request.raw_path, "/build/")
    except InvalidSpec as exc:
        return web.json_response({"message": str(exc)}, status=400)
    refused = origin_refused(gateway, request)
    if refused is not None:
        return refused
    build_only = request.query.get("build_only", "").lower() == "true"
    websocket = request.headers.get("Upgrade", "").lower() == "websocket"

    point = resume_point(request)
    resume = resumable(gateway.progress, point, provider, spec)
    if point is not None and resume is not None:
        launch, after = resume
        entitled = gateway.credentials.resumes(launch.launch_id, point[2])
        log.info("launch.resumed", launch_id=launch.launch_id, after=after, entitled=entitled)
        LAUNCHES_RESUMED.inc()
    else:
        client = gateway.abuse.client(*peer(request)) if gateway.abuse else None
        refusal = gateway.abuse.refusal(client) if gateway.abuse else None
        if refusal is not None:
            return await _refuse(request, gateway, refusal, websocket)
        launch = await start_launch(gateway, provider, spec, build_only, client)
        after = -1
        entitled = True
        if gateway.abuse:
            gateway.abuse.record(request, launch.launch_id, provider, spec)
    if websocket:
        return await _progress_socket(request, gateway, launch, after, entitled)
    return await _progress_events(request, gateway, launch, after, entitled)


async def _refuse(
    request: web.Request, gateway: Gateway, refusal: Refusal, websocket: bool
) -> web.StreamResponse:
    """A launch refused before it started, as a `failed` event where a launch page listens (its
    websocket, an EventSource: neither shows an HTTP error's body), else a 429 with the same
    JSON. BinderHub's clients show a failed event's message the same way."""
    payload = {"phase": "failed", "reason": refusal.reason, "message": refusal.message}
    if websocket:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.send_json(payload)
        await ws.close()
        return ws
    cors = cors_headers(gateway, request)
    if "text/event-stream" in request.headers.get("Accept", ""):
        response = web.StreamResponse(headers={**sse.HEADERS, **cors})
        await response.prepare(request)
        await response.write(sse.format_event(payload))
        await response.write_eof()
        return response
    if refusal.retry_after is not None:
        cors["Retry-After"] = str(max(1, round(refusal.retry_after)))
    return web.json_response(payload, status=429, headers=cors)


async def _progress_events(
    request: web.Request, gateway: Gateway, launch: LaunchProgress, after: int, entitled: bool
) -> web.StreamResponse:
    response = web.StreamResponse(headers={**sse.HEADERS, **cors_headers(gateway, request)})
    await response.prepare(request)
    resume = gateway.credentials.resume_secret(launch.launch_id) if entitled else ""

    async def send_entry(launch: LaunchProgress, entry: Entry) -> None:
        await response.write(
            sse.format_event(
                shown(gateway, launch, entry, entitled),
                sse.event_id(launch.launch_id, entry.seq, resume),
            )
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
    request: web.Request, gateway: Gateway, launch: LaunchProgress, after: int, entitled: bool
) -> web.StreamResponse:
    """The same entries as JSON messages, each with its `id` for resuming; pings keep it open."""
    ws = web.WebSocketResponse(heartbeat=gateway.settings.keepalive_interval)
    await ws.prepare(request)
    resume = gateway.credentials.resume_secret(launch.launch_id) if entitled else ""

    async def send_entry(launch: LaunchProgress, entry: Entry) -> None:
        await ws.send_json(
            {
                "id": sse.event_id(launch.launch_id, entry.seq, resume),
                **shown(gateway, launch, entry, entitled),
            }
        )

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
