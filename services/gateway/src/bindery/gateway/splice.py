"""A proxied websocket after its handshake: bytes spliced between two transports.

In: the browser's transport (taken over from aiohttp once the 101 went out) and the session's
(opened by the proxy, which read the session's 101 on it). Out: every byte either side sends,
written to the other as it came: no frame is parsed, unmasked, re-masked or re-encoded, so
close codes, subprotocols and extensions pass end to end. Reading pauses on one side while the
other's write buffer is full; when either side closes, so does the other.

Only frame headers are followed (`FrameEdges`). The session's tell the gateway where a frame of
its own may go: 1011 when the session vanished without a close frame, 1001 when the gateway
shuts down. The browser's tell data frames (a person's messages: activity for the culler) from
control frames (pongs to the session's pings: not activity; see activity.py).

A websocket with no byte either way for `idle` seconds is closed (1001): any frame counts, so
Jupyter's own pings keep its websockets open. What a side sends is held only as long as the
other's transport buffers it: reading pauses beyond that, so no buffer grows without bound.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from bindery.gateway.activity import is_data_frame

_CLOSE_OPCODE = 0x8


def close_frame(code: int, reason: bytes = b"") -> bytes:
    """An unmasked close frame (server to browser)."""
    payload = code.to_bytes(2, "big") + reason[:123]
    return bytes((0x80 | _CLOSE_OPCODE, len(payload))) + payload


class FrameEdges:
    """Follows the frame boundaries of one direction from the frame headers alone."""

    __slots__ = ("_head", "_skip", "closing")

    def __init__(self) -> None:
        self._head = b""  # the start of a frame header split across chunks
        self._skip = 0  # payload bytes of the current frame still to come
        self.closing = False
        """A close frame went by: the connection ends on purpose."""

    @property
    def between_frames(self) -> bool:
        return not self._skip and not self._head

    def feed(self, data: bytes) -> bool:
        """Follow one chunk; returns whether a data frame (not a control frame) began in it."""
        data_frame = False
        if self._head:
            data = self._head + data
            self._head = b""
            pos = 0
        else:
            pos = self._skip
        end = len(data)
        while pos < end:
            if end - pos < 2:
                self._head = data[pos:]
                self._skip = 0
                return data_frame
            second = data[pos + 1]
            length = second & 0x7F
            header = 2 if length < 126 else (4 if length == 126 else 10)
            if second & 0x80:  # masked (browser to session frames)
                header += 4
            if end - pos < header:
                self._head = data[pos:]
                self._skip = 0
                return data_frame
            if length == 126:
                length = int.from_bytes(data[pos + 2 : pos + 4], "big")
            elif length == 127:
                length = int.from_bytes(data[pos + 2 : pos + 10], "big")
            opcode = data[pos] & 0x0F
            if opcode == _CLOSE_OPCODE:
                self.closing = True
            elif is_data_frame(opcode):
                data_frame = True
            pos += header + length
        self._skip = pos - end
        return data_frame


class Splice:
    """The two ends of one websocket; `done` resolves once either side has gone."""

    def __init__(
        self,
        browser: asyncio.Transport,
        session: asyncio.Transport,
        touch: Callable[[], None],
        on_browser_lost: Callable[[BaseException | None], None],
        idle: float,
    ) -> None:
        self.browser = browser
        self.session = session
        self.touch = touch
        """Notes activity: called when the browser sends a data frame."""
        self.from_browser = FrameEdges()
        self.from_session = FrameEdges()
        loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = loop.create_future()
        self._on_browser_lost = on_browser_lost
        self.moved = time.monotonic()
        """When a byte last went either way."""
        self._idle = idle
        self._idle_timer = loop.call_later(idle, self._check_idle)

    def _check_idle(self) -> None:
        """Runs once per idle period at most (not per message): close if nothing moved."""
        quiet = time.monotonic() - self.moved
        if quiet < self._idle:
            loop = asyncio.get_running_loop()
            self._idle_timer = loop.call_later(self._idle - quiet, self._check_idle)
        else:
            self.going_away(b"idle")

    def browser_lost(self, exc: BaseException | None) -> None:
        self.session.close()
        self._finish()
        self._on_browser_lost(exc)

    def session_lost(self) -> None:
        if not self.browser.is_closing():
            if not self.from_session.closing and self.from_session.between_frames:
                self.browser.write(close_frame(1011, b"session gone"))
            self.browser.close()  # after what is buffered is written
        self._finish()

    def going_away(self, reason: bytes = b"gateway restarting") -> None:
        """The gateway shuts down (or the websocket was idle): a browser between two frames
        hears 1001 first."""
        if not self.browser.is_closing():
            if not self.from_session.closing and self.from_session.between_frames:
                self.browser.write(close_frame(1001, reason))
            self.browser.close()
        self.session.close()

    def _finish(self) -> None:
        self._idle_timer.cancel()
        if not self.done.done():
            self.done.set_result(None)


def _pause(transport: asyncio.Transport) -> None:
    if not transport.is_closing():
        transport.pause_reading()


def _resume(transport: asyncio.Transport) -> None:
    if not transport.is_closing():
        transport.resume_reading()


class BrowserEnd(asyncio.Protocol):
    """The browser's connection once spliced: its bytes go to the session as they come."""

    def __init__(self, splice: Splice) -> None:
        self._splice = splice
        self._write = splice.session.write
        self._feed = splice.from_browser.feed
        self._touch = splice.touch

    def data_received(self, data: bytes) -> None:
        self._write(data)
        self._splice.moved = time.monotonic()
        if self._feed(data):
            self._touch()

    def eof_received(self) -> bool:
        return False  # a half-closed websocket is a closed one

    def connection_lost(self, exc: BaseException | None) -> None:
        self._splice.browser_lost(exc)

    def pause_writing(self) -> None:
        _pause(self._splice.session)

    def resume_writing(self) -> None:
        _resume(self._splice.session)


