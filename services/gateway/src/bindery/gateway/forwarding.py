"""Carrying a request or a websocket to a session and its answer back, streamed both ways.

In: a request the proxy admitted (proxy.py), its session's route, and the Set-Cookie its answer
gets, if any. Out: the same request at the session (wireheaders.py says what of it crosses),
over the kept-alive pool of `upstream.py`; a small answer of known length goes back in one
write with its headers, a larger one chunk by chunk. A websocket's handshake goes to the
session on a connection of its own; after the session's 101 the two connections are spliced as
bytes (`splice.py`), each data frame from the browser touching the route (activity.py).

Each request and websocket holds its session's and its client's shares while it lasts
(`fairness.py`: over them, a 503 saying why); bodies that stop arriving get 408
(`slowclients.py`), and a request or websocket with no byte moving either way for
`idle_timeout` is closed. A session's answers are confined to its own place (sessionurls.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable

import structlog
from aiohttp import web
from multidict import CIMultiDict

from bindery.gateway.abuse import peer
from bindery.gateway.fairness import Fairness, Refused, refused
from bindery.gateway.routes import Route
from bindery.gateway.sessionurls import SessionUrls
from bindery.gateway.slowclients import SlowBody, body_chunks, read_body, too_slow
from bindery.gateway.splice import BrowserEnd, SessionEnd, Splice
from bindery.gateway.upstream import Exchange, Pool, UpstreamError
from bindery.gateway.wireheaders import answer_headers, parse_answer_head, request_head

log = structlog.get_logger("bindery.gateway.proxy")

# Bodies up to this size (with a Content-Length) are read whole and answered in one write with
# their headers; larger or open-ended ones are streamed chunk by chunk as they arrive. Jupyter's
# API answers (contents listings, kernel and session lists) are mostly a few KiB.
BUFFERED_BODY_LIMIT = 256 * 1024
# Statuses whose answer has no body, whatever Content-Length says (HEAD's neither).
NO_BODY_STATUS = frozenset({204, 304})


UNANSWERED = "The session did not answer; it may be starting or stopping."
STOPPED_MIDWAY = "The session stopped answering in the middle of a response."


def idle_message(seconds: float) -> str:
    return f"The session sent nothing for {seconds:g} s."


def bad_gateway(message: str) -> web.Response:
    return web.json_response({"message": message}, status=502)


class Forwarding:
    """Carries requests to sessions over one shared pool of kept-alive connections."""

    def __init__(
        self,
        urls: SessionUrls,
        *,
        fairness: Fairness,
        client_of: Callable[[str | None, list[str]], Hashable | None],
        connect_timeout: float,
        idle_timeout: float,
        body_timeout: float,
    ) -> None:
        # The pool keeps no cookies (one session's never reach another) and decodes no body
        # (each passes as the session encoded it); `fairness` says how much may be in flight.
        self.pool = Pool(connect_timeout)
        self.fairness = fairness
        self.client_of = client_of
        self._connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self._body_timeout = body_timeout
        self._urls = urls
        self._splices: set[Splice] = set()

    async def http(
        self, request: web.Request, route: Route, set_cookie: str | None = None
    ) -> web.StreamResponse:
        try:
            held = self.fairness.request(route.session, self.client_of(*peer(request)))
        except Refused as exc:
            return refused(exc)
        try:
            return await self._forward(request, route, set_cookie, held.connect)
        finally:
            held.release()

    async def _forward(
        self,
        request: web.Request,
        route: Route,
        set_cookie: str | None,
        connect: Callable[[], Awaitable[None]],
    ) -> web.StreamResponse:
        body: bytes | AsyncIterator[bytes] | None = None
        length = request.content_length
        streamed = request.body_exists and (length is None or length > BUFFERED_BODY_LIMIT)
        loop = asyncio.get_running_loop()
        try:
            if request.body_exists and not streamed:
                # Read before taking a connection: a slow browser holds none of the session's.
                body = await read_body(request.content, self._body_timeout)
            await connect()
            async with asyncio.timeout(self.idle_timeout) as quiet:
                if streamed:

                    def moved() -> None:
                        quiet.reschedule(loop.time() + self.idle_timeout)

                    body = _body_chunks(request, length is None, self._body_timeout, moved)
                exchange = await self.pool.request(
                    route.address,
                    request_head(request, route),
                    body,
                    head_only=request.method == "HEAD",
                )
        except Refused as exc:
            return refused(exc)
        except SlowBody as exc:
            return too_slow(exc)
        except TimeoutError:
            log.info("proxy.idle", path=request.path, seconds=self.idle_timeout)
            return web.json_response({"message": idle_message(self.idle_timeout)}, status=504)
        except UpstreamError as exc:
            log.warning("proxy.upstream_failed", path=request.path, error=str(exc))
            return bad_gateway(UNANSWERED)
        try:
            answer = exchange.answer
            headers = answer_headers(answer.headers)
            self._urls.confine(route.session, headers)
            if set_cookie is not None:
                headers.add("Set-Cookie", set_cookie)
            length = answer.expected
            if answer.complete or (length is not None and length <= BUFFERED_BODY_LIMIT):
                return await self._whole(request, exchange, headers)
            return await self._stream(request, exchange, headers)
        finally:
            exchange.end()

    async def _whole(
        self, request: web.Request, exchange: Exchange, headers: CIMultiDict[str]
    ) -> web.StreamResponse:
        """A small body of known length (or none): one write of headers and body together."""
        answer = exchange.answer
        try:
            if answer.complete:  # the usual case: the body came in the read the head did
                data = await exchange.read()
            else:
                async with asyncio.timeout(self.idle_timeout):
                    data = await exchange.read()
        except (UpstreamError, TimeoutError) as exc:
            log.info("proxy.stream_aborted", error=str(exc))
            return bad_gateway(STOPPED_MIDWAY)
        reason = answer.reason.decode("latin-1")
        if request.method == "HEAD" or answer.status in NO_BODY_STATUS:
            # Headers only, Content-Length as the session said (aiohttp sends them as they are).
            return web.StreamResponse(status=answer.status, reason=reason, headers=headers)
        return web.Response(status=answer.status, reason=reason, body=data, headers=headers)

    async def _stream(
        self, request: web.Request, exchange: Exchange, headers: CIMultiDict[str]
    ) -> web.StreamResponse:
        """A large or open-ended body: passed on chunk by chunk as it arrives (with the
        session's Content-Length when it sent one, so the browser's copy is not re-chunked)."""
        answer = exchange.answer
        response = web.StreamResponse(
            status=answer.status, reason=answer.reason.decode("latin-1"), headers=headers
        )
        loop = asyncio.get_running_loop()
        try:
            await response.prepare(request)
            async with asyncio.timeout(self.idle_timeout) as quiet:
                async for chunk in exchange.chunks():
                    await response.write(chunk)
                    quiet.reschedule(loop.time() + self.idle_timeout)
            await response.write_eof()
        except (UpstreamError, ConnectionError, TimeoutError) as exc:
            # Headers may be gone already: all we can do is end the connection.
            log.info("proxy.stream_aborted", error=type(exc).__name__)
            if request.transport is not None:
                request.transport.close()
        return response

    async def websocket(self, request: web.Request, route: Route) -> web.StreamResponse:
        try:
            held = self.fairness.websocket(route.session, self.client_of(*peer(request)))
        except Refused as exc:
            return refused(exc)
        try:
            await held.connect()
            return await self._splice(request, route)
        except Refused as exc:
            return refused(exc)
        finally:
            held.release()

    async def _splice(self, request: web.Request, route: Route) -> web.StreamResponse:
        """Handshake with the session on a connection of its own, answer the browser with the
        session's 101, then splice the two connections' bytes (`splice.py`)."""
        browser = request.transport
        if browser is None:  # the browser already left
            return web.Response(status=499)
        try:
            session, end, head = await self._handshake(request, route)
        except (OSError, TimeoutError) as exc:
            log.warning("proxy.ws_upstream_failed", error=str(exc) or type(exc).__name__)
            return bad_gateway("The session did not accept the websocket.")
        status, reason, headers = parse_answer_head(head)
        self._urls.confine(route.session, headers)
        if status != 101:
            # Jupyter refused (wrong token, bad Origin...): tell the browser the same status.
            session.close()
            return web.json_response(
                {"message": f"The session refused the websocket ({status})."},
                status=status if 400 <= status < 600 else 502,
            )
        answer = _Switched(status=101, reason=reason, headers=headers)
        answer.headers["Upgrade"] = "websocket"
        answer.headers["Connection"] = "Upgrade"
        answer.force_close()  # no HTTP request ever follows on this connection
        try:
            await answer.prepare(request)
        except BaseException:
            session.close()
            raise
        handler = request.protocol
        splice = Splice(browser, session, route.touch, handler.connection_lost, self.idle_timeout)
        browser_end = BrowserEnd(splice)
        browser.set_protocol(browser_end)
        # What the browser sent after its handshake, before the splice, aiohttp kept aside: it
        # goes the way of the rest, so its frames are followed too.
        tail = _Tail(browser_end.data_received)
        handler.set_parser(tail)  # type: ignore[arg-type]  # any object with feed_data/feed_eof
        end.splice(splice)
        if session.is_closing():
            splice.session_lost()
        self._splices.add(splice)
        try:
            await splice.done
        finally:
            self._splices.discard(splice)
            if not splice.done.done():  # cancelled: end both connections
                splice.going_away()
        return answer

    async def _handshake(
        self, request: web.Request, route: Route
    ) -> tuple[asyncio.Transport, SessionEnd, bytes]:
        """Open a connection to the session and send it the browser's handshake; returns the
        connection and the head of the session's answer."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout):
            session, end = await loop.create_connection(
                SessionEnd, route.host, route.port, ssl=route.tls or None
            )
            try:
                session.write(request_head(request, route, upgrade=True))
                return session, end, await end.answer
            except BaseException:
                session.close()
                raise

    async def close(self) -> None:
        """Shutting down: tell every browser websocket we are going away (1001)."""
        for splice in list(self._splices):
            splice.going_away()
        self.pool.close()


async def _body_chunks(
    request: web.Request, chunked: bool, idle: float, moved: Callable[[], None]
) -> AsyncIterator[bytes]:
    """A large request body as it arrives; chunk-framed when the browser sent no length.
    `moved` is told of each chunk (the upload is not idle, however long it takes)."""
    async for chunk in body_chunks(request.content, idle):
        moved()
        yield b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk
    if chunked:
        yield b"0\r\n\r\n"


class _Switched(web.StreamResponse):
    """The 101 answer: after it the connection carries the spliced websocket, not HTTP."""

    async def write_eof(self, data: bytes = b"") -> None:
        return None


class _Tail:
    """Takes what aiohttp read past a websocket handshake (the parser slot is how aiohttp hands
    over an upgraded connection's bytes) and sends it on."""

    def __init__(self, write: Callable[[bytes], None]) -> None:
        self._write = write

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self._write(data)
        return False, b""

    def feed_eof(self) -> None:
        return None
