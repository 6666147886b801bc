"""Fair sharing and slow clients, end to end: the gateway's app served the way `python -m
bindery.gateway` serves it (fastlane.serve) on loopback, in front of real HTTP servers
standing in for sessions. Clients are told apart by X-Forwarded-For from a trusted proxy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bindery.gateway import fastlane
from bindery.gateway.app import create_app
from bindery.gateway.deps import Gateway
from bindery.tokens import session_token
from tests.support.eventually import eventually
from tests.support.fakebus import FakeBus
from tests.unit.gateway.fakes import SECRET, settings

SESSIONS = ("hog", "victim", "third")


def auth(session: str, client: str) -> dict[str, str]:
    return {
        "Authorization": f"token {session_token(SECRET, session)}",
        "X-Forwarded-For": client,
    }


@dataclass
class Sessions:
    """The stand-in Jupyter servers' side: what they were asked, and a gate for held requests."""

    held: asyncio.Queue[str] = field(default_factory=asyncio.Queue)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    def app(self) -> web.Application:
        async def status(request: web.Request) -> web.Response:
            return web.json_response({"session": request.match_info["session"]})

        async def hold(request: web.Request) -> web.Response:
            """A long poll: answers only once the test releases it."""
            await self.held.put(request.match_info["session"])
            await self.release.wait()
            return web.json_response({"released": True})

        async def trickle(request: web.Request) -> web.StreamResponse:
            """An event stream: a line every 0.1 s, never quiet for long."""
            response = web.StreamResponse()
            await response.prepare(request)
            for i in range(int(request.query["lines"])):
                await asyncio.sleep(0.1)
                await response.write(b"line %d\n" % i)
            await response.write_eof()
            return response

        async def upload(request: web.Request) -> web.Response:
            return web.json_response({"length": len(await request.read())})

        async def ws(request: web.Request) -> web.WebSocketResponse:
            # heartbeat: the session pings, as Jupyter does its kernel websockets.
            heartbeat = float(request.query["ping"]) if "ping" in request.query else None
            sock = web.WebSocketResponse(heartbeat=heartbeat)
            await sock.prepare(request)
            async for msg in sock:
                if msg.type == aiohttp.WSMsgType.TEXT:
                    await sock.send_str(msg.data)
            return sock

        app = web.Application()
        app.router.add_get("/user/{session}/api/status", status)
        app.router.add_get("/user/{session}/hold", hold)
        app.router.add_get("/user/{session}/trickle", trickle)
        app.router.add_post("/user/{session}/upload", upload)
        app.router.add_get("/user/{session}/ws", ws)
        return app


@dataclass
class Served:
    url: str
    port: int
    sessions: Sessions
    http: aiohttp.ClientSession


LIMITS: dict[str, Any] = {
    "proxy_session_connections": 2,
    "proxy_session_requests": 4,
    "proxy_client_websockets": 2,
    "proxy_queue_wait": 0.2,
    "client_header_timeout": 0.5,
    "client_body_timeout": 0.5,
    "proxy_idle_timeout": 0.5,
    "trusted_proxies": "127.0.0.1/32",
}


@pytest.fixture
async def gw(request: pytest.FixtureRequest) -> AsyncIterator[Served]:
    """The gateway with LIMITS, and what a test's `indirect` parameter changes of them."""
    sessions = Sessions()
    upstream = TestServer(sessions.app())
    await upstream.start_server()
    gateway = Gateway.create(settings(**LIMITS | getattr(request, "param", {})), FakeBus())
    for name in SESSIONS:
        gateway.routes.add(name, str(upstream.make_url("")), "l" * 32)
    served = await fastlane.serve(create_app(gateway), gateway.settings, "127.0.0.1", 0)
    port = served.port
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession(url) as http:
            yield Served(url, port, sessions, http)
    finally:
        sessions.release.set()
        await served.close()
        await upstream.close()


async def hold(gw: Served, session: str, client: str) -> asyncio.Task[int]:
    """Start a long poll and return once the session has it."""

    async def request() -> int:
        async with gw.http.get(f"/user/{session}/hold", headers=auth(session, client)) as resp:
            await resp.read()
            return resp.status

    task = asyncio.create_task(request())
    assert await asyncio.wait_for(gw.sessions.held.get(), 10) == session
    return task


async def test_a_session_holding_its_connections_gets_503_while_another_is_served(
    gw: Served,
) -> None:
    held = [await hold(gw, "hog", "203.0.113.1") for _ in range(2)]
    async with gw.http.get("/user/hog/api/status", headers=auth("hog", "203.0.113.1")) as resp:
        assert resp.status == 503
        message = (await resp.json())["message"]
    assert "This session holds 2 connections" in message
    # Another session (even from the hog's own client) is served as if nothing happened.
    for client in ("198.51.100.7", "203.0.113.1"):
        for _ in range(5):
            async with gw.http.get("/user/victim/api/status", headers=auth("victim", client)) as r:
                assert (r.status, await r.json()) == (200, {"session": "victim"})
    gw.sessions.release.set()
    assert await asyncio.gather(*held) == [200, 200]
    async with gw.http.get("/user/hog/api/status", headers=auth("hog", "203.0.113.1")) as resp:
        assert resp.status == 200  # its share came back with the answers


