"""Slow clients: deadlines on what a client sends, so a connection trickling bytes holds nothing
for long.

In: the connections aiohttp serves (fastlane.py puts a `HeadDeadline` between each and aiohttp's
request handler) and the bodies of proxied requests. Out: a connection closed when a request
head is not whole `client_header_timeout` seconds after its first byte (or after connecting,
for the first); `SlowBody` (the proxy answers 408 and closes) when a body has had no byte for
`client_body_timeout`. aiohttp has neither: its keep-alive timer, `client_keepalive_timeout`
here, closes a connection whose head is not whole only that long after the previous answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import structlog
from aiohttp import StreamReader, web
from aiohttp.typedefs import Handler

log = structlog.get_logger("bindery.gateway.slowclients")


class HeadDeadline(asyncio.Protocol):
    """Sits between a connection and aiohttp's handler for it: once the connection is made, and
    at the first byte after a request ended, a timer starts; when it fires before the next
    request reached the application (`head_deadline` notes that), the connection is closed."""

    __slots__ = ("_handler", "_in_request", "_seconds", "_timer", "_transport")

    def __init__(self, handler: asyncio.Protocol, seconds: float) -> None:
        self._handler = handler
        self._seconds = seconds
        self._timer: asyncio.TimerHandle | None = None
        self._in_request = 0
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._handler.connection_made(transport)
        self._start()

    def data_received(self, data: bytes) -> None:
        if self._timer is None and not self._in_request:  # the first byte of a new head
            self._start()
        self._handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self._handler.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop()
        self._handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self._handler.pause_writing()

    def resume_writing(self) -> None:
        self._handler.resume_writing()

    def request_started(self) -> None:
        self._in_request += 1
        self._stop()

    def request_ended(self) -> None:
        self._in_request -= 1

    def _start(self) -> None:
        self._timer = asyncio.get_running_loop().call_later(self._seconds, self._expired)

    def _stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if not self._in_request and self._transport is not None:
            log.info("client.header_timeout", seconds=self._seconds)
            self._transport.close()


@web.middleware
async def head_deadline(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Tells the connection's deadline that a whole request head came (and when its request
    ends, so that the next head's deadline starts at its first byte)."""
    transport = request.transport
    deadline = transport.get_protocol() if transport is not None else None
    if not isinstance(deadline, HeadDeadline):  # served some other way (tests' TestServer)
        return await handler(request)
    deadline.request_started()
    try:
        return await handler(request)
    finally:
        deadline.request_ended()


class SlowBody(Exception):
    """A request's body stopped arriving."""


async def body_chunks(content: StreamReader, idle: float) -> AsyncIterator[bytes]:
    """A request body as it arrives; `SlowBody` once no byte came for `idle` seconds."""
    while True:
        try:
            async with asyncio.timeout(idle):
                chunk = await content.readany()
        except TimeoutError:
            raise SlowBody(f"no byte of the request's body came for {idle:g} s") from None
        if not chunk:
            return
        yield chunk


async def read_body(content: StreamReader, idle: float) -> bytes:
    """A whole (small) request body; `SlowBody` as in `body_chunks`."""
    return b"".join([chunk async for chunk in body_chunks(content, idle)])


def too_slow(exc: SlowBody) -> web.Response:
    response = web.json_response(
        {"message": f"Your request was given up: {exc}. Check your connection and retry."},
        status=408,
    )
    response.force_close()  # the rest of the body may still come: this connection is done
    return response
