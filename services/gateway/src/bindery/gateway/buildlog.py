"""`GET /api/builds/<build id>/log`: a build's whole log, after the fact (BinderHub #155, #743).

In: a build id -- every build log starts with `Build <id>: its log stays at /api/builds/<id>/log`.
Out: JSON `{"build_id", "image", "complete", "lines": [{"phase", "message"}, ...]}`, read back
from the build-log stream (`topology.BUILD_LOG_STREAM`); 404 with a message for an id that is
no build id, or whose build the stream holds no line of (never built, or older than the stream's
retention); 503 with a message when the broker cannot be read or too many reads are under way.

Anyone may ask, so a request costs the broker little: reads go through the gateway's one
`StreamReader` connection, at most `build_log_max_reads` at once (a request waits
`build_log_read_wait` for a turn, then gets 503), requests for a build being read share that
read, and finished logs are answered from a cache bounded in bytes (least recently asked first
out). A running build's log is never cached: the next request reads what came since.

Progress reads a build's earlier lines back through the same reads (`lines`, in a read slot,
never cached): a launch following a build this replica did not see from its first line is
shown the whole log (progress.py).

The id starts with the build's start time, so reading starts there instead of at the stream's
beginning. Each line is in the stream once (the builder publishes it once per build, however
many launches follow it). The line marked `final` ends the read; so does reaching lines newer
than the request (a running build: `complete` is then false), or lines from well after the
build started without one of it (no such build).
"""

from __future__ import annotations

import asyncio
import json
from collections import OrderedDict
from collections.abc import AsyncGenerator, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog
from aiohttp import web

from bindery.bus import topology
from bindery.bus.eventlog import Recorded, StreamUnavailable
from bindery.events import BuildLog
from bindery.events.build import build_started_at
from bindery.gateway.keys import GATEWAY
from bindery.gateway.metrics import BUILD_LOG_ANSWERS

log = structlog.get_logger("bindery.gateway.buildlog")

# A stream never says "that was the last one": nothing for this long means the end of what it
# holds. The broker sends a backlog as fast as it is taken, so this only delays running builds.
IDLE_SECONDS = 1.0
# Before the first message, though, the broker may first have to find the offset's chunk on
# disk: on a loaded machine that takes longer than a gap between deliveries.
FIRST_MESSAGE_SECONDS = 10.0
# Upper bound for one read, however large the log.
READ_SECONDS = 30.0
# Stream time offsets are in whole seconds, and clocks of hosts differ a little.
CLOCK_SLACK = timedelta(seconds=5)
# A build's first line is published as it starts (the builder's coordinator.py), stamped by the
# same host's clock as its id: lines this long after the id's time and none of it, and there is
# no such build.
FIRST_LINE_WITHIN = timedelta(minutes=2)
EPOCH = datetime.fromtimestamp(0, UTC)

NOT_A_BUILD_ID = (
    "{build_id!r} is not a build id: build ids are 20 hexadecimal digits, as in the first line "
    "of a build's log (`Build <id>: its log stays at /api/builds/<id>/log`)."
)
NOT_KEPT = (
    "No log of build {build_id} is kept: no build has that id, or it is older than the "
    "build-log stream's retention. Launch the repository again to see a new build's log."
)
UNAVAILABLE = "Build logs are unavailable right now: try again in a minute."
BUSY = "Too many build logs are being read right now: try again in a minute."


class Busy(Exception):
    """Every read slot stayed taken for the whole wait."""


class Records(Protocol):
    """Where logs are read from: `bindery.bus.eventlog.StreamReader`, or a fake in tests."""

    def records(
        self, stream: str, start: datetime, *, idle: float, first_idle: float | None = None
    ) -> AsyncGenerator[Recorded, None]: ...

    async def close(self) -> None: ...


