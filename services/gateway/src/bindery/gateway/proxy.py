"""Reverse proxy for `/user/<session>/...`: HTTP and websockets, streamed both ways (a small
answer of known length goes out in one write with its headers; websocket frames pass as bytes).

In: requests for a session; routes (session -> Jupyter's base URL) from pod-ready/pod-stopped
and, on start, from the runtime. Out: the same request at the session, path, query, Host, Origin,
cookies and Authorization unchanged (Jupyter runs under /user/<session>/, enforces its token and
checks a websocket's Origin against Host). Activity is noted in memory per request and message;
`ActivityFlusher` publishes it in batches so no request waits on the broker.

The gateway checks the session's token too (defence in depth: a Jupyter misconfigured to accept
anything, or an image that starts its own server, still sits behind it). Tokens are
HMAC(secret, session), so the check is local. A valid token in the query or the Authorization
header earns an HttpOnly cookie scoped to `/user/<session>/`, which JupyterLab's later requests
and websockets carry.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import time
import weakref
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http.cookies import Morsel
from typing import Literal, Protocol

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from bindery.events import SessionActivity
from bindery.runtimes import Session
from bindery.tokens import session_token

log = structlog.get_logger("bindery.gateway.proxy")

REBUILD_WAIT_SECONDS = 10.0
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
# aiohttp makes its own websocket handshake upstream; the browser's must not be copied over it.
WEBSOCKET_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
    }
)


def forward_headers(
    headers: Mapping[str, str], drop: frozenset[str] = frozenset()
) -> CIMultiDict[str]:
    """Copy end-to-end headers (all values of repeated ones), dropping hop-by-hop headers and
    any header the Connection header names."""
    skip = HOP_BY_HOP | drop if drop else HOP_BY_HOP
    if "Connection" in headers:  # rare on HTTP/1.1 keep-alive: parse only when present
        getall = getattr(headers, "getall", None)
        connection = getall("Connection", []) if getall else [headers["Connection"]]
        named = {token.strip().lower() for value in connection for token in value.split(",")}
        skip = skip | named
    out: CIMultiDict[str] = CIMultiDict()
    add = out.add
    for key, value in headers.items():
        if key.lower() not in skip:
            add(key, value)
    return out


def sendable_close_code(code: int | None) -> int:
    """A close code one may send: 1005/1006/1015 only describe what happened to a connection."""
    if code is None or code == 1005:
        return 1000
    if code in (1006, 1015):
        return 1011
    if 1000 <= code <= 1014 or 3000 <= code <= 4999:
        return code
    return 1000


@dataclass
class Route:
    session: str
    target: str
    launch_id: str
    last_activity: float = 0.0
    """Wall-clock time of the last request or message (0: none since the route was added)."""
    flushed_activity: float = 0.0

    def touch(self) -> None:
        self.last_activity = time.time()


class RouteTable:
    """session -> Route; a dict held by this replica, filled from events and the runtime."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}
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

    def add(self, session: str, target: str, launch_id: str) -> Route:
        route = self._routes.get(session)
        if route is not None and route.target == target:
            return route
        route = Route(session, target.rstrip("/"), launch_id or session)
        self._routes[session] = route
        log.info("route.added", session=session, target=route.target)
        return route

    def remove(self, session: str) -> bool:
        removed = self._routes.pop(session, None) is not None
        if removed:
            log.info("route.removed", session=session)
        return removed

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
    return sent


