"""The gateway's connections as browsers use them (fastlane.py): plain reads of a session and
everything else on one kept-alive connection, pipelined heads, answers of every framing, and
what a session's reads get when the session, the network or the connection misbehaves. Raw
sockets, so the test sees the bytes and the connection as a browser would."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httptools
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bindery.gateway import fastlane
from bindery.gateway.app import create_app
from bindery.gateway.deps import Gateway
from bindery.gateway.sessionauth import TOKEN_COOKIE
from tests.support.fakebus import FakeBus
from tests.unit.gateway.fakes import S1_TOKEN, settings

BIG = bytes(range(256)) * 2048  # 512 KiB: over the buffered limit, streamed
COOKIE = f"{TOKEN_COOKIE}={S1_TOKEN}"


def session_app() -> web.Application:
    """A stand-in Jupyter: answers that say what it was asked, in every framing."""

    async def echo(request: web.Request) -> web.Response:
        return web.json_response(
            {"path": request.path_qs, "authorization": request.headers.get("Authorization")},
            headers={"Set-Cookie": "_xsrf=1; Domain=example.org; Path=/"},
        )

    async def chunked(request: web.Request) -> web.StreamResponse:
        size = int(request.query["size"])
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, size, 64 * 1024):
            await response.write(BIG[start : min(size, start + 64 * 1024)])
        await response.write_eof()
        return response

    async def big(_request: web.Request) -> web.Response:
        return web.Response(body=BIG)

    async def hold(_request: web.Request) -> web.Response:
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")

    app = web.Application()
    app.router.add_get("/user/s1/echo", echo)
    app.router.add_get("/user/s1/chunked", chunked)
    app.router.add_get("/user/s1/big", big)
    app.router.add_get("/user/s1/hold", hold)
    return app


class Browser:
    """One kept-alive connection: requests written raw, answers parsed by llhttp."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self._answers: list[tuple[int, dict[str, str], bytes]] = []
        self._parser = httptools.HttpResponseParser(self)
        self._headers: dict[str, str] = {}
        self._body = b""
        self.head_only = False

    def send(
        self, *paths: str, headers: str = f"Cookie: {COOKIE}\r\n", method: str = "GET"
    ) -> None:
        self.writer.write(
            b"".join(
                f"{method} {path} HTTP/1.1\r\nHost: gw.example:8585\r\n{headers}\r\n".encode()
                for path in paths
            )
        )

    async def answers(self, count: int) -> list[tuple[int, dict[str, str], bytes]]:
        while len(self._answers) < count:
            data = await asyncio.wait_for(self.reader.read(65536), 10)
            if not data:
                raise ConnectionError("the gateway closed the connection")
            self._parser.feed_data(data)
        done, self._answers = self._answers[:count], self._answers[count:]
        return done

    async def get(self, path: str, **kw: str) -> tuple[int, dict[str, str], bytes]:
        self.send(path, **kw)
        return (await self.answers(1))[0]

    def on_header(self, name: bytes, value: bytes) -> None:
        """Repeated headers (Set-Cookie) joined by newlines."""
        key = name.decode().lower()
        self._headers[key] = "\n".join(filter(None, [self._headers.get(key), value.decode()]))

    def on_body(self, body: bytes) -> None:
        self._body += body

    def on_message_complete(self) -> None:
        self._answers.append((self._parser.get_status_code(), self._headers, self._body))
        self._headers, self._body = {}, b""


@pytest.fixture
async def gateway(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Gateway, TestServer, int]]:
    """The gateway in front of one session, s1; a test's `indirect` parameter changes settings."""
    session = TestServer(session_app())
    await session.start_server()
    gw = Gateway.create(
        settings(
            banned_networks="203.0.113.0/24",
            trusted_proxies="127.0.0.1/32",
            client_keepalive_timeout=1,
            **getattr(request, "param", {}),
        ),
        FakeBus(),
    )
    gw.routes.add("s1", str(session.make_url("")), "l" * 32)
    served = await fastlane.serve(create_app(gw), gw.settings, "127.0.0.1", 0)
    try:
        yield gw, session, served.port
    finally:
        await served.close()
        await session.close()


async def connect(port: int) -> Browser:
    return Browser(*await asyncio.open_connection("127.0.0.1", port))


async def test_reads_and_gateway_pages_share_one_connection(
    gateway: tuple[Gateway, TestServer, int],
) -> None:
    browser = await connect(gateway[2])
    status, headers, body = await browser.get("/user/s1/echo?x=1")
    assert status == 200
    assert json.loads(body) == {
        "path": "/user/s1/echo?x=1",
        "authorization": f"token {S1_TOKEN}",  # let in by the cookie: the token goes on
    }
    assert headers["set-cookie"] == "_xsrf=1; Path=/user/s1/", "confined to the session"
    status, _, body = await browser.get("/health")  # the gateway's own: aiohttp from here on
    assert status == 200 and json.loads(body)["ok"] is True
    status, _, body = await browser.get("/user/s1/echo")
    assert status == 200 and json.loads(body)["path"] == "/user/s1/echo"