class BuildLogs:
    """Build logs as the endpoint answers them (JSON bodies), read through `source`."""

    def __init__(
        self, source: Records, *, cache_bytes: int, max_reads: int, read_wait: float
    ) -> None:
        self._source = source
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cache_bytes = 0
        self._max_cache_bytes = cache_bytes
        self._reads = asyncio.Semaphore(max_reads)
        self._read_wait = read_wait
        self._in_flight: dict[str, asyncio.Task[bytes | None]] = {}

    @property
    def cached_bytes(self) -> int:
        return self._cache_bytes

    async def answer(self, build_id: str, started: datetime) -> bytes | None:
        """The JSON body for the build, None if the stream keeps no line of it. Raises `Busy`
        and `StreamUnavailable`."""
        body = self._cache.get(build_id)
        if body is not None:
            self._cache.move_to_end(build_id)
            BUILD_LOG_ANSWERS.labels("cache").inc()
            return body
        read = self._in_flight.get(build_id)
        if read is None:
            read = asyncio.create_task(self._read(build_id, started), name=f"build-log {build_id}")
            self._in_flight[build_id] = read
            read.add_done_callback(lambda done: self._done(build_id, done))
            BUILD_LOG_ANSWERS.labels("read").inc()
        else:
            BUILD_LOG_ANSWERS.labels("shared").inc()
        # Shielded: a client that leaves must not end the read the others wait for.
        return await asyncio.shield(read)

    async def lines(self, build_id: str) -> list[BuildLog]:
        """The lines of the build `build_id` the stream holds so far, oldest first (none for an
        id of no build): what progress shows a launch before the lines it was sent. Raises
        `Busy` and `StreamUnavailable`."""
        started = started_at(build_id)
        if started is None:
            return []
        found = await self._in_slot(read_build_log(self._source, build_id, started))
        return found.lines if found is not None else []

    def _done(self, build_id: str, read: asyncio.Task[bytes | None]) -> None:
        del self._in_flight[build_id]
        if not read.cancelled():
            # Retrieved here, so a read whose clients all left logs no "never retrieved" error.
            read.exception()

    async def _in_slot(self, read: Coroutine[Any, Any, KeptLog | None]) -> KeptLog | None:
        """`read`'s outcome, once one of the read slots is free (`Busy` if none frees up)."""
        try:
            async with asyncio.timeout(self._read_wait):
                await self._reads.acquire()
        except TimeoutError:
            read.close()
            raise Busy from None
        try:
            return await read
        finally:
            self._reads.release()

    async def _read(self, build_id: str, started: datetime) -> bytes | None:
        found = await self._in_slot(read_build_log(self._source, build_id, started))
        if found is None:
            return None
        body = json.dumps(
            {
                "build_id": build_id,
                "image": found.lines[0].image,
                "complete": found.complete,
                "lines": [{"phase": line.phase, "message": line.message} for line in found.lines],
            }
        ).encode()
        if found.complete:
            self._remember(build_id, body)
        return body

    def _remember(self, build_id: str, body: bytes) -> None:
        if len(body) > self._max_cache_bytes:
            return  # it would push out everything else, and still not fit
        self._cache[build_id] = body
        self._cache_bytes += len(body)
        while self._cache_bytes > self._max_cache_bytes:
            _, oldest = self._cache.popitem(last=False)
            self._cache_bytes -= len(oldest)

    async def close(self) -> None:
        await self._source.close()


@dataclass(frozen=True)
class KeptLog:
    """What the build-log stream holds of one build, up to a read."""

    lines: list[BuildLog]
    """At least one, in the order the builder published them."""
    complete: bool
    """Its final line is among them: the build has ended."""


async def read_build_log(source: Records, build_id: str, started: datetime) -> KeptLog | None:
    """The kept log of the build `build_id`, which started at `started`; None if it has none."""
    began = datetime.now(UTC)
    lines: list[BuildLog] = []
    complete = False
    records = source.records(
        topology.BUILD_LOG_STREAM,
        max(started - CLOCK_SLACK, EPOCH),  # the broker takes no time before 1970
        idle=IDLE_SECONDS,
        first_idle=FIRST_MESSAGE_SECONDS,
    )
    try:
        async with asyncio.timeout(READ_SECONDS):
            async for record in records:
                event = record.event
                if event.time > began:
                    break  # what came after the request: the build is still running
                if not isinstance(event, BuildLog) or event.build_id != build_id:
                    if not lines and event.time > started + FIRST_LINE_WITHIN:
                        break
                    continue
                lines.append(event)
                if event.final:
                    complete = True
                    break
    except TimeoutError:
        log.warning("buildlog.read_cut", build_id=build_id, lines=len(lines))
    finally:
        # Closed here, not at garbage collection: its consumer ends now.
        await records.aclose()
    if not lines:
        return None
    return KeptLog(lines, complete)


def started_at(build_id: str) -> datetime | None:
    """When the build `build_id` started; None if no build can have that id (not one's form,
    or a time in the future)."""
    started = build_started_at(build_id)
    if started is None or started > datetime.now(UTC) + CLOCK_SLACK:
        return None
    return started


async def build_log(request: web.Request) -> web.Response:
    build_id = request.match_info["build_id"]
    started = started_at(build_id)
    if started is None:
        return web.json_response({"message": NOT_A_BUILD_ID.format(build_id=build_id)}, status=404)
    logs = request.app[GATEWAY].build_logs
    assert logs is not None, "set at app start"
    try:
        body = await logs.answer(build_id, started)
    except Busy:
        BUILD_LOG_ANSWERS.labels("busy").inc()
        return web.json_response({"message": BUSY}, status=503)
    except StreamUnavailable as exc:
        log.error("buildlog.read_failed", build_id=build_id, error=str(exc))
        return web.json_response({"message": UNAVAILABLE}, status=503)
    if body is None:
        return web.json_response({"message": NOT_KEPT.format(build_id=build_id)}, status=404)
    return web.Response(body=body, content_type="application/json")
