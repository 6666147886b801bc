"""The fast lane: a running session's plain reads answered straight off the socket; every other
request, and its connection from then on, handed to aiohttp.

In: every connection the gateway accepts (`serve`). Out: for each request on it that is a plain
read of a running session -- GET or HEAD, no body, no upgrade, kept alive, a path with nothing
to decode, on the session's own origin, let in by the token in `Authorization` (which earns the
session's cookie, as on the slow lane) or by the session's cookie, from a network not banned,
within its session's and client's shares -- the session's answer, carried over the proxy's
kept-alive pool (upstream.py) with the head wireheaders.py makes, confined as sessionurls.py
says, its shares held (fairness.py), its activity noted (activity.py) and counted in the
request metrics, as the proxy (proxy.py, forwarding.py) does for the same request. At the first
request that is anything else (a page of the gateway, a launch, a websocket, an upload, a token
in the URL, an unknown session, a refusal to explain, a head llhttp rejects), the connection and
its unread bytes go to aiohttp for good, behind `slowclients.HeadDeadline`: it answers as it
always did.

Why: aiohttp's request and response objects, middlewares and router cost most of a proxied
request's time in the gateway (the proxy bench: about 90 us of CPU a request through aiohttp).
A session's reads -- JupyterLab's polls, its assets, file listings -- are nearly all of its
traffic and need none of them.

The deadlines are the slow lane's: a head must be whole `client_header_timeout` s after its
first byte (after connecting, for the first), a kept-alive connection with no request closes
after `client_keepalive_timeout`, and an answer with nothing moving for `proxy_idle_timeout`
ends. A browser that leaves mid-answer cancels it, so the session's connection is freed at once.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from functools import partial
from http import HTTPStatus

import httptools
import structlog
from aiohttp import web

from bindery.gateway.abuse import AbuseGuard
from bindery.gateway.activity import is_person_request
from bindery.gateway.fairness import Held, Refused
from bindery.gateway.forwarding import (
    BUFFERED_BODY_LIMIT,
    NO_BODY_STATUS,
    STOPPED_MIDWAY,
    UNANSWERED,
    idle_message,
)
from bindery.gateway.keys import GATEWAY, PROXY
from bindery.gateway.metrics import family, observe_request
from bindery.gateway.proxy import Proxy
from bindery.gateway.routes import Route
from bindery.gateway.sessionauth import Admission, admission
from bindery.gateway.settings import GatewaySettings
from bindery.gateway.slowclients import HeadDeadline
from bindery.gateway.upstream import Answer, Connection, Exchange, UpstreamError
from bindery.gateway.urlpath import HANDOFF_PATH
from bindery.gateway.wireheaders import answer_headers, end_to_end, session_request_head

log = structlog.get_logger("bindery.gateway.fastlane")

SWEEP_SECONDS = 0.25
"""How often the connections' deadlines are checked: each fires up to this much late."""
MAX_HEAD = 16 * 1024
"""A head not whole within this many bytes goes to aiohttp, which refuses what is too long."""
_FAMILY = family("/user/")
# Answer headers sessionurls.py confines: the rest pass as they came, never decoded.
_CONFINED = frozenset({b"set-cookie", b"service-worker-allowed"})
# Headers that make a request more than a plain read: a body, an upgrade, an expectation.
_NOT_PLAIN = frozenset({b"content-length", b"transfer-encoding", b"upgrade", b"expect"})


class _Head:
    """One request head as llhttp parsed it: what deciding and forwarding it need."""

    __slots__ = ("authorization", "cookies", "forwarded_for", "headers", "host", "origin", "plain")

    def __init__(self) -> None:
        self.headers: list[tuple[bytes, bytes]] = []
        self.host: str | None = None
        self.authorization: str | None = None
        self.cookies: list[str] = []
        self.origin: str | None = None
        self.forwarded_for: list[str] = []
        self.plain = True


