"""The gateway requires a session's token before proxying to it, then remembers it in a cookie
scoped to that session, so JupyterLab's own requests and websockets get through."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer, make_mocked_request

from bindery.gateway.sessionauth import (
    COOKIE_TOKEN,
    TOKEN_COOKIE,
    Credentials,
    admit,
    token_cookie,
)
from bindery.tokens import session_token
from tests.unit.gateway.fakes import S1_TOKEN, SECRET, Harness

# Every test here runs through both lanes of the gateway (conftest.py).
BOTH_LANES = True


@pytest.fixture
async def jupyter() -> AsyncIterator[TestServer]:
    app = web.Application()

    async def anything(request: web.Request) -> web.Response:
        return web.json_response({"path": request.path})

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse()
        await sock.prepare(request)
        await sock.send_str("hello")
        await sock.close()
        return sock

    app.router.add_get("/user/s1/ws", ws)
    app.router.add_route("*", "/user/s1/{tail:.*}", anything)
    server = TestServer(app)
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
def routed(harness: Harness, jupyter: TestServer) -> Harness:
    harness.gateway.routes.add("s1", str(jupyter.make_url("")).rstrip("/"), "l" * 32)
    return harness


@pytest.mark.parametrize(
    "headers, params",
    [
        ({}, {}),
        ({}, {"token": "wrong"}),
        ({"Authorization": "token wrong"}, {}),
        ({"Authorization": f"token {session_token(SECRET, 's2')}"}, {}),  # another session's
        ({"Cookie": f"{TOKEN_COOKIE}=wrong"}, {}),
    ],
)
async def test_requests_without_the_sessions_token_are_refused(
    routed: Harness, headers: dict[str, str], params: dict[str, str]
) -> None:
    resp = await routed.client.get("/user/s1/api/status", headers=headers, params=params)
    assert resp.status == 403
    assert "token" in (await resp.json())["message"]
    route = routed.gateway.routes.get("s1")
    assert route is not None and route.last_activity == 0, "refused requests are not activity"


@pytest.mark.parametrize("how", ["query", "token", "bearer"])
async def test_a_valid_token_earns_a_cookie_for_this_session_only(
    routed: Harness, how: str
) -> None:
    headers = {"Authorization": f"{how} {S1_TOKEN}"} if how != "query" else {}
    params = {"token": S1_TOKEN} if how == "query" else {}
    resp = await routed.client.get("/lab", headers=headers, params=params)
    assert resp.status == 404  # /lab is not a session path
    resp = await routed.client.get("/user/s1/lab", headers=headers, params=params)
    assert resp.status == 200
    cookie = resp.cookies[TOKEN_COOKIE]
    assert cookie.value == S1_TOKEN
    assert cookie["path"] == "/user/s1/"
    assert cookie["httponly"] and cookie["samesite"] == "Lax"

    # The browser's next requests carry only the cookie (the client's jar holds it).
    resp = await routed.client.get("/user/s1/api/contents")
    assert resp.status == 200
    assert TOKEN_COOKIE not in resp.cookies, "no new cookie when the cookie is what came"


async def test_websocket_needs_the_token_too(routed: Harness) -> None:
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await routed.client.ws_connect("/user/s1/ws")
    assert refused.value.status == 403
    ws = await routed.client.ws_connect(
        "/user/s1/ws", headers={"Cookie": f"{TOKEN_COOKIE}={S1_TOKEN}"}
    )
    assert (await ws.receive(timeout=5)).data == "hello"
    await ws.close()


def test_admit_lets_in_the_sessions_token_and_says_which_cookie_the_answer_sets() -> None:
    credentials = Credentials(SECRET)

    def request(headers: dict[str, str], query: str = "") -> web.Request:
        return make_mocked_request("GET", f"/user/s1/lab{query}", headers={"Host": "gw", **headers})

    assert admit(credentials, request({}), "s1", secure_cookie=False).refusal is not None
    wrong = request({"Authorization": f"token {S1_TOKEN}x"})
    assert admit(credentials, wrong, "s1", secure_cookie=False).refusal is not None

    by_query = admit(credentials, request({}, f"?token={S1_TOKEN}"), "s1", secure_cookie=True)
    assert by_query.refusal is None
    assert by_query.set_cookie == token_cookie("s1", S1_TOKEN, True)
    kept = request({"Authorization": f"token {S1_TOKEN}", "Cookie": f"{TOKEN_COOKIE}={S1_TOKEN}"})
    assert admit(credentials, kept, "s1", secure_cookie=False).set_cookie is None, "has it"

    own_page = request({"Cookie": f"{TOKEN_COOKIE}={S1_TOKEN}", "Origin": "http://gw"})
    admitted = admit(credentials, own_page, "s1", secure_cookie=False)
    assert (admitted.refusal, admitted.set_cookie) == (None, None)
    assert own_page[COOKIE_TOKEN] == S1_TOKEN, "passed on to Jupyter in Authorization"

    elsewhere = request({"Cookie": f"{TOKEN_COOKIE}={S1_TOKEN}", "Origin": "http://s2.gw"})
    refused = admit(credentials, elsewhere, "s1", secure_cookie=False).refusal
    assert refused is not None and refused.status == 403
    assert COOKIE_TOKEN not in elsewhere