async def run_activity_flusher(routes: RouteTable, publish: Publish, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        sent = await flush_activity(routes, publish)
        if sent:
            log.debug("activity.flushed", sessions=sent)


def not_found(session: str) -> web.Response:
    return web.json_response(
        {"message": f"No running session named {session!r}: it may have stopped or never existed."},
        status=404,
    )


def bad_gateway(message: str) -> web.Response:
    return web.json_response({"message": message}, status=502)


def forbidden() -> web.Response:
    return web.json_response(
        {
            "message": "This session needs its token: open it from the link its launch page "
            "gave, or send `Authorization: token <token>`."
        },
        status=403,
    )


TOKEN_COOKIE = "bindery-session-token"  # noqa: S105 (a cookie name)


@functools.lru_cache(maxsize=4096)
def token_cookie(session: str, token: str, secure: bool) -> str:
    """The Set-Cookie value for a session's token, formatted once per session (API clients
    that send `Authorization` on every request and keep no cookie get it on every answer)."""
    morsel: Morsel[str] = Morsel()
    morsel.set(TOKEN_COOKIE, token, token)
    morsel["path"] = f"/user/{session}/"
    morsel["samesite"] = "Lax"
    morsel["httponly"] = True  # type: ignore[assignment]  # Morsel flags take a bool
    if secure:
        morsel["secure"] = True  # type: ignore[assignment]
    return morsel.OutputString()


def presented_token(request: web.Request) -> tuple[str, bool]:
    """The token a request carries and whether it came from the cookie."""
    cookie = request.cookies.get(TOKEN_COOKIE, "")
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() in ("token", "bearer") and credentials.strip():
        return credentials.strip(), False
    if request.query.get("token"):
        return request.query["token"], False
    return cookie, True


# Bodies up to this size (with a Content-Length) are read whole and answered in one write with
# their headers; larger or open-ended ones are streamed chunk by chunk as they arrive. Jupyter's
# API answers (contents listings, kernel and session lists) are mostly a few KiB.
BUFFERED_BODY_LIMIT = 256 * 1024
# Statuses whose answer has no body, whatever Content-Length says (HEAD's neither).
_NO_BODY_STATUS = frozenset({204, 304})


class Proxy:
    """Carries requests to sessions through one shared client connection pool."""

    def __init__(
        self,
        routes: RouteTable,
        client: aiohttp.ClientSession,
        secret: str,
        *,
        secure_cookie: bool = False,
    ) -> None:
        self._routes = routes
        self._client = client
        # HMAC once per session, not per request: tokens are a pure function of the name.
        self._token_for = functools.lru_cache(maxsize=4096)(
            functools.partial(session_token, secret)
        )
        self._secure_cookie = secure_cookie
        self._sockets: weakref.WeakSet[web.WebSocketResponse[Literal[False]]] = weakref.WeakSet()

    @staticmethod
    def make_client(max_connections: int, connect_timeout: float) -> aiohttp.ClientSession:
        """The shared pool: no cookie jar (cookies of one session must never reach another), no
        decompression (bodies pass through as the session encoded them), no read timeout."""
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=max_connections, limit_per_host=0),
            cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout),
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        session = request.match_info["session"]
        route = await self._routes.find(session, REBUILD_WAIT_SECONDS)
        if route is None:
            return not_found(session)
        if "tail" not in request.match_info:  # /user/<session> -> /user/<session>/
            query = request.raw_path.partition("?")[2]
            location = f"/user/{session}/" + (f"?{query}" if query else "")
            return web.Response(status=302, headers={"Location": location})
        token, from_cookie = presented_token(request)
        expected: str = self._token_for(session)
        if not hmac.compare_digest(token.encode(), expected.encode()):
            return forbidden()
        route.touch()
        url = URL(route.target + request.raw_path, encoded=True)
        upgrade = request.headers.get("Upgrade", "").lower()
        if upgrade == "websocket" and request.method == "GET":
            return await self._websocket(request, route, url)
        cookie = None if from_cookie else (session, expected)
        return await self._http(request, url, cookie)

    async def _http(
        self, request: web.Request, url: URL, cookie: tuple[str, str] | None = None
    ) -> web.StreamResponse:
        headers = forward_headers(request.headers)
        data = request.content if request.body_exists else None
        try:
            upstream = await self._client.request(
                request.method, url, headers=headers, data=data, allow_redirects=False
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("proxy.upstream_failed", path=url.path, error=str(exc))
            return bad_gateway("The session did not answer; it may be starting or stopping.")
        length = upstream.content_length
        if (
            length is not None
            and length <= BUFFERED_BODY_LIMIT
            and request.method != "HEAD"
            and upstream.status not in _NO_BODY_STATUS
        ):
            return await self._buffered(request, upstream, cookie)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        response.headers.extend(forward_headers(upstream.headers))
        self._set_cookie(request, response, cookie)
        try:
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
            # Headers may be gone already: all we can do is end the connection.
            log.info("proxy.stream_aborted", error=type(exc).__name__)
            if request.transport is not None:
                request.transport.close()
        finally:
            upstream.release()
        return response

    async def _buffered(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        cookie: tuple[str, str] | None,
    ) -> web.StreamResponse:
        """A small body with a known length: one write of headers and body together."""
        try:
            body = await upstream.read()
        except (aiohttp.ClientError, ConnectionError, TimeoutError) as exc:
            log.info("proxy.stream_aborted", error=type(exc).__name__)
            return bad_gateway("The session stopped answering in the middle of a response.")
        finally:
            upstream.release()
        response = web.Response(
            status=upstream.status,
            reason=upstream.reason,
            body=body,
            headers=forward_headers(upstream.headers),
        )
        self._set_cookie(request, response, cookie)
        return response

    def _set_cookie(
        self, request: web.Request, response: web.StreamResponse, cookie: tuple[str, str] | None
    ) -> None:
        if cookie is not None and request.cookies.get(TOKEN_COOKIE) != cookie[1]:
            session, token = cookie
            response.headers.add("Set-Cookie", token_cookie(session, token, self._secure_cookie))

    async def _websocket(self, request: web.Request, route: Route, url: URL) -> web.StreamResponse:
        protocols = [
            p.strip()
            for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
            if p.strip()
        ]
        headers = forward_headers(request.headers, drop=WEBSOCKET_HANDSHAKE)
        try:
            upstream = await self._client.ws_connect(
                url,
                headers=headers,
                protocols=protocols,
                max_msg_size=0,
                autoping=True,
                timeout=aiohttp.ClientWSTimeout(ws_close=10.0),
                decode_text=False,
            )
        except aiohttp.WSServerHandshakeError as exc:
            # Jupyter refused (wrong token, bad Origin...): tell the browser the same status.
            return web.json_response(
                {"message": f"The session refused the websocket ({exc.status})."},
                status=exc.status if 400 <= exc.status < 600 else 502,
            )
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("proxy.ws_upstream_failed", error=str(exc))
            return bad_gateway("The session did not accept the websocket.")
        # Messages pass through as they came: text frames stay bytes (no decode and re-encode;
        # the receiving end validates UTF-8), and no permessage-deflate toward the browser,
        # which the session itself (Jupyter's default) does not use either.
        client = web.WebSocketResponse[Literal[False]](
            protocols=(upstream.protocol,) if upstream.protocol else (),
            max_msg_size=0,
            autoping=True,
            compress=False,
            decode_text=False,
        )
        try:
            await client.prepare(request)
        except Exception:
            await upstream.close()
            raise
        self._sockets.add(client)
        try:
            await bridge(client, upstream, route.touch)
        finally:
            self._sockets.discard(client)
            if not upstream.closed:
                await upstream.close()
        return client

    async def close(self) -> None:
        """Shutting down: tell every browser websocket we are going away (1001)."""
        for ws in list(self._sockets):
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"gateway restarting")