class _Parser:
    """llhttp over request heads, one at a time; the facts of the last in `head`."""

    def __init__(self) -> None:
        self._parser = httptools.HttpRequestParser(self)
        self.head = _Head()
        self.url = b""
        self._complete = False

    def parse(self, data: bytes) -> bool:
        """Parse one whole head; whether it is a whole request with no body (llhttp done)."""
        self.head = _Head()
        self.url = b""
        self._complete = False
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return False
        return self._complete

    @property
    def method(self) -> bytes:
        return self._parser.get_method()  # type: ignore[no-any-return]

    def keep_alive(self) -> bool:
        return self._parser.should_keep_alive()  # type: ignore[no-any-return]

    # -- httptools callbacks ----------------------------------------------------------------
    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        head = self.head
        head.headers.append((name, value))
        lowered = name.lower()
        if lowered == b"cookie":
            head.cookies.append(value.decode("utf-8", "surrogateescape"))
        # Of a repeated Authorization, Host or Origin the first counts, as aiohttp reads them.
        elif lowered == b"authorization":
            if head.authorization is None:
                head.authorization = value.decode("utf-8", "surrogateescape")
        elif lowered == b"host":
            if head.host is None:
                head.host = value.decode("utf-8", "surrogateescape")
        elif lowered == b"origin":
            if head.origin is None:
                head.origin = value.decode("utf-8", "surrogateescape")
        elif lowered == b"x-forwarded-for":
            head.forwarded_for.append(value.decode("latin-1"))
        elif lowered in _NOT_PLAIN and not (lowered == b"content-length" and value == b"0"):
            head.plain = False

    def on_message_complete(self) -> None:
        self._complete = True


