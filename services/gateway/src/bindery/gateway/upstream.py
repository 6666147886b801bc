"""The proxy's HTTP/1.1 client to sessions: kept-alive connections, answers parsed by llhttp.

In: a target (host, port, TLS), a request head already in bytes and its body (none, bytes, or
chunks to stream). Out: an `Answer`: status, reason and raw headers as soon as the head is in,
then the body, whole (`read`) or chunk by chunk (`chunks`) as it arrives, with the session's
connection paused while the browser is slower than the session.

Idle connections are kept per target and reused (most recently used first, so a burst leaves
few warm ones); how many requests may be in flight at once is fairness.py's to say. A request
that finds its kept connection closed by the session before any answer came is sent once more
on a new one, when its body can be sent again.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator

import httptools

IDLE_SECONDS = 30.0
"""Kept connections older than this are not reused (Jupyter's tornado keeps them far longer;
this only bounds how many sockets a burst leaves open)."""

PAUSE_BYTES = 256 * 1024
"""Body bytes buffered for a slow browser before the session's connection stops being read."""

Target = tuple[str, int, bool]
"""(host, port, tls)"""


class UpstreamError(ConnectionError):
    """The session's connection failed or closed before its answer was complete."""


class Answer:
    """One answer from a session, filled by its connection's parser callbacks."""

    __slots__ = (
        "buffered",
        "chunks",
        "complete",
        "error",
        "expected",
        "headers",
        "reason",
        "status",
        "waiter",
    )

    def __init__(self) -> None:
        self.status = 0
        self.reason = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.expected: int | None = None
        """Content-Length, when the session sent one."""
        self.complete = False
        self.error: BaseException | None = None
        self.chunks: list[bytes] = []
        """Body chunks not yet taken by the reader."""
        self.buffered = 0
        self.waiter: asyncio.Future[None] | None = None

    def take(self) -> bytes:
        """The body buffered so far (all of it, once `complete`)."""
        chunks, self.chunks, self.buffered = self.chunks, [], 0
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