async def test_pipelined_heads_are_answered_in_order(
    gateway: tuple[Gateway, TestServer, int],
) -> None:
    browser = await connect(gateway[2])
    browser.send("/user/s1/echo?n=1", "/user/s1/big", "/user/s1/echo?n=3", "/versions")
    answers = await browser.answers(4)
    assert [status for status, _, _ in answers] == [200, 200, 200, 200]
    assert json.loads(answers[0][2])["path"] == "/user/s1/echo?n=1"
    assert answers[1][2] == BIG
    assert json.loads(answers[2][2])["path"] == "/user/s1/echo?n=3"
    assert "bindery" in json.loads(answers[3][2])


@pytest.mark.parametrize("size", [1000, len(BIG)])
async def test_an_answer_without_a_length_arrives_whole(
    gateway: tuple[Gateway, TestServer, int], size: int
) -> None:
    browser = await connect(gateway[2])
    status, headers, body = await browser.get(f"/user/s1/chunked?size={size}")
    assert status == 200 and body == BIG[:size]
    if size == 1000:  # in by the time its head was: sent with its length
        assert headers["content-length"] == "1000"
    else:
        assert headers["transfer-encoding"] == "chunked"
    status, _, _ = await browser.get("/user/s1/echo")
    assert status == 200, "the connection is still good for the next request"


async def test_a_token_in_authorization_earns_the_cookie(
    gateway: tuple[Gateway, TestServer, int],
) -> None:
    browser = await connect(gateway[2])
    status, headers, body = await browser.get(
        "/user/s1/echo", headers=f"Authorization: token {S1_TOKEN}\r\n"
    )
    assert status == 200 and json.loads(body)["authorization"] == f"token {S1_TOKEN}"
    assert f"{COOKIE}; HttpOnly; Path=/user/s1/; SameSite=Lax" in headers["set-cookie"].split("\n")


@pytest.mark.parametrize(
    ("headers", "status", "says"),
    [
        ("", 403, "needs its token"),
        (f"Cookie: {TOKEN_COOKIE}=wrong\r\n", 403, "needs its token"),
        (f"Cookie: {COOKIE}\r\nOrigin: http://other.example\r\n", 403, "own pages"),
        (f"Cookie: {COOKIE}\r\nX-Forwarded-For: 203.0.113.9\r\n", 403, "banned"),
    ],
)
async def test_a_read_that_may_not_pass_is_refused_with_the_reason(
    gateway: tuple[Gateway, TestServer, int], headers: str, status: int, says: str
) -> None:
    browser = await connect(gateway[2])
    answer = await browser.get("/user/s1/echo", headers=headers)
    assert answer[0] == status and says in json.loads(answer[2])["message"]


async def test_a_read_of_a_session_that_stopped_answering_gets_502(
    gateway: tuple[Gateway, TestServer, int],
) -> None:
    _, session, port = gateway
    await session.close()
    browser = await connect(port)
    status, _, body = await browser.get("/user/s1/echo")
    assert status == 502 and "did not answer" in json.loads(body)["message"]


async def test_an_idle_kept_alive_connection_is_closed(
    gateway: tuple[Gateway, TestServer, int],
) -> None:
    gw, _, port = gateway
    browser = await connect(port)
    assert (await browser.get("/user/s1/echo"))[0] == 200
    async with asyncio.timeout(gw.settings.client_keepalive_timeout + 5):
        assert await browser.reader.read() == b"", "closed by the gateway"


@pytest.mark.parametrize("gateway", [{"proxy_idle_timeout": 0.5}], indirect=True)
async def test_a_session_that_never_answers_gets_504_and_the_connection_goes_on(
    gateway: tuple[Gateway, TestServer, int],
) -> None:
    browser = await connect(gateway[2])
    status, _, body = await browser.get("/user/s1/hold")
    assert status == 504 and "sent nothing for 0.5 s" in json.loads(body)["message"]
    assert (await browser.get("/user/s1/echo"))[0] == 200


@pytest.mark.parametrize("gateway", [{"proxy_session_requests": 1}], indirect=True)
async def test_requests_one_after_another_hold_one_share_at_a_time(
    gateway: tuple[Gateway, TestServer, int],
) -> None:
    """Pipelined on one connection, each request starts once the last one's answer went out
    and its share came back: a session's share of 1 refuses none of them."""
    browser = await connect(gateway[2])
    browser.send(*[f"/user/s1/echo?n={n}" for n in range(10)])
    assert [status for status, _, _ in await browser.answers(10)] == [200] * 10
