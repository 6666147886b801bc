"""Small answers the proxy sends in one piece must reach the browser exactly as the session sent
them: encoded bytes untouched, no body for HEAD/204/304, and the token cookie on the first one."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from bindery.events import PodStopped, StopReason
from bindery.gateway.routes import RouteTable
from tests.unit.gateway.fakes import S1_TOKEN, Harness

# Every test here runs through both lanes of the gateway (conftest.py).
BOTH_LANES = True

NOTEBOOK = gzip.compress(b'{"cells": []}' * 100)


def session_app() -> web.Application:
    async def notebook(request: web.Request) -> web.Response:
        return web.Response(
            body=NOTEBOOK,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    async def unchanged(_request: web.Request) -> web.Response:
        return web.Response(status=304, headers={"ETag": '"v1"'})

    app = web.Application()
    app.router.add_route("*", "/user/s1/files/nb.ipynb", notebook)
    app.router.add_get("/user/s1/unchanged", unchanged)
    return app


@pytest.fixture
async def session() -> AsyncIterator[TestServer]:
    server = TestServer(session_app())
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


async def test_small_encoded_body_passes_byte_for_byte(
    harness: Harness, session: TestServer
) -> None:
    harness.gateway.routes.add("s1", str(session.make_url("")), "l" * 32)
    resp = await harness.client.get(
        "/user/s1/files/nb.ipynb", params={"token": S1_TOKEN}, auto_decompress=False
    )
    assert resp.status == 200
    assert resp.headers["Content-Encoding"] == "gzip"
    assert resp.headers["Content-Length"] == str(len(NOTEBOOK))
    assert await resp.read() == NOTEBOOK
    assert "bindery-session-token" in resp.cookies


async def test_head_and_not_modified_carry_no_body(harness: Harness, session: TestServer) -> None:
    harness.gateway.routes.add("s1", str(session.make_url("")), "l" * 32)
    auth = {"Authorization": f"token {S1_TOKEN}"}
    head = await harness.client.head("/user/s1/files/nb.ipynb", headers=auth)
    assert head.status == 200
    assert head.headers["Content-Length"] == str(len(NOTEBOOK))
    assert await head.read() == b""
    unchanged = await harness.client.get("/user/s1/unchanged", headers=auth)
    assert unchanged.status == 304
    assert unchanged.headers["ETag"] == '"v1"'
    assert await unchanged.read() == b""


async def test_session_root_without_slash_redirects_into_it(
    harness: Harness, session: TestServer
) -> None:
    harness.gateway.routes.add("s1", str(session.make_url("")), "l" * 32)
    resp = await harness.client.get(f"/user/s1?token={S1_TOKEN}", allow_redirects=False)
    assert resp.status == 302
    assert resp.headers["Location"] == f"/user/s1/?token={S1_TOKEN}"


async def test_a_request_right_after_a_restart_waits_for_the_rebuilt_routes() -> None:
    """Sessions outlive a gateway restart: until their routes are back, unknown is not 404."""
    routes = RouteTable()
    lookup = asyncio.create_task(routes.find("survivor", wait=5))
    await asyncio.sleep(0)
    assert not lookup.done()
    routes.add("survivor", "http://127.0.0.1:1", "launch")
    routes.rebuilt.set()
    route = await asyncio.wait_for(lookup, 1)
    assert route is not None and route.target == "http://127.0.0.1:1"
    assert await routes.find("never-existed", wait=5) is None, "after the rebuild: no waiting"


async def test_a_stopped_sessions_address_says_why_it_stopped(
    harness: Harness, session: TestServer
) -> None:
    harness.gateway.routes.add("s1", str(session.make_url("")), "l" * 32)
    await harness.handlers.on_event(
        PodStopped(launch_id="l" * 32, session="s1", reason=StopReason.DISK)
    )
    resp = await harness.client.get(f"/user/s1/lab?token={S1_TOKEN}")
    assert resp.status == 404
    answer = await resp.json()
    assert answer["stopped"] == "disk"
    assert "wrote more to its disk than a session may" in answer["message"]
    assert "launch the repository again" in answer["message"]

    never = await (await harness.client.get("/user/never-was/")).json()
    assert never["stopped"] is None and "may have stopped or never existed" in never["message"]
