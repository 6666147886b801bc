"""`GET /build/<provider>/<spec>`: start a launch and stream its progress (BinderHub's API).

In: the raw request path, `?build_only=true`, and `Last-Event-ID` on a reconnect. Out: a
launch-requested event (only for a new launch) and Server-Sent Events until `ready` or `failed`.
"""

from __future__ import annotations

import uuid

import structlog
from aiohttp import web

from bindery.events import LaunchRequested
from bindery.gateway import sse
from bindery.gateway.keys import GATEWAY
from bindery.gateway.progress import LaunchProgress, ProgressHub
from bindery.gateway.specs import InvalidSpec, parse_raw_spec

log = structlog.get_logger("bindery.gateway.launch")

BUS_DOWN_MESSAGE = (
    "Bindery could not start the launch: its message broker is unavailable. "
    "Try again in a minute.\n"
)


def resumable(
    progress: ProgressHub, last_event_id: str | None, provider: str, spec: str
) -> tuple[LaunchProgress, int] | None:
    """The launch (and position) a reconnecting client left, if this replica still holds it and
    it is the same provider/spec (an id alone must not hand out another launch's progress)."""
    parsed = sse.parse_last_event_id(last_event_id)
    if parsed is None:
        return None
    launch = progress.get(parsed[0])
    if launch is None or (launch.provider, launch.spec) != (provider, spec):
        return None
    return launch, parsed[1]


async def build(request: web.Request) -> web.StreamResponse:
    gateway = request.app[GATEWAY]
    try:
        provider, spec = parse_raw_spec(request.raw_path, "/build/")
    except InvalidSpec as exc:
        return web.json_response({"message": str(exc)}, status=400)
    build_only = request.query.get("build_only", "").lower() == "true"

    resume = resumable(gateway.progress, request.headers.get("Last-Event-ID"), provider, spec)
    response = web.StreamResponse(headers=sse.HEADERS)
    if resume is not None:
        launch, after = resume
        log.info("launch.resumed", launch_id=launch.launch_id, after=after)
        await response.prepare(request)
    else:
        launch_id = uuid.uuid4().hex
        # Listen before publishing: the first answer may come back before publish() returns.
        launch = gateway.progress.open(launch_id, provider, spec)
        after = -1
        await response.prepare(request)
        after = await send_new(response, launch, after)
        log.info("launch.requested", launch_id=launch_id, provider=provider, build_only=build_only)
        try:
            await gateway.bus.publish(
                LaunchRequested(
                    launch_id=launch_id, provider=provider, spec=spec, build_only=build_only
                )
            )
        except Exception as exc:
            log.error("launch.publish_failed", launch_id=launch_id, error=str(exc))
            gateway.progress.fail(launch_id, BUS_DOWN_MESSAGE)
    try:
        await stream(response, launch, after, gateway.progress, gateway.settings.keepalive_interval)
        await response.write_eof()
    except ConnectionError:
        log.info("launch.client_gone", launch_id=launch.launch_id)
    return response


async def send_new(response: web.StreamResponse, launch: LaunchProgress, after: int) -> int:
    """Write every entry after `after`; returns the last seq written."""
    for entry in launch.since(after):
        await response.write(
            sse.format_event(entry.payload, sse.event_id(launch.launch_id, entry.seq))
        )
        after = entry.seq
        if entry.terminal:
            break
    return after


async def stream(
    response: web.StreamResponse,
    launch: LaunchProgress,
    after: int,
    progress: ProgressHub,
    keepalive: float,
) -> None:
    """Send entries as they come, a keepalive comment when idle, until a terminal phase."""
    while True:
        for entry in launch.since(after):
            await response.write(
                sse.format_event(entry.payload, sse.event_id(launch.launch_id, entry.seq))
            )
            after = entry.seq
            if entry.terminal:
                return
        if progress.closing:
            return
        if not await launch.wait(after, keepalive):
            await response.write(sse.KEEPALIVE)
