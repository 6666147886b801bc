"""Reverse proxy for `/user/<session>/...`: HTTP and websockets, streamed both ways.

In: requests for a session; routes (session -> Jupyter's base URL) from pod-ready/pod-stopped
and, on start, from the runtime. Out: the same request at the session, path, query, Host, Origin,
cookies and Authorization unchanged (Jupyter runs under /user/<session>/, enforces its token and
checks a websocket's Origin against Host), over the kept-alive pool of `upstream.py`; a small
answer of known length goes back in one write with its headers, a larger one chunk by chunk.
A websocket's handshake goes to the session on a connection of its own; after the session's 101
the two connections are spliced as bytes (`splice.py`). Each request and websocket holds its
session's and its client's shares while it lasts (`fairness.py`: over them, a 503 saying
why); bodies that stop arriving get 408 (`slowclients.py`), and a request or websocket with
no byte moving either way for `idle_timeout` is closed. Activity (what a person does, not what
JupyterLab polls: activity.py) is noted in memory per request and per websocket message from
the browser; `run_activity_flusher` publishes it in batches so no request waits on the broker.

The gateway checks the session's token too (defence in depth: a Jupyter misconfigured to accept
anything, or an image that starts its own server, still sits behind it): sessionauth.py. A valid
token in the query or the Authorization header earns an HttpOnly cookie scoped to
`/user/<session>/`, which JupyterLab's later requests and websockets carry. A CORS preflight
carries no credentials by design: it goes to Jupyter unchecked (it can change nothing). A
session's answers are confined to its own place (sessionurls.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import structlog
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from bindery.events import SessionActivity, StopReason
from bindery.gateway.activity import is_person_request
from bindery.gateway.ended import Ended, not_running, relaunch_link
from bindery.gateway.fairness import Fairness, Refused, refused
from bindery.gateway.sessionauth import (
    TOKEN_COOKIE,
    Credentials,
    forbidden,
    from_own_page,
    not_from_own_page,
    presented_tokens,
    token_cookie,
)
from bindery.gateway.sessionurls import SessionUrls
from bindery.gateway.slowclients import SlowBody, body_chunks, read_body, too_slow
from bindery.gateway.splice import BrowserEnd, SessionEnd, Splice
from bindery.gateway.upstream import Exchange, Pool, Target, UpstreamError
from bindery.runtimes import Session

log = structlog.get_logger("bindery.gateway.proxy")

REBUILD_WAIT_SECONDS = 10.0
# Stopped sessions whose reason a replica keeps: a day of mybinder.org's stops, a few MiB.
STOPPED_REMEMBERED = 50_000
"""How long a request for an unknown session waits for the start-up rebuild of routes: a
listing of every node takes well under a second, even with hundreds of sessions."""

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)
_HOP_BY_HOP_RAW = frozenset(name.encode() for name in HOP_BY_HOP)


def _named_by_connection(values: Iterable[str]) -> set[str]:
    """Headers a Connection header names are hop-by-hop too."""
    return {token.strip().lower() for value in values for token in value.split(",")}


def forward_headers(
    headers: Mapping[str, str], drop: frozenset[str] = frozenset()
) -> CIMultiDict[str]:
    """Copy end-to-end headers (all values of repeated ones), dropping hop-by-hop headers and
    any header the Connection header names."""
    skip = HOP_BY_HOP | drop if drop else HOP_BY_HOP
    if "Connection" in headers:  # rare on HTTP/1.1 keep-alive: parse only when present
        getall = getattr(headers, "getall", None)
        connection = getall("Connection", []) if getall else [headers["Connection"]]
        skip = skip | _named_by_connection(connection)
    out: CIMultiDict[str] = CIMultiDict()
    add = out.add
    for key, value in headers.items():
        if key.lower() not in skip:
            add(key, value)
    return out


def forward_raw_headers(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """`forward_headers` for headers as they came on the wire (bytes, in order)."""
    raw = list(raw)
    skip = _HOP_BY_HOP_RAW
    connection = [v.decode("latin-1") for k, v in raw if k.lower() == b"connection"]
    if connection:
        skip = skip | {name.encode("latin-1") for name in _named_by_connection(connection)}
    return [(k, v) for k, v in raw if k.lower() not in skip]


# A request the gateway let in by its cookie carries the token to Jupyter in `Authorization`:
# Jupyter checks it on every request (it never saw the token in a URL, so it set no login cookie
# of its own), and a request authenticated by token needs no XSRF cookie, so a cookie a sibling
# origin tossed for a parent domain cannot break it either.
COOKIE_TOKEN = web.RequestKey("cookie_token", str)


def request_head(request: web.BaseRequest, route: Route, *, upgrade: bool = False) -> bytes:
    """The request line and headers to send the session: path, query and every end-to-end
    header byte for byte (Host, Origin, cookies, Authorization, Sec-WebSocket-*)."""
    path = route.prefix + request.raw_path
    lines = [f"{request.method} {path} HTTP/1.1".encode("utf-8", "surrogateescape")]
    lines.extend(k + b": " + v for k, v in forward_raw_headers(request.raw_headers))
    if "Host" not in request.headers:  # HTTP/1.0 browsers may omit it; 1.1 requires it
        lines.append(f"Host: {route.host}:{route.port}".encode())
    if COOKIE_TOKEN in request:
        lines.append(b"Authorization: token " + request[COOKIE_TOKEN].encode())
    if upgrade:
        lines.append(b"Upgrade: websocket\r\nConnection: Upgrade")
    elif request.body_exists and request.content_length is None:
        lines.append(b"Transfer-Encoding: chunked")  # re-framed: the browser's was hop-by-hop
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def answer_headers(raw: Iterable[tuple[bytes, bytes]]) -> CIMultiDict[str]:
    """A session's answer headers for the browser, hop-by-hop ones dropped."""
    return CIMultiDict(
        (k.decode("latin-1"), v.decode("utf-8", "surrogateescape"))
        for k, v in forward_raw_headers(raw)
    )


