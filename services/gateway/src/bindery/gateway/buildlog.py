"""`GET /api/builds/<build id>/log`: a build's whole log, after the fact (BinderHub #155, #743).

In: a build id -- every build log starts with `Build <id>: its log stays at /api/builds/<id>/log`.
Out: JSON `{"build_id", "image", "complete", "lines": [{"phase", "message"}, ...]}`, read back
from the build-log stream (`topology.BUILD_LOG_STREAM`), or 404 when the stream holds no line of
that build (never built, or older than the stream's retention).

The id starts with the build's start time, so reading starts there instead of at the stream's
beginning. Each line is in the stream once per launch that followed the build; the first launch
saw every line, so its copy is the log. Its line marked `final` ends the read; a build still
running ends it when the stream has nothing more (`complete` is then false).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractIncomingMessage
from aiohttp import web

from bindery.bus import topology
from bindery.events import BuildLog, InvalidEvent, parse_event
from bindery.events.build import build_started_at
from bindery.gateway.keys import GATEWAY

log = structlog.get_logger("bindery.gateway.buildlog")

# Stream consumers must set a prefetch; a few hundred keeps a backlog flowing.
PREFETCH = 500
# A stream never says "that was the last one": nothing for this long means the end of what it
# holds. The broker sends a backlog as fast as it is taken, so this only delays running builds.
IDLE_SECONDS = 1.0
# Before the first message, though, the broker may first have to find the offset's chunk on
# disk: on a loaded machine that takes longer than a gap between deliveries.
FIRST_MESSAGE_SECONDS = 10.0
# Upper bound for one request, however large the log.
READ_SECONDS = 30.0
# Stream time offsets are in whole seconds, and clocks of hosts differ a little.
CLOCK_SLACK = timedelta(seconds=5)
EPOCH = datetime.fromtimestamp(0, UTC)


async def build_log(request: web.Request) -> web.Response:
    build_id = request.match_info["build_id"]
    started = build_started_at(build_id)
    if started is None:
        return web.json_response({"message": f"{build_id!r} is not a build id."}, status=400)
    try:
        since = max(started - CLOCK_SLACK, EPOCH)  # the broker takes no time before 1970
        found = await read_build_log(request.app[GATEWAY].settings.amqp_url, build_id, since)
    except (OSError, aio_pika.exceptions.AMQPError) as exc:
        log.error("buildlog.read_failed", build_id=build_id, error=str(exc))
        return web.json_response(
            {"message": "Build logs are unavailable right now: try again in a minute."},
            status=503,
        )
    if found is None:
        return web.json_response(
            {"message": f"No log of build {build_id} is kept (too old, or no such build)."},
            status=404,
        )
    return web.json_response(found)


async def read_build_log(url: str, build_id: str, since: Any) -> dict[str, Any] | None:
    """The kept log of ``build_id``, reading the stream from ``since``; None if it has none."""
    connection = await aio_pika.connect(url, client_properties={"connection_name": "build-log"})
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=PREFETCH)
        queue = await channel.declare_queue(topology.BUILD_LOG_STREAM, passive=True)
        inbox: asyncio.Queue[AbstractIncomingMessage] = asyncio.Queue()
        await queue.consume(inbox.put, arguments={"x-stream-offset": since})
        first_launch: str | None = None
        image = ""
        lines: list[dict[str, str]] = []
        complete = False
        deadline = asyncio.get_running_loop().time() + READ_SECONDS
        wait = FIRST_MESSAGE_SECONDS
        while asyncio.get_running_loop().time() < deadline:
            try:
                message = await asyncio.wait_for(inbox.get(), wait)
            except TimeoutError:
                break
            wait = IDLE_SECONDS
            await message.ack()
            line = _line_of(message.body, build_id)
            if line is None or first_launch not in (None, line.launch_id):
                continue
            first_launch, image = line.launch_id, line.image
            lines.append({"phase": line.phase, "message": line.message})
            if line.final:
                complete = True
                break
    finally:
        await connection.close()
    if first_launch is None:
        return None
    return {"build_id": build_id, "image": image, "complete": complete, "lines": lines}


def _line_of(body: bytes, build_id: str) -> BuildLog | None:
    try:
        event = parse_event(body)
    except InvalidEvent:
        return None
    if isinstance(event, BuildLog) and event.build_id == build_id:
        return event
    return None