class Connection(asyncio.Protocol):
    """One connection to a session; parser callbacks fill the current `Answer`."""

    def __init__(self, pool: Pool, target: Target) -> None:
        self._pool = pool
        self.target = target
        self.transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self.answer: Answer | None = None
        self.head: asyncio.Future[Answer] | None = None
        self.idle_since = 0.0
        self.reusable = True
        self.until_close = False
        """The current answer's body ends when the session closes the connection."""
        self.received = False
        """Any byte of an answer came on this connection (so the request must not be resent)."""
        self._writable: asyncio.Future[None] | None = None
        self._paused = False
        # Asked once: each get_running_loop() is a getpid() system call (fastlane.py).
        self._loop = asyncio.get_running_loop()

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(UpstreamError(f"bad answer from the session: {exc}"))
            if self.transport is not None:
                self.transport.close()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self.reusable = False
        self._pool.forget(self)
        if self.until_close and exc is None and self.answer is not None:
            self.on_message_complete()  # llhttp has no end-of-input call: the close is the end
        self._fail(UpstreamError(str(exc) if exc else "the session closed the connection"))
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)

    def pause_writing(self) -> None:
        self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # -- httptools callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        if self.answer is None:  # an answer nobody asked for
            self.reusable = False

    def on_status(self, reason: bytes) -> None:
        if self.answer is not None:
            self.answer.reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        if self.answer is not None:
            self.answer.headers.append((name, value))

    def on_headers_complete(self) -> None:
        answer = self.answer
        if answer is None:
            return
        status = self._parser.get_status_code()
        if status < 200:  # 100 Continue, 103 Early Hints: the real answer follows
            answer.headers.clear()
            answer.reason = b""
            return
        answer.status = status
        for name, value in answer.headers:
            if name.lower() == b"content-length":
                answer.expected = int(value)
        if not self._parser.should_keep_alive():
            self.reusable = False
            self.until_close = answer.expected is None and not any(
                name.lower() == b"transfer-encoding" for name, _ in answer.headers
            )
        if self.head is not None and not self.head.done():
            self.head.set_result(answer)

    def on_body(self, body: bytes) -> None:
        answer = self.answer
        if answer is None:
            return
        answer.chunks.append(body)
        answer.buffered += len(body)
        if answer.buffered > PAUSE_BYTES and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake(answer)

    def on_message_complete(self) -> None:
        answer = self.answer
        if answer is None or answer.status == 0:  # the end of a 1xx answer
            return
        answer.complete = True
        self.answer = None
        self._wake(answer)
        if self._paused:  # the answer ended in the read that paused it: read on
            self._resume()
        self._pool.release(self)

    # -- helpers ----------------------------------------------------------------------------
    @staticmethod
    def _wake(answer: Answer) -> None:
        waiter = answer.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, error: BaseException) -> None:
        if self.head is not None and not self.head.done():
            self.head.set_exception(error)
        answer = self.answer
        if answer is not None and not answer.complete:
            answer.error = error
            self._wake(answer)
            self.answer = None

    def taken(self, answer: Answer) -> None:
        """The next answer on this connection will be `answer`; wait for its head."""
        self.answer = answer
        self.head = self._loop.create_future()
        self.received = False
        self.until_close = False

    def drained(self, answer: Answer | None) -> None:
        """The reader of `answer` took its buffered body: read the session again."""
        if answer is self.answer and self._paused:
            self._resume()

    def _resume(self) -> None:
        self._paused = False
        if self.transport is not None and not self.transport.is_closing():
            self.transport.resume_reading()

    async def write(self, data: bytes) -> None:
        """Write a piece of a streamed request body, waiting while the session is slower."""
        if self.transport is None or self.transport.is_closing():
            raise UpstreamError("the session closed the connection")
        self.transport.write(data)
        if self._writable is not None:
            await self._writable

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Kept-alive connections to sessions, shared by every proxied request of a gateway."""

    def __init__(self, connect_timeout: float) -> None:
        self._idle: dict[Target, deque[Connection]] = {}
        self._connect_timeout = connect_timeout

    async def request(
        self,
        target: Target,
        head: bytes,
        body: bytes | AsyncIterator[bytes] | None = None,
        *,
        head_only: bool = False,
    ) -> Exchange:
        """Send a request; returns once the answer's head is in. `body` as bytes is sent with
        the head in one write; as an iterator, chunk by chunk (the head says how it's framed).
        `head_only`: a HEAD request, whose answer has headers only."""
        conn, answer = await self._send(target, head, body)
        if head_only:
            # llhttp would wait for the body the headers announce: this connection is done.
            conn.answer = None
            answer.complete = True
            conn.close()
        return Exchange(conn, answer)

    async def _send(
        self, target: Target, head: bytes, body: bytes | AsyncIterator[bytes] | None
    ) -> tuple[Connection, Answer]:
        replayable = isinstance(body, bytes | None)
        conn = await self._connection(target)
        while True:
            answer = Answer()
            conn.taken(answer)
            assert conn.head is not None
            try:
                if isinstance(body, bytes | None):
                    await conn.write(head + body if body else head)
                else:
                    await conn.write(head)
                    async for chunk in body:
                        await conn.write(chunk)
                await conn.head
                return conn, answer
            except UpstreamError:
                conn.close()
                # A kept connection the session closed as this request went out (its idle
                # timeout): nothing was answered, so say it once more on a new connection.
                if not (conn.idle_since and not conn.received and replayable):
                    raise
                conn = await self._connection(target, fresh=True)
            except BaseException:  # cancelled (the browser left): this answer goes nowhere
                conn.close()
                raise

    def kept(self, target: Target) -> Connection | None:
        """A kept-alive connection to `target` to use now, if one is idle."""
        idle = self._idle.get(target)
        now = time.monotonic()
        while idle:
            conn = idle.pop()
            if conn.reusable and now - conn.idle_since < IDLE_SECONDS:
                return conn
            conn.close()
        return None

    def send_now(self, conn: Connection, head: bytes) -> Answer:
        """Send a request with no body on a kept connection (`kept`); its answer fills the
        returned `Answer` and `conn.head` resolves with its head (or the connection's end).
        A connection the session closed as it went out is the caller's to try again."""
        answer = Answer()
        conn.taken(answer)
        assert conn.transport is not None
        conn.transport.write(head)
        return answer

    async def _connection(self, target: Target, fresh: bool = False) -> Connection:
        if not fresh:
            conn = self.kept(target)
            if conn is not None:
                return conn
        host, port, tls = target
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, conn = await loop.create_connection(
                    lambda: Connection(self, target), host, port, ssl=tls or None
                )
        except (OSError, TimeoutError) as exc:
            raise UpstreamError(str(exc) or type(exc).__name__) from exc
        return conn

    def release(self, conn: Connection) -> None:
        """An answer ended on `conn`: keep it for the next request, or close it."""
        if conn.reusable and conn.transport is not None and not conn.transport.is_closing():
            conn.idle_since = time.monotonic()
            self._idle.setdefault(conn.target, deque()).append(conn)
        else:
            conn.close()

    def forget(self, conn: Connection) -> None:
        idle = self._idle.get(conn.target)
        if idle is not None and conn in idle:
            idle.remove(conn)
            if not idle:
                del self._idle[conn.target]

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()


class Exchange:
    """A request in flight: the answer's head is in; read its body, then it ends."""

    __slots__ = ("_conn", "_ended", "answer")

    def __init__(self, conn: Connection, answer: Answer) -> None:
        self._conn = conn
        self.answer = answer
        self._ended = False

    async def read(self) -> bytes:
        """The whole body (for answers of a known, small length)."""
        answer = self.answer
        if answer.complete:  # all in already (a small answer comes in its head's read)
            return answer.take()
        chunks = [chunk async for chunk in self.chunks()]
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def chunks(self) -> AsyncIterator[bytes]:
        answer, conn = self.answer, self._conn
        while True:
            if answer.chunks:
                chunks, answer.chunks, answer.buffered = answer.chunks, [], 0
                conn.drained(answer)
                for chunk in chunks:
                    yield chunk
                continue
            if answer.complete:
                return
            if answer.error is not None:
                raise answer.error
            answer.waiter = asyncio.get_running_loop().create_future()
            await answer.waiter
            answer.waiter = None

    def end(self) -> None:
        """Done with this exchange (read to the end or abandoned)."""
        if self._ended:
            return
        self._ended = True
        if not self.answer.complete:  # abandoned midway: the connection can't be reused
            self._conn.answer = None
            self._conn.close()