def parse_answer_head(head: bytes) -> tuple[int, str, CIMultiDict[str]]:
    """Status, reason and end-to-end headers of an answer head (the websocket handshake's)."""
    status_line, *lines = head.rstrip(b"\r\n").split(b"\r\n")
    parts = status_line.split(b" ", 2)
    try:
        status = int(parts[1])
    except (IndexError, ValueError):
        return 502, "Bad Gateway", CIMultiDict()
    reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
    raw = [(k.strip(), v.strip()) for k, _, v in (line.partition(b":") for line in lines)]
    return status, reason, answer_headers(raw)


@dataclass
class Route:
    session: str
    target: str
    launch_id: str
    relaunch: str = ""
    """Where a person gets another session like this one once it ended (ended.relaunch_link)."""
    last_activity: float = 0.0
    """Wall-clock time of the last request or message a person caused (0: none since the route
    was added)."""
    flushed_activity: float = 0.0
    # Where to connect, parsed once from the target: (host, port, tls) and the path before
    # /user/<session>/ (empty for Jupyter at the root of its server).
    address: Target = field(init=False)
    prefix: str = field(init=False)

    def __post_init__(self) -> None:
        url = URL(self.target)
        tls = url.scheme in ("https", "wss")
        self.address = (url.host or "127.0.0.1", url.port or (443 if tls else 80), tls)
        self.prefix = url.raw_path.rstrip("/")

    @property
    def host(self) -> str:
        return self.address[0]

    @property
    def port(self) -> int:
        return self.address[1]

    @property
    def tls(self) -> bool:
        return self.address[2]

    def touch(self) -> None:
        self.last_activity = time.time()


class RouteTable:
    """session -> Route; a dict held by this replica, filled from events and the runtime."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
        # Why recent sessions stopped, so their address says so instead of a bare 404.
        self._ended: collections.OrderedDict[str, Ended] = collections.OrderedDict()
        # Set once the routes of sessions that outlived a restart are back (or there is no
        # runtime to ask): until then an unknown session may be one of them, not a 404.
        self.rebuilt = asyncio.Event()

    def __len__(self) -> int:
        return len(self._routes)

    def __contains__(self, session: object) -> bool:
        return session in self._routes

    def get(self, session: str) -> Route | None:
        return self._routes.get(session)

    async def find(self, session: str, wait: float) -> Route | None:
        """The session's route; right after a start, wait up to `wait` s for the rebuild."""
        route = self._routes.get(session)
        if route is None and not self.rebuilt.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.rebuilt.wait(), wait)
            route = self._routes.get(session)
        return route

    def add(self, session: str, target: str, launch_id: str, relaunch: str = "") -> Route:
        route = self._routes.get(session)
        if route is not None and route.target == target:
            return route
        route = Route(session, target.rstrip("/"), launch_id or session, relaunch)
        self._routes[session] = route
        log.info("route.added", session=session, target=route.target)
        return route

    def remove(
        self, session: str, reason: StopReason | None = None, idle_seconds: float | None = None
    ) -> bool:
        route = self._routes.pop(session, None)
        if route is not None:
            log.info("route.removed", session=session)
        if reason is not None:
            relaunch = route.relaunch if route else ""
            self._ended[session] = Ended(reason, relaunch, idle_seconds)
            while len(self._ended) > STOPPED_REMEMBERED:
                self._ended.popitem(last=False)
        return route is not None

    def ended(self, session: str) -> Ended | None:
        """Why ``session`` ended and how to relaunch it, if this replica saw it stop recently."""
        return self._ended.get(session)

    def due_activity(self) -> list[Route]:
        """Routes with activity not yet published."""
        return [r for r in self._routes.values() if r.last_activity > r.flushed_activity]


