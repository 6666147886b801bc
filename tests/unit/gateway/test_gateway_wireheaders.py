"""What of a request and its answer crosses the proxy (wireheaders.py): end-to-end headers byte
for byte and in order, hop-by-hop ones and those the Connection header names dropped."""

from __future__ import annotations

from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from bindery.gateway.routes import Route
from bindery.gateway.sessionauth import COOKIE_TOKEN
from bindery.gateway.wireheaders import answer_headers, parse_answer_head, request_head

ROUTE = Route("s1", "http://10.0.0.5:8888/jupyter", "a" * 32)


def head_lines(head: bytes) -> list[bytes]:
    assert head.endswith(b"\r\n\r\n")
    return head[:-4].split(b"\r\n")


def test_the_session_gets_every_end_to_end_header_and_no_hop_by_hop_one() -> None:
    request = make_mocked_request(
        "GET",
        "/user/s1/lab?token=t&x=%2F",
        headers=CIMultiDict(
            [
                ("Host", "gw.example"),
                ("Connection", "keep-alive, X-Hop"),
                ("X-Hop", "1"),
                ("Keep-Alive", "timeout=5"),
                ("TE", "trailers"),
                ("Origin", "https://gw.example"),
                ("Cookie", "a=1"),
                ("Cookie", "b=2"),
            ]
        ),
    )
    assert head_lines(request_head(request, ROUTE)) == [
        b"GET /jupyter/user/s1/lab?token=t&x=%2F HTTP/1.1",
        b"Host: gw.example",
        b"Origin: https://gw.example",
        b"Cookie: a=1",
        b"Cookie: b=2",
    ]


def test_a_request_let_in_by_its_cookie_carries_the_token_and_a_websocket_its_upgrade() -> None:
    request = make_mocked_request(
        "GET",
        "/user/s1/api/kernels/k/channels",
        headers={"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Key": "k=="},
    )
    request[COOKIE_TOKEN] = "the-token"
    assert head_lines(request_head(request, ROUTE, upgrade=True)) == [
        b"GET /jupyter/user/s1/api/kernels/k/channels HTTP/1.1",
        b"Sec-WebSocket-Key: k==",
        b"Host: 10.0.0.5:8888",  # the browser sent none (HTTP/1.0)
        b"Authorization: token the-token",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
    ]


def test_the_browser_gets_the_answers_end_to_end_headers() -> None:
    headers = answer_headers(
        [
            (b"Content-Type", b"application/json"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Connection", b"close, X-Internal"),
            (b"X-Internal", b"1"),
            (b"Set-Cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
        ]
    )
    assert list(headers.items()) == [
        ("Content-Type", "application/json"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]


def test_a_websocket_answer_head_is_parsed_and_a_garbled_one_is_a_bad_gateway() -> None:
    status, reason, headers = parse_answer_head(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: abc=\r\n\r\n"
    )
    assert (status, reason, dict(headers)) == (
        101,
        "Switching Protocols",
        {"Sec-WebSocket-Accept": "abc="},
    )
    assert parse_answer_head(b"garbage\r\n\r\n")[:2] == (502, "Bad Gateway")