class Lanes:
    """What every connection's fast lane shares: the proxy's parts, the slow lane, the open
    connections (for the stop)."""

    def __init__(
        self,
        proxy: Proxy,
        abuse: AbuseGuard | None,
        slow: Callable[[], asyncio.Protocol],
        settings: GatewaySettings,
    ) -> None:
        self.proxy = proxy
        self.abuse = abuse
        self.slow = slow
        self.header_timeout = settings.client_header_timeout
        self.keepalive_timeout = settings.client_keepalive_timeout
        self.open: set[FastLane] = set()
        self.closing = False
        self._sweeper: asyncio.TimerHandle | None = None

    def opened(self, lane: FastLane, loop: asyncio.AbstractEventLoop) -> None:
        self.open.add(lane)
        if self._sweeper is None:
            self._sweeper = loop.call_later(SWEEP_SECONDS, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        """Every connection's deadlines, checked by one timer for all: a timer per request
        (armed, then cancelled as nearly every answer comes in time) cost more."""
        now = loop.time()
        for lane in list(self.open):
            lane.check_deadlines(now)
        self._sweeper = loop.call_later(SWEEP_SECONDS, self._sweep, loop) if self.open else None

    def stop_sweeping(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def plain_read(
        self, parser: _Parser, remote: str | None
    ) -> tuple[Route, Admission, Held, str] | None:
        """The route, admission and shares of a plain read of a running session, and its
        path below the session's prefix; None for any other request (aiohttp's then)."""
        head = parser.head
        method = parser.method
        if method not in (b"GET", b"HEAD") or not head.plain or head.host is None:
            return None
        if not parser.keep_alive():
            return None
        path, _, query = parser.url.partition(b"?")
        # Only paths that read the same raw and decoded: aiohttp's router sees them so too.
        if not path.startswith(b"/user/") or b"%" in path or b"/." in path or b"//" in path:
            return None
        if b"token=" in query:  # a token in the URL earns a cookie: the slow lane sets it
            return None
        try:
            session, slash, tail = path[6:].decode("ascii").partition("/")
        except UnicodeDecodeError:
            return None
        proxy = self.proxy
        urls = proxy.urls
        if not slash or tail == HANDOFF_PATH:
            return None
        if urls.session_of_host(head.host) != (session if urls.subdomains else None):
            return None
        abuse = self.abuse
        if abuse is not None and abuse.banned(remote, head.forwarded_for):
            return None
        route = proxy.routes.get(session)
        if route is None:
            return None
        admitted = admission(
            proxy.credentials,
            session,
            authorization=head.authorization or "",
            query_token="",
            cookie_headers=head.cookies,
            origin=head.origin,
            host=head.host,
            secure_cookie=proxy.secure_cookie,
        )
        if admitted.refusal is not None:
            return None
        forwarding = proxy.forwarding
        try:
            held = forwarding.fairness.request(
                session, forwarding.client_of(remote, head.forwarded_for)
            )
        except Refused:
            return None
        return route, admitted, held, tail


class _Pending:
    """A request sent at once on a kept connection, its answer not in yet."""

    __slots__ = ("answer", "conn", "head", "held", "request", "route", "set_cookie", "started")

    def __init__(
        self,
        conn: Connection,
        answer: Answer,
        request: bytes,
        route: Route,
        held: Held,
        set_cookie: str | None,
        started: float,
    ) -> None:
        self.conn = conn
        self.answer = answer
        self.head = conn.head
        self.request = request
        self.route = route
        self.held = held
        self.set_cookie = set_cookie
        self.started = started


class FastLane(asyncio.Protocol):
    """One browser connection while its requests are plain reads of running sessions.

    The usual read -- a GET, a kept connection to its session idle, a small answer that comes
    whole -- is sent and answered from the connections' callbacks (`_send_at_once`): no task,
    no loop iteration in between. Any other (HEAD, a new connection to make, shares to wait
    for, a large answer, a kept connection the session closed as the request went out) goes
    on in a task (`_in_task`)."""

    def __init__(self, lanes: Lanes) -> None:
        self._lanes = lanes
        self._loop = asyncio.get_running_loop()  # once per connection (see check_deadlines)
        self._parser = _Parser()
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._remote: str | None = None
        self._due = 0.0
        """Loop time by which a request must be whole, else the connection closes (0: none)."""
        self._silent_after = 0.0
        """Loop time at which the answer under way gives up waiting for the session (0: none)."""
        self._pending: _Pending | None = None
        self._answering: asyncio.Task[None] | None = None
        self._finished: asyncio.Future[None] | None = None
        """Resolved when the answer under way is out (asked for by `stop`)."""
        self._writable: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._silent = False

    # -- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self._remote = peer[0] if isinstance(peer, tuple) else None
        self._lanes.opened(self, self._loop)
        self._deadline(self._lanes.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self._pending is not None or self._answering is not None:
            self._buffer += data  # the next request came early: it waits its turn
            if len(self._buffer) > MAX_HEAD and self._transport is not None:
                self._transport.pause_reading()
                self._reading_paused = True
            return
        if not self._buffer:  # the first byte of a head: its deadline starts now
            self._deadline(self._lanes.header_timeout)
        self._buffer += data
        self._next()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self._lanes.open.discard(self)
        self._cancel_deadline()
        # The browser left: its answer goes nowhere.
        if self._pending is not None:
            self._give_up(self._pending, 499)
        if self._answering is not None:
            self._answering.cancel()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        if self._finished is not None and not self._finished.done():
            self._finished.set_result(None)  # the stop waits for this connection no more

    def pause_writing(self) -> None:
        self._writable = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    # -- requests ---------------------------------------------------------------------------
    def _next(self) -> None:
        """Answer the head in the buffer, if whole and a plain read; else hand over."""
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > MAX_HEAD:
                self._hand_over()
            return
        head, rest = self._buffer[: end + 4], self._buffer[end + 4 :]
        parser = self._parser
        if self._lanes.closing or not parser.parse(head):
            self._hand_over()
            return
        found = self._lanes.plain_read(parser, self._remote)
        if found is None:
            self._hand_over()
            return
        self._cancel_deadline()
        self._buffer = rest
        route, admitted, held, tail = found
        started = time.monotonic()
        method = parser.method.decode("ascii")
        if is_person_request(method, tail):
            route.touch()
        request = session_request_head(
            method,
            parser.url.decode("ascii"),
            parser.head.headers,
            route,
            has_host=True,
            cookie_token=admitted.cookie_token,
        )
        set_cookie = admitted.set_cookie
        if method == "GET" and self._send_at_once(route, request, held, set_cookie, started):
            return
        work = partial(self._forward, route, request, method == "HEAD", held, set_cookie)
        self._in_task(work, held, started)

    def _send_at_once(
        self, route: Route, request: bytes, held: Held, set_cookie: str | None, started: float
    ) -> bool:
        """Send the request now if a kept connection to the session is idle and the shares
        have a connection free; whether it did."""
        pool = self._lanes.proxy.forwarding.pool
        conn = pool.kept(route.address)
        if conn is None:
            return False
        if not held.take_connection():
            pool.release(conn)
            return False
        answer = pool.send_now(conn, request)
        pending = _Pending(conn, answer, request, route, held, set_cookie, started)
        assert pending.head is not None
        pending.head.add_done_callback(self._head_came)
        self._pending = pending
        self._silent_after = self._loop.time() + self._lanes.proxy.forwarding.idle_timeout
        return True

    def _head_came(self, head: asyncio.Future[Answer]) -> None:
        """The session answered a request sent at once (or its connection ended first)."""
        error = None if head.cancelled() else head.exception()
        pending = self._pending
        if pending is None or pending.head is not head:  # given up already
            return
        self._silent_after = 0.0
        if error is not None:
            pending.conn.close()
            self._pending = None
            if pending.conn.received:
                self._finish(pending, self._error(502, UNANSWERED))
                return
            # The kept connection was closed by the session as the request went out: nothing
            # was answered, so it goes once more on a new connection, as the pool does.
            resend = partial(
                self._forward,
                pending.route,
                pending.request,
                False,
                pending.held,
                pending.set_cookie,
            )
            self._in_task(resend, pending.held, pending.started)
            return
        answer = pending.answer
        if not answer.complete:  # more of the body to come: a task waits for it
            self._pending = None
            self._in_task(partial(self._rest, pending), pending.held, pending.started)
            return
        self._finish(
            pending, self._whole(pending.route, answer, answer.take(), pending.set_cookie, False)
        )

    def _give_up(self, pending: _Pending, status: int) -> None:
        """End a request sent at once before its answer: its session connection closes."""
        pending.conn.answer = None  # whatever comes is no one's
        pending.conn.close()
        self._finish(pending, status)

    def _finish(self, pending: _Pending, status: int) -> None:
        self._pending = None
        pending.held.release()  # before the next request on this connection takes its own
        observe_request(_FAMILY, status, time.monotonic() - pending.started)
        self._answered()

    def _in_task(self, work: Callable[[], Awaitable[int]], held: Held, started: float) -> None:
        """Go on with a request in a task: `work` answers it and says the status sent."""
        self._answering = self._loop.create_task(self._carry(work, held, started))
        # Released by the answer, or when its task ends if cancelled before it ran.
        self._answering.add_done_callback(lambda _task: held.release())

    async def _carry(self, work: Callable[[], Awaitable[int]], held: Held, started: float) -> None:
        status = 499  # unless the answer goes out
        try:
            status = await work()
        except Exception:
            log.exception("fastlane.unhandled")
            self._close()
        finally:
            held.release()  # before the next request on this connection takes its own
            observe_request(_FAMILY, status, time.monotonic() - started)
        self._answered()

    async def _rest(self, pending: _Pending) -> int:
        """The rest of an answer to a request sent at once."""
        exchange = Exchange(pending.conn, pending.answer)
        try:
            return await self._answer_body(pending.route, exchange, False, pending.set_cookie)
        finally:
            exchange.end()

    async def _forward(
        self, route: Route, request: bytes, head_only: bool, held: Held, set_cookie: str | None
    ) -> int:
        """Carry one request to its session and its answer back (with `set_cookie`, the
        session's cookie for a token that came in `Authorization`); the status sent."""
        forwarding = self._lanes.proxy.forwarding
        idle = forwarding.idle_timeout
        try:
            if not held.connected:
                await held.connect()
            self._silent_after = self._loop.time() + idle
            try:
                exchange = await forwarding.pool.request(
                    route.address, request, head_only=head_only
                )
            finally:
                self._silent_after = 0.0
        except Refused as exc:
            return self._error(503, exc.message, b"Retry-After: 5\r\n")
        except UpstreamError as exc:
            log.warning("proxy.upstream_failed", error=str(exc))
            return self._error(502, UNANSWERED)
        except asyncio.CancelledError:
            if not self._silent:  # the browser left, or the gateway stops
                raise
            self._silent = False
            if self._answering is not None:
                self._answering.uncancel()
            return self._error(504, idle_message(idle))
        try:
            return await self._answer_body(route, exchange, head_only, set_cookie)
        finally:
            exchange.end()

    async def _answer_body(
        self, route: Route, exchange: Exchange, head_only: bool, set_cookie: str | None
    ) -> int:
        """The answer whose head is in, to the browser: whole when small, else streamed."""
        answer = exchange.answer
        idle = self._lanes.proxy.forwarding.idle_timeout
        bodiless = head_only or answer.status in NO_BODY_STATUS
        length = answer.expected
        if not (
            answer.complete or bodiless or (length is not None and length <= BUFFERED_BODY_LIMIT)
        ):
            return await self._stream(route, exchange, set_cookie, idle)
        try:
            if answer.complete:  # the usual case: all came with the head
                body = answer.take()
            else:
                async with asyncio.timeout(idle):
                    body = await exchange.read()
        except (UpstreamError, TimeoutError) as exc:
            log.info("proxy.stream_aborted", error=str(exc))
            return self._error(502, STOPPED_MIDWAY)
        return self._whole(route, answer, body, set_cookie, bodiless)

    def _whole(
        self, route: Route, answer: Answer, body: bytes, set_cookie: str | None, bodiless: bool
    ) -> int:
        """A whole answer in one write, its length said when the session did not."""
        headers = self._browser_headers(route.session, answer.headers, set_cookie)
        if answer.expected is None and not bodiless:
            headers.append((b"Content-Length", b"%d" % len(body)))
        self._write(_answer_head(answer.status, answer.reason, headers) + body)
        return answer.status

    async def _stream(
        self, route: Route, exchange: Exchange, set_cookie: str | None, idle: float
    ) -> int:
        """A large or open-ended body, passed on as it arrives (chunk-framed when the session
        gave no length), waiting while the browser is slower than the session."""
        answer = exchange.answer
        headers = self._browser_headers(route.session, answer.headers, set_cookie)
        chunked = answer.expected is None
        if chunked:
            headers.append((b"Transfer-Encoding", b"chunked"))
        self._write(_answer_head(answer.status, answer.reason, headers))
        loop = self._loop
        try:
            async with asyncio.timeout(idle) as quiet:
                async for chunk in exchange.chunks():
                    self._write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
                    if self._writable is not None:
                        await self._writable
                    quiet.reschedule(loop.time() + idle)
            if chunked:
                self._write(b"0\r\n\r\n")
        except (UpstreamError, TimeoutError) as exc:
            # The head is gone already: all that can be said is ending the connection.
            log.info("proxy.stream_aborted", error=type(exc).__name__)
            self._close()
        return answer.status

    def _error(self, status: int, message: str, extra: bytes = b"") -> int:
        body = json.dumps({"message": message}).encode()
        self._write(
            b"HTTP/1.1 %d %b\r\nContent-Type: application/json; charset=utf-8\r\n"
            b"Content-Length: %d\r\n%b\r\n%b"
            % (status, HTTPStatus(status).phrase.encode(), len(body), extra, body)
        )
        return status

    def _browser_headers(
        self, session: str, raw: list[tuple[bytes, bytes]], set_cookie: str | None
    ) -> list[tuple[bytes, bytes]]:
        """The session's answer headers for the browser: end to end only, confined
        (sessionurls.py) when they say something to confine, as bytes as they came; with
        `set_cookie`, the session's cookie for a token that came in `Authorization`."""
        kept = end_to_end(raw)
        if any(name.lower() in _CONFINED for name, _ in kept):
            headers = answer_headers(raw)
            self._lanes.proxy.urls.confine(session, headers)
            kept = [
                (name.encode("latin-1"), value.encode("utf-8", "surrogateescape"))
                for name, value in headers.items()
            ]
        if set_cookie is not None:
            kept.append((b"Set-Cookie", set_cookie.encode()))
        return kept

    def check_deadlines(self, now: float) -> None:
        """A head not whole in time closes the connection; a session silent for the idle
        timeout ends the request (504). Not `asyncio.timeout`, which asks for the running loop
        three times: each asking is a getpid() system call (CPython's check that the loop is
        this process's), on every request."""
        if self._due and now >= self._due:
            self._due = 0.0
            if self._buffer:
                log.info("client.header_timeout", seconds=self._lanes.header_timeout)
            self._close()
        if self._silent_after and now >= self._silent_after:
            self._silent_after = 0.0
            if self._pending is not None:
                idle = self._lanes.proxy.forwarding.idle_timeout
                self._give_up(self._pending, self._error(504, idle_message(idle)))
            elif self._answering is not None:
                self._silent = True
                self._answering.cancel()

    def _answered(self) -> None:
        """An answer went out (or the connection is gone): the next request, if any."""
        self._answering = None
        if self._finished is not None and not self._finished.done():
            self._finished.set_result(None)
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._lanes.closing:
            transport.close()
            return
        if self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
        if self._buffer:
            self._deadline(self._lanes.header_timeout)
            self._next()
        else:
            self._deadline(self._lanes.keepalive_timeout)

    def _hand_over(self) -> None:
        """From now on aiohttp serves this connection, starting with what is unread."""
        self._cancel_deadline()
        self._lanes.open.discard(self)
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        slow = self._lanes.slow()
        transport.set_protocol(slow)
        slow.connection_made(transport)
        if self._reading_paused:
            transport.resume_reading()
        if self._buffer:
            buffered, self._buffer = self._buffer, b""
            slow.data_received(buffered)

    # -- the connection ---------------------------------------------------------------------
    def _write(self, data: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def _deadline(self, seconds: float) -> None:
        """Close the connection in `seconds` unless a request comes whole by then."""
        self._due = self._loop.time() + seconds

    def _cancel_deadline(self) -> None:
        self._due = 0.0

    def stop(self) -> asyncio.Future[None] | None:
        """The gateway stops: an idle connection closes now, a busy one after its answer (the
        future returned resolves then)."""
        if self._answering is None and self._pending is None:
            self._close()
            return None
        self._finished = self._loop.create_future()
        return self._finished

    def abort(self) -> None:
        if self._answering is not None:
            self._answering.cancel()
        self._close()  # a request sent at once ends with the connection (connection_lost)


def _answer_head(status: int, reason: bytes, headers: list[tuple[bytes, bytes]]) -> bytes:
    return b"HTTP/1.1 %d %b\r\n%b\r\n" % (
        status,
        reason,
        b"".join(name + b": " + value + b"\r\n" for name, value in headers),
    )


class Serving:
    """The gateway's listening socket, its fast lanes and aiohttp behind them."""

    def __init__(self, runner: web.AppRunner, server: asyncio.Server, lanes: Lanes) -> None:
        self.runner = runner
        self.server = server
        self._lanes = lanes

    @property
    def port(self) -> int:
        return int(self.server.sockets[0].getsockname()[1])

    async def close(self, grace: float = 5.0) -> None:
        """Stop accepting; answers under way get `grace` s to finish; then aiohttp's stop."""
        self.server.close()
        lanes = self._lanes
        lanes.closing = True
        busy = [task for lane in list(lanes.open) if (task := lane.stop()) is not None]
        if busy:
            await asyncio.wait(busy, timeout=grace)
        for lane in list(lanes.open):
            lane.abort()
        lanes.stop_sweeping()
        await self.runner.cleanup()


async def serve(app: web.Application, settings: GatewaySettings, host: str, port: int) -> Serving:
    """Serve `app` on host:port, each connection in the fast lane until it hands over to
    aiohttp (with the client deadlines); stop with `Serving.close()`."""
    # aiohttp's access log would print query strings, which may hold tokens: ours does not.
    # A handler whose client left is cancelled: a proxied long poll gives its session's
    # connection back then, not when the session answers (or `proxy_idle_timeout` later).
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=5.0,
        keepalive_timeout=settings.client_keepalive_timeout,
        handler_cancellation=True,
    )
    await runner.setup()  # the app's resources, the proxy among them, exist from here
    handlers = runner.server
    assert handlers is not None
    seconds = settings.client_header_timeout
    lanes = Lanes(
        app[PROXY], app[GATEWAY].abuse, lambda: HeadDeadline(handlers(), seconds), settings
    )
    server = await asyncio.get_running_loop().create_server(lambda: FastLane(lanes), host, port)
    return Serving(runner, server, lanes)