Publish = Callable[[SessionActivity], Awaitable[None]]


async def flush_activity(routes: RouteTable, publish: Publish) -> int:
    """Publish one SessionActivity per session active since the last flush; returns how many."""
    sent = 0
    for route in routes.due_activity():
        seen = route.last_activity
        event = SessionActivity(
            launch_id=route.launch_id,
            session=route.session,
            last_activity=datetime.fromtimestamp(seen, UTC),
        )
        try:
            await publish(event)
        except Exception as exc:  # the broker is down: keep it for the next round
            log.warning("activity.publish_failed", session=route.session, error=str(exc))
            break
        route.flushed_activity = seen
        sent += 1
    if sent:
        log.debug("activity.flushed", sessions=sent)
    return sent


def bad_gateway(message: str) -> web.Response:
    return web.json_response({"message": message}, status=502)


# Bodies up to this size (with a Content-Length) are read whole and answered in one write with
# their headers; larger or open-ended ones are streamed chunk by chunk as they arrive. Jupyter's
# API answers (contents listings, kernel and session lists) are mostly a few KiB.
BUFFERED_BODY_LIMIT = 256 * 1024
# Statuses whose answer has no body, whatever Content-Length says (HEAD's neither).
_NO_BODY_STATUS = frozenset({204, 304})


