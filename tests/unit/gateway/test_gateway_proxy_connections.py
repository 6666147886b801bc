"""How the proxy holds its connections: kept-alive HTTP connections to a session (reused, and
replaced when the session drops them), request and answer bodies of every framing, and
websockets spliced as bytes (large messages, the session vanishing, the gateway stopping)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bindery.gateway.keys import PROXY
from bindery.gateway.splice import FrameEdges
from tests.unit.gateway.fakes import S1_TOKEN, Harness

# Every test here runs through both lanes of the gateway (conftest.py).
BOTH_LANES = True

AUTH = {"Authorization": f"token {S1_TOKEN}"}
BIG = random.Random(7).randbytes(1 << 20)


def session_app() -> web.Application:
    async def peer(request: web.Request) -> web.Response:
        """Which connection of the gateway's this came on."""
        assert request.transport is not None
        return web.json_response({"port": request.transport.get_extra_info("peername")[1]})

    async def upload(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({"length": len(body), "same": body == BIG})

    async def big(_request: web.Request) -> web.Response:
        return web.Response(body=BIG, content_type="application/octet-stream")

    async def ws(request: web.Request) -> web.StreamResponse:
        if "refuse" in request.query:
            return web.json_response({"message": "bad origin"}, status=403)
        sock = web.WebSocketResponse(max_msg_size=0)
        await sock.prepare(request)
        async for msg in sock:
            if msg.type == aiohttp.WSMsgType.TEXT and msg.data == "vanish":
                assert request.transport is not None
                request.transport.abort()  # no close frame: the kernel died with its server
                break
            if msg.type == aiohttp.WSMsgType.BINARY:
                await sock.send_bytes(msg.data)
        return sock

    app = web.Application(client_max_size=4 << 20)
    app.router.add_get("/user/s1/peer", peer)
    app.router.add_post("/user/s1/upload", upload)
    app.router.add_get("/user/s1/big", big)
    app.router.add_get("/user/s1/ws", ws)
    return app


@pytest.fixture
async def session(harness: Harness) -> AsyncIterator[TestServer]:
    server = TestServer(session_app())
    await server.start_server()
    harness.gateway.routes.add("s1", str(server.make_url("")), "l" * 32)
    try:
        yield server
    finally:
        await server.close()


async def test_answers_come_over_one_kept_alive_connection(
    harness: Harness, session: TestServer
) -> None:
    ports = set()
    for _ in range(5):
        resp = await harness.client.get("/user/s1/peer", headers=AUTH)
        assert resp.status == 200
        ports.add((await resp.json())["port"])
    assert len(ports) == 1


async def test_a_session_dropping_kept_connections_causes_no_error(harness: Harness) -> None:
    """A kept connection the session closes just as the next request arrives (its idle
    timeout firing): the request is sent again on a new connection, the browser sees no error."""

    async def answer_once_then_hang_up(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # the next request: hang up without an answer
        writer.close()

    server = await asyncio.start_server(answer_once_then_hang_up, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    harness.gateway.routes.add("s1", f"http://127.0.0.1:{port}", "l" * 32)
    async with server:
        for _ in range(5):
            resp = await harness.client.get("/user/s1/api/status", headers=AUTH)
            assert (resp.status, await resp.read()) == (200, b"ok")


async def test_an_answer_ended_by_closing_the_connection_arrives_whole(
    harness: Harness,
) -> None:
    async def answer_until_close(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
        for part in (b"no ", b"length, ", b"just the end"):
            writer.write(part)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer_until_close, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    harness.gateway.routes.add("s1", f"http://127.0.0.1:{port}", "l" * 32)
    async with server:
        for _ in range(2):
            resp = await harness.client.get("/user/s1/api/status", headers=AUTH)
            assert (resp.status, await resp.read()) == (200, b"no length, just the end")


@pytest.mark.parametrize("framing", ["length", "chunked"])
async def test_large_uploads_reach_the_session_whole(
    harness: Harness, session: TestServer, framing: str
) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(BIG), 100_000):
            yield BIG[start : start + 100_000]

    data = BIG if framing == "length" else chunks()
    resp = await harness.client.post("/user/s1/upload", headers=AUTH, data=data)
    assert resp.status == 200
    assert await resp.json() == {"length": len(BIG), "same": True}


async def test_a_large_answer_keeps_its_length_and_bytes(
    harness: Harness, session: TestServer
) -> None:
    resp = await harness.client.get("/user/s1/big", headers=AUTH)
    assert resp.status == 200
    assert resp.headers["Content-Length"] == str(len(BIG))
    assert "Transfer-Encoding" not in resp.headers
    assert await resp.read() == BIG


async def test_large_websocket_messages_pass_both_ways(
    harness: Harness, session: TestServer
) -> None:
    ws = await harness.client.ws_connect("/user/s1/ws", headers=AUTH, max_msg_size=0)
    for size in (1, 125, 126, 65535, 65536, len(BIG)):
        await ws.send_bytes(BIG[:size])
        assert (await ws.receive(timeout=10)).data == BIG[:size]
    await ws.close()
    assert ws.close_code == 1000


async def test_a_websocket_the_session_refuses_gets_its_status(
    harness: Harness, session: TestServer
) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await harness.client.ws_connect("/user/s1/ws?refuse=1", headers=AUTH)
    assert refused.value.status == 403


async def test_a_vanished_session_closes_the_browser_websocket_with_1011(
    harness: Harness, session: TestServer
) -> None:
    ws = await harness.client.ws_connect("/user/s1/ws", headers=AUTH)
    await ws.send_str("vanish")
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1011


async def test_a_stopping_gateway_says_1001_to_websockets(
    harness: Harness, session: TestServer
) -> None:
    ws = await harness.client.ws_connect("/user/s1/ws", headers=AUTH)
    await ws.send_bytes(b"x")
    assert (await ws.receive(timeout=5)).data == b"x"
    await harness.client.app[PROXY].close()
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 1001


def frame(opcode: int, payload: bytes, mask: bool) -> bytes:
    size = len(payload)
    if size < 126:
        length = bytes((size,))
    elif size < 1 << 16:
        length = bytes((126,)) + size.to_bytes(2, "big")
    else:
        length = bytes((127,)) + size.to_bytes(8, "big")
    if mask:
        return bytes((0x80 | opcode, 0x80 | length[0])) + length[1:] + b"\0\0\0\0" + payload
    return bytes((0x80 | opcode,)) + length + payload


@pytest.mark.parametrize("mask", [False, True])
def test_frame_edges_follow_frames_split_anywhere(mask: bool) -> None:
    frames = [frame(2, b"a" * size, mask) for size in (0, 5, 125, 126, 300, 70_000)]
    stream = b"".join(frames)
    boundaries = {sum(len(f) for f in frames[:n]) for n in range(len(frames) + 1)}
    cut = random.Random(3)
    edges = FrameEdges()
    pos = 0
    while pos < len(stream):
        step = cut.choice((1, 2, 3, 7, 500, 9000))
        edges.feed(stream[pos : pos + step])
        pos = min(pos + step, len(stream))
        assert edges.between_frames == (pos in boundaries), pos
    assert edges.between_frames and not edges.closing
    edges.feed(frame(2, b"half", mask)[:3])
    assert not edges.between_frames
    edges.feed(frame(2, b"half", mask)[3:] + frame(8, b"\x03\xe8", mask))
    assert edges.between_frames and edges.closing