class SessionEnd(asyncio.Protocol):
    """The connection to the session: first its handshake answer, then bytes to the browser."""

    MAX_HEAD = 64 * 1024

    def __init__(self) -> None:
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        """The session's answer to the handshake, up to its blank line."""
        self._transport: asyncio.Transport | None = None
        self._early = b""
        self._splice: Splice | None = None
        self._feed: Callable[[bytes], object] = self._handshake

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def _handshake(self, data: bytes) -> None:
        self._early += data
        if self.answer.done():  # the session spoke first after its 101: keep it for later
            if len(self._early) > self.MAX_HEAD and self._transport is not None:
                self._transport.pause_reading()  # until the splice takes it (`splice`)
            return
        end = self._early.find(b"\r\n\r\n")
        if end >= 0:
            head, self._early = self._early[: end + 4], self._early[end + 4 :]
            self.answer.set_result(head)
        elif len(self._early) > self.MAX_HEAD:
            self.answer.set_exception(ConnectionError("oversized handshake answer"))

    def splice(self, splice: Splice) -> None:
        """From now on, bytes go to the browser; those that came early go first."""
        self._splice = splice
        self._feed = splice.from_session.feed
        if self._transport is not None and not self._transport.is_closing():
            self._transport.resume_reading()  # paused if more than MAX_HEAD came early
        if self._early:
            early, self._early = self._early, b""
            self.data_received(early)

    def data_received(self, data: bytes) -> None:
        if self._splice is not None:
            self._splice.browser.write(data)
            self._splice.moved = time.monotonic()
        self._feed(data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc or ConnectionError("the session closed the connection"))
        if self._splice is not None:
            self._splice.session_lost()

    def pause_writing(self) -> None:
        if self._splice is not None:
            _pause(self._splice.browser)

    def resume_writing(self) -> None:
        if self._splice is not None:
            _resume(self._splice.browser)