async def test_a_client_s_websockets_are_capped_and_other_clients_are_not(gw: Served) -> None:
    hog = "203.0.113.1"
    # Two sessions, so the cap met is the client's, not a session's.
    open_ = [
        await gw.http.ws_connect("/user/hog/ws", headers=auth("hog", hog)),
        await gw.http.ws_connect("/user/third/ws", headers=auth("third", hog)),
    ]
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await gw.http.ws_connect("/user/victim/ws", headers=auth("victim", hog))
    assert refused.value.status == 503
    upgrade = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
    }
    async with gw.http.get("/user/victim/ws", headers=auth("victim", hog) | upgrade) as resp:
        assert resp.status == 503
        assert "has 2 websockets open" in (await resp.json())["message"]
    other = await gw.http.ws_connect("/user/victim/ws", headers=auth("victim", "198.51.100.7"))
    await other.send_str("hi")
    assert (await other.receive(timeout=10)).data == "hi"
    await open_[0].close()
    again = await gw.http.ws_connect("/user/victim/ws", headers=auth("victim", hog))
    for sock in (open_[1], other, again):
        await sock.close()


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    received = b""
    while chunk := await reader.read(65536):
        received += chunk
    return received


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """One answer with a Content-Length: its head and its body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(head.lower().partition(b"content-length: ")[2].partition(b"\r\n")[0])
    return head, await asyncio.wait_for(reader.readexactly(length), 10)


@pytest.mark.parametrize("kept_alive", [False, True])
async def test_a_slowloris_connection_is_closed_after_the_header_timeout(
    gw: Served, kept_alive: bool
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    token = session_token(SECRET, "victim")
    head = f"GET /user/victim/api/status HTTP/1.1\r\nHost: x\r\nAuthorization: token {token}\r\n"
    if kept_alive:  # one quick request first: the second head's deadline counts as well
        writer.write(head.encode() + b"\r\n")
        assert (await read_answer(reader))[0].startswith(b"HTTP/1.1 200")

    async def trickle() -> None:
        """A valid head that never ends: one byte of a header's value every 0.05 s."""
        writer.write(head.encode() + b"X-Slow: ")
        while True:
            await asyncio.sleep(0.05)
            writer.write(b"a")

    sender = asyncio.create_task(trickle())
    try:
        received = await asyncio.wait_for(read_until_closed(reader), 10)
    finally:
        sender.cancel()
        writer.close()
    assert received == b""  # closed without an answer
    # A client that sends its head at once is served as before.
    async with gw.http.get("/user/victim/api/status", headers=auth("victim", "x")) as resp:
        assert resp.status == 200


async def test_a_stalled_request_body_gets_408(gw: Served) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", gw.port)
    token = session_token(SECRET, "victim")
    writer.write(
        f"POST /user/victim/upload HTTP/1.1\r\nHost: x\r\nAuthorization: token {token}\r\n"
        "Content-Length: 100\r\n\r\nonly ten b".encode()
    )
    head, body = await read_answer(reader)
    writer.close()
    assert head.startswith(b"HTTP/1.1 408")
    assert b"Connection: close" in head
    assert b"no byte of the request's body came for 0.5 s" in body


# A longer idle timeout than the others' 0.5 s: on a loaded machine a 0.1 s step of the loop
# below can take much longer, and only a gap longer than the timeout would close the socket.
@pytest.mark.parametrize("gw", [{"proxy_idle_timeout": 2.0}], indirect=True)
async def test_websockets_carrying_frames_stay_open_beyond_the_idle_timeout(
    gw: Served,
) -> None:
    headers = auth("victim", "198.51.100.7")
    quiet = await gw.http.ws_connect("/user/victim/ws", headers=headers)
    # The session's own pings, every 0.1 s, are all that goes by on this one.
    pinged = await gw.http.ws_connect("/user/victim/ws?ping=0.1", headers=headers)
    # A browser answers pings as they come; aiohttp's client does while something reads.
    pinged_reads = asyncio.create_task(pinged.receive())
    message = await quiet.receive(timeout=10)  # nothing goes by: closed for being idle
    assert (message.type, quiet.close_code) == (aiohttp.WSMsgType.CLOSE, 1001)
    talking = await gw.http.ws_connect("/user/victim/ws", headers=headers)
    for i in range(30):  # 3 s: one and a half idle timeouts
        await talking.send_str(f"message {i}")
        assert (await talking.receive(timeout=10)).data == f"message {i}"
        await asyncio.sleep(0.1)
    assert not pinged.closed
    await pinged.send_str("still there")
    assert (await asyncio.wait_for(pinged_reads, 10)).data == "still there"
    assert not talking.closed
    for sock in (talking, pinged):
        await sock.close()


async def test_an_http_request_is_closed_only_when_nothing_moves(gw: Served) -> None:
    headers = auth("victim", "198.51.100.7")
    # An event stream quiet for less than the idle timeout between lines, 1.5 s in all.
    async with gw.http.get("/user/victim/trickle?lines=15", headers=headers) as resp:
        assert resp.status == 200
        assert (await resp.read()).count(b"\n") == 15
    # A request the session never answers.
    async with gw.http.get("/user/victim/hold", headers=headers) as resp:
        assert resp.status == 504
        assert "sent nothing for 0.5 s" in (await resp.json())["message"]


# Idle requests are closed after 60 s here: only the client's leaving can end these in time.
@pytest.mark.parametrize("gw", [{"proxy_idle_timeout": 60}], indirect=True)
async def test_a_long_poll_whose_client_left_gives_its_connection_back(gw: Served) -> None:
    hog = "203.0.113.1"
    held = [await hold(gw, "hog", hog) for _ in range(2)]
    async with gw.http.get("/user/hog/api/status", headers=auth("hog", hog)) as resp:
        assert resp.status == 503
    for task in held:  # the browser goes away; the session never answers
        task.cancel()
    await asyncio.gather(*held, return_exceptions=True)

    async def served() -> bool:
        async with gw.http.get("/user/hog/api/status", headers=auth("hog", hog)) as resp:
            assert resp.status in (200, 503)
            return resp.status == 200

    await eventually(served, within=10, every=0, what="the hog's session served again")