class Proxy:
    """Carries requests to sessions over one shared pool of kept-alive connections."""

    def __init__(
        self,
        routes: RouteTable,
        credentials: Credentials,
        urls: SessionUrls,
        *,
        fairness: Fairness,
        client_of: Callable[[web.Request], Hashable | None],
        connect_timeout: float = 10.0,
        idle_timeout: float = 600.0,
        body_timeout: float = 30.0,
        secure_cookie: bool = False,
    ) -> None:
        self._routes = routes
        # The pool keeps no cookies (one session's never reach another) and decodes no body
        # (each passes as the session encoded it); `fairness` says how much may be in flight.
        self._pool = Pool(connect_timeout)
        self._fairness = fairness
        self._client_of = client_of
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self._body_timeout = body_timeout
        self._credentials = credentials
        self._urls = urls
        self._secure_cookie = secure_cookie
        self._splices: set[Splice] = set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        session = request.match_info["session"]
        route = await self._routes.find(session, REBUILD_WAIT_SECONDS)
        if route is None:
            home = self._urls.public_url if self._urls.subdomains else ""
            return not_running(request, session, self._routes.ended(session), home)
        if "tail" not in request.match_info:  # /user/<session> -> /user/<session>/
            query = request.raw_path.partition("?")[2]
            location = f"/user/{session}/" + (f"?{query}" if query else "")
            return web.Response(status=302, headers={"Location": location})
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
            return await self._http(request, route)
        tokens, from_cookie = presented_tokens(request)
        if not self._credentials.token_matches(session, tokens):
            return forbidden()
        if from_cookie:
            if not from_own_page(request):
                return not_from_own_page()
            request[COOKIE_TOKEN] = self._credentials.token(session)
        if request.method == "GET" and request.headers.get("Upgrade", "").lower() == "websocket":
            return await self._websocket(request, route)
        if is_person_request(request.method, request.match_info["tail"]):
            route.touch()
        cookie = None if from_cookie else (session, self._credentials.token(session))
        return await self._http(request, route, cookie)

    async def _http(
        self, request: web.Request, route: Route, cookie: tuple[str, str] | None = None
    ) -> web.StreamResponse:
        try:
            held = self._fairness.request(route.session, self._client_of(request))
        except Refused as exc:
            return refused(exc)
        try:
            return await self._forward(request, route, cookie, held.connect)
        finally:
            held.release()

    async def _forward(
        self,
        request: web.Request,
        route: Route,
        cookie: tuple[str, str] | None,
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
            async with asyncio.timeout(self._idle_timeout) as quiet:
                if streamed:

                    def moved() -> None:
                        quiet.reschedule(loop.time() + self._idle_timeout)

                    body = _body_chunks(request, length is None, self._body_timeout, moved)
                exchange = await self._pool.request(
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
            log.info("proxy.idle", path=request.path, seconds=self._idle_timeout)
            return web.json_response(
                {"message": f"The session sent nothing for {self._idle_timeout:g} s."},
                status=504,
            )
        except UpstreamError as exc:
            log.warning("proxy.upstream_failed", path=request.path, error=str(exc))
            return bad_gateway("The session did not answer; it may be starting or stopping.")
        try:
            answer = exchange.answer
            headers = answer_headers(answer.headers)
            self._urls.confine(route.session, headers)
            length = answer.expected
            if answer.complete or (length is not None and length <= BUFFERED_BODY_LIMIT):
                return await self._whole(request, exchange, headers, cookie)
            return await self._stream(request, exchange, headers, cookie)
        finally:
            exchange.end()

    async def _whole(
        self,
        request: web.Request,
        exchange: Exchange,
        headers: CIMultiDict[str],
        cookie: tuple[str, str] | None,
    ) -> web.StreamResponse:
        """A small body of known length (or none): one write of headers and body together."""
        answer = exchange.answer
        try:
            async with asyncio.timeout(self._idle_timeout):
                data = await exchange.read()
        except (UpstreamError, TimeoutError) as exc:
            log.info("proxy.stream_aborted", error=str(exc))
            return bad_gateway("The session stopped answering in the middle of a response.")
        reason = answer.reason.decode("latin-1")
        response: web.StreamResponse
        if request.method == "HEAD" or answer.status in _NO_BODY_STATUS:
            # Headers only, Content-Length as the session said (aiohttp sends them as they are).
            response = web.StreamResponse(status=answer.status, reason=reason, headers=headers)
        else:
            response = web.Response(status=answer.status, reason=reason, body=data, headers=headers)
        self._set_cookie(request, response, cookie)
        return response

    async def _stream(
        self,
        request: web.Request,
        exchange: Exchange,
        headers: CIMultiDict[str],
        cookie: tuple[str, str] | None,
    ) -> web.StreamResponse:
        """A large or open-ended body: passed on chunk by chunk as it arrives (with the
        session's Content-Length when it sent one, so the browser's copy is not re-chunked)."""
        answer = exchange.answer
        response = web.StreamResponse(
            status=answer.status, reason=answer.reason.decode("latin-1"), headers=headers
        )
        self._set_cookie(request, response, cookie)
        loop = asyncio.get_running_loop()
        try:
            await response.prepare(request)
            async with asyncio.timeout(self._idle_timeout) as quiet:
                async for chunk in exchange.chunks():
                    await response.write(chunk)
                    quiet.reschedule(loop.time() + self._idle_timeout)
            await response.write_eof()
        except (UpstreamError, ConnectionError, TimeoutError) as exc:
            # Headers may be gone already: all we can do is end the connection.
            log.info("proxy.stream_aborted", error=type(exc).__name__)
            if request.transport is not None:
                request.transport.close()
        return response

    def _set_cookie(
        self, request: web.Request, response: web.StreamResponse, cookie: tuple[str, str] | None
    ) -> None:
        if cookie is not None and request.cookies.get(TOKEN_COOKIE) != cookie[1]:
            session, token = cookie
            response.headers.add("Set-Cookie", token_cookie(session, token, self._secure_cookie))

    async def _websocket(self, request: web.Request, route: Route) -> web.StreamResponse:
        try:
            held = self._fairness.websocket(route.session, self._client_of(request))
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
        splice = Splice(browser, session, route.touch, handler.connection_lost, self._idle_timeout)
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
        self._pool.close()


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


class SessionLister(Protocol):
    async def list_sessions(self) -> list[Session]: ...


async def rebuild_routes(runtime: SessionLister, routes: RouteTable) -> int:
    """Add a route for every running session the runtime knows; returns how many it added."""
    added = 0
    for session in await runtime.list_sessions():
        if session.running and session.name and session.target and session.name not in routes:
            routes.add(session.name, session.target, session.launch_id, relaunch_link(session.repo))
            added += 1
    return added


async def rebuild_routes_once(runtime: SessionLister, routes: RouteTable) -> None:
    """A step of the loop that runs from the start until one listing succeeded (a node may be
    down at start), and does nothing after: sessions survive a gateway restart, their routes
    must too. Routes from pod-ready events that arrive meanwhile are kept (rebuilding only adds)."""
    if routes.rebuilt.is_set():
        return
    added = await rebuild_routes(runtime, routes)
    log.info("routes.rebuilt", added=added, total=len(routes))
    routes.rebuilt.set()