_DATA_FRAMES = frozenset({aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY})


async def _pump(
    source: web.WebSocketResponse[Literal[False]] | aiohttp.ClientWebSocketResponse[Literal[False]],
    sink: web.WebSocketResponse[Literal[False]] | aiohttp.ClientWebSocketResponse[Literal[False]],
    touch: Callable[[], None],
) -> None:
    async for message in source:
        touch()
        if message.type in _DATA_FRAMES:
            await sink.send_frame(message.data, message.type)
        elif message.type == aiohttp.WSMsgType.ERROR:
            break
    if not sink.closed:
        await sink.close(code=sendable_close_code(source.close_code))


async def bridge(
    client: web.WebSocketResponse[Literal[False]],
    upstream: aiohttp.ClientWebSocketResponse[Literal[False]],
    touch: Callable[[], None],
) -> None:
    """Copy messages both ways until one side closes, then close the other with its code."""
    tasks = {
        asyncio.create_task(_pump(client, upstream, touch)),
        asyncio.create_task(_pump(upstream, client, touch)),
    }
    try:
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        if pending:
            _, pending = await asyncio.wait(pending, timeout=10.0)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class SessionLister(Protocol):
    async def list_sessions(self) -> list[Session]: ...


async def rebuild_routes(runtime: SessionLister, routes: RouteTable) -> int:
    """Add a route for every running session the runtime knows; returns how many it added."""
    added = 0
    for session in await runtime.list_sessions():
        if session.running and session.name and session.target and session.name not in routes:
            routes.add(session.name, session.target, session.launch_id)
            added += 1
    return added


async def rebuild_routes_until_done(
    runtime: SessionLister, routes: RouteTable, retry_interval: float
) -> None:
    """Run at start: sessions survive a gateway restart, their routes must too. Routes from
    pod-ready events that arrive meanwhile are kept (rebuilding only adds)."""
    while True:
        try:
            added = await rebuild_routes(runtime, routes)
        except Exception as exc:  # a node may be down at start: keep trying
            log.warning("routes.rebuild_failed", error=str(exc), retry_in=retry_interval)
            await asyncio.sleep(retry_interval)
            continue
        log.info("routes.rebuilt", added=added, total=len(routes))
        routes.rebuilt.set()
        return
