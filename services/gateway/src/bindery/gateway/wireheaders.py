"""What of a request and its answer crosses the proxy, byte for byte, and what stops at it.

In: a browser's request (headers as they came on the wire, in order) and the head of a
session's answer. Out: the head the session is sent -- path, query and every end-to-end header
unchanged (Host, Origin, cookies, Authorization, Sec-WebSocket-*), since Jupyter runs under
/user/<session>/, enforces its token and checks a websocket's Origin against Host -- and the
headers the browser is sent back. Hop-by-hop headers (RFC 9110 7.6.1: Connection, Keep-Alive,
Transfer-Encoding, Upgrade... and any header the Connection header names) describe one
connection, so each side's stop here; the proxy frames each connection itself.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiohttp import web
from multidict import CIMultiDict

from bindery.gateway.routes import Route
from bindery.gateway.sessionauth import COOKIE_TOKEN

HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)


def end_to_end(raw: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Headers as they came on the wire (bytes, in order, every value of repeated ones) without
    the hop-by-hop ones and those the Connection header names."""
    kept = []
    connection: list[bytes] = []
    for name, value in raw:  # one pass, one lower() per header: this runs twice per request
        lowered = name.lower()
        if lowered not in HOP_BY_HOP:
            kept.append((name, value))
        elif lowered == b"connection":
            connection.append(value)
    if connection:  # rare on HTTP/1.1 keep-alive: parse only when present
        named = {token.strip().lower() for value in connection for token in value.split(b",")}
        kept = [(k, v) for k, v in kept if k.lower() not in named]
    return kept


def session_request_head(
    method: str,
    raw_path: str,
    raw_headers: Iterable[tuple[bytes, bytes]],
    route: Route,
    *,
    has_host: bool,
    cookie_token: str | None,
    chunked: bool = False,
    upgrade: bool = False,
) -> bytes:
    """The request line and headers to send the session: path, query and every end-to-end
    header byte for byte (Host, Origin, cookies, Authorization, Sec-WebSocket-*). A request let
    in by its cookie carries the token (`cookie_token`); a body the browser sent without a
    length goes on re-framed (`chunked`: the browser's framing was hop-by-hop)."""
    path = route.prefix + raw_path
    lines = [f"{method} {path} HTTP/1.1".encode("utf-8", "surrogateescape")]
    lines.extend(k + b": " + v for k, v in end_to_end(raw_headers))
    if not has_host:  # HTTP/1.0 browsers may omit it; 1.1 requires it
        lines.append(f"Host: {route.host}:{route.port}".encode())
    if cookie_token is not None:
        lines.append(b"Authorization: token " + cookie_token.encode())
    if upgrade:
        lines.append(b"Upgrade: websocket\r\nConnection: Upgrade")
    elif chunked:
        lines.append(b"Transfer-Encoding: chunked")
    lines.append(b"\r\n")
    return b"\r\n".join(lines)


def request_head(request: web.BaseRequest, route: Route, *, upgrade: bool = False) -> bytes:
    """`session_request_head` of an aiohttp request."""
    return session_request_head(
        request.method,
        request.raw_path,
        request.raw_headers,
        route,
        has_host="Host" in request.headers,
        cookie_token=request.get(COOKIE_TOKEN),
        chunked=request.body_exists and request.content_length is None,
        upgrade=upgrade,
    )


def answer_headers(raw: Iterable[tuple[bytes, bytes]]) -> CIMultiDict[str]:
    """A session's answer headers for the browser, hop-by-hop ones dropped."""
    return CIMultiDict(
        [(k.decode("latin-1"), v.decode("utf-8", "surrogateescape")) for k, v in end_to_end(raw)]
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
