"""The gateway's HTTP side with a fake bus: /build, /health, pages, and the proxy."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from bindery.events import (
    BuildLog,
    Event,
    FailureReason,
    LaunchFailed,
    LaunchRequested,
    PodStopped,
    StopReason,
)
from bindery.gateway.health import registry_reachable
from bindery.tokens import session_token
from tests.support.launches import pod_ready
from tests.unit.gateway.fakes import (
    FULL_LAUNCH_PHASES,
    GIT_SPEC,
    S1_TOKEN,
    SECRET,
    Harness,
    full_launch,
    parse_sse,
    same_but_handoff,
)


async def test_build_streams_the_whole_launch(harness: Harness) -> None:
    harness.bus.on_publish = full_launch(harness)
    resp = await harness.client.get(URL(f"/build/git/{GIT_SPEC}?build_only=false", encoded=True))
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    events = parse_sse(await resp.text())

    [request] = harness.bus.published
    assert isinstance(request, LaunchRequested)
    assert (request.provider, request.spec, request.build_only) == ("git", GIT_SPEC, False)
    lid = request.launch_id

    phases = [data["phase"] for _, data in events]
    assert phases == FULL_LAUNCH_PHASES
    assert all(data["launch_id"] == lid for _, data in events)
    # Only the client that started the launch has its resume secret, in every event id.
    resume = harness.gateway.credentials.resume_secret(lid)
    assert [ident for ident, _ in events] == [f"{lid}:{i}:{resume}" for i in range(len(events))]
    assert "".join(d["message"] for _, d in events[3:6]) == "step 0\nstep 1\nstep 2\n"
    ready = events[-1][1]
    assert ready["url"] == "http://gw.example:8585/user/repo-abc/"
    assert ready["token"] == session_token(SECRET, "repo-abc")
    assert harness.gateway.credentials.redeem("repo-abc", ready["handoff"])
    assert ready["image"] == "img"
    assert ready["repo_url"] == "https://example.org/owner/repo.git"
    # pod-ready also added the route.
    route = harness.gateway.routes.get("repo-abc")
    assert route is not None and route.launch_id == lid


async def test_build_only_flag_is_passed(harness: Harness) -> None:
    async def fail_it(event: Event) -> None:
        await harness.handlers.on_event(
            LaunchFailed(
                launch_id=event.launch_id,
                service="resolver",
                reason=FailureReason.REF_NOT_FOUND,
                message="ref nope not found",
            )
        )

    harness.bus.on_publish = fail_it
    resp = await harness.client.get("/build/gh/owner/repo/nope?build_only=true")
    events = parse_sse(await resp.text())
    [request] = harness.bus.published
    assert isinstance(request, LaunchRequested) and request.build_only
    assert request.spec == "owner/repo/nope"
    assert [d["phase"] for _, d in events] == ["waiting", "failed"]
    assert events[-1][1]["message"] == "ref nope not found"
    assert events[-1][1]["reason"] == "ref_not_found"
    assert events[-1][1]["launch_id"] == request.launch_id


@pytest.mark.parametrize(
    "path",
    [
        "/build/svn/x/HEAD",
        "/build/git/",
        "/build/git/x%0Ay/HEAD",
        "/build/git/" + "a" * 5000,
    ],
)
async def test_malformed_build_path_is_400_without_launch(harness: Harness, path: str) -> None:
    resp = await harness.client.get(path)
    assert resp.status == 400
    body = await resp.json()
    assert isinstance(body["message"], str) and body["message"]
    assert "Traceback" not in body["message"]
    assert harness.bus.published == []


async def test_late_build_log_lines_come_before_failure(harness: Harness) -> None:
    """The builder's last lines travel on the logs channel and may arrive after launch-failed."""

    async def fail_then_log(event: Event) -> None:
        lid = event.launch_id
        await harness.handlers.on_log(BuildLog(launch_id=lid, image="i", message="step 1\n"))
        await harness.handlers.on_event(
            LaunchFailed(
                launch_id=lid, service="builder", reason=FailureReason.STEP_FAILED, message="x"
            )
        )
        await harness.handlers.on_log(BuildLog(launch_id=lid, image="i", message="error: y\n"))

    harness.bus.on_publish = fail_then_log
    events = parse_sse(await (await harness.client.get(f"/build/git/{GIT_SPEC}")).text())
    assert [d["message"] for _, d in events[1:]] == ["step 1\n", "error: y\n", "x"]
    assert events[-1][1]["phase"] == "failed"


async def test_keepalive_while_idle_then_failure_ends_stream(harness: Harness) -> None:
    resp = await harness.client.get(f"/build/git/{GIT_SPEC}")
    assert resp.status == 200
    seen = b""
    while b": keepalive\n\n" not in seen:
        seen += await asyncio.wait_for(resp.content.readany(), 5)
    [request] = harness.bus.published
    await harness.handlers.on_event(
        LaunchFailed(
            launch_id=request.launch_id, service="builder", reason=FailureReason.OOM, message="oom"
        )
    )
    rest = await asyncio.wait_for(resp.content.read(), 5)
    events = parse_sse((seen + rest).decode())
    assert [d["phase"] for _, d in events] == ["waiting", "failed"]


async def test_broker_down_is_a_failed_event(harness: Harness) -> None:
    harness.bus.fail = True
    events = parse_sse(await (await harness.client.get(f"/build/git/{GIT_SPEC}")).text())
    assert [d["phase"] for _, d in events] == ["waiting", "failed"]
    assert "broker" in events[-1][1]["message"]


async def test_a_request_waiting_for_the_broker_shows_waiting_and_goes_on_once_sent(
    harness: Harness,
) -> None:
    """Through a broker restart the request's publish waits (Bus.publish): the page watches
    `waiting` meanwhile, and the launch goes on once it is sent."""
    broker_back = asyncio.Event()
    answer = full_launch(harness)

    async def when_back(event: Event) -> None:
        await broker_back.wait()
        await answer(event)

    harness.bus.on_publish = when_back
    resp = await harness.client.get(f"/build/git/{GIT_SPEC}")
    first = await asyncio.wait_for(resp.content.readuntil(b"\n\n"), 5)
    assert parse_sse(first.decode())[0][1]["phase"] == "waiting"
    broker_back.set()
    events = parse_sse((first + await asyncio.wait_for(resp.content.read(), 5)).decode())
    assert events[-1][1]["phase"] == "ready"


async def test_reconnect_with_last_event_id_resumes_without_new_launch(harness: Harness) -> None:
    harness.bus.on_publish = full_launch(harness)
    first = parse_sse(await (await harness.client.get(f"/build/git/{GIT_SPEC}")).text())
    lid = first[0][1]["launch_id"]
    # What EventSource sends back: the id of the last event it saw, resume secret included.
    last_seen = first[3][0]
    assert last_seen is not None and last_seen.startswith(f"{lid}:3:")
    resp = await harness.client.get(f"/build/git/{GIT_SPEC}", headers={"Last-Event-ID": last_seen})
    again = parse_sse(await resp.text())
    assert len(harness.bus.published) == 1  # no second launch
    assert same_but_handoff(again, first[4:])

    # Another spec with that id: a new launch, nothing of the first one.
    resp = await harness.client.get("/build/gh/o/r/HEAD", headers={"Last-Event-ID": f"{lid}:3"})
    other = parse_sse(await resp.text())
    assert len(harness.bus.published) == 2
    assert other[0][1]["launch_id"] != lid


async def test_health(harness: Harness) -> None:
    def summary(body: dict[str, Any]) -> tuple[bool, bool, bool]:
        return body["ok"], body["broker"], body["registry"]

    resp = await harness.client.get("/health")
    assert (resp.status, summary(await resp.json())) == (200, (True, True, True))
    harness.registry_ok[0] = False
    resp = await harness.client.get("/health")
    assert (resp.status, summary(await resp.json())) == (503, (False, True, False))
    harness.bus.connected = False
    harness.registry_ok[0] = True
    resp = await harness.client.get("/health")
    assert (resp.status, summary(await resp.json())) == (503, (False, False, True))


async def test_registry_reachable() -> None:
    app = web.Application()

    async def v2(_: web.Request) -> web.Response:
        return web.json_response({})

    app.router.add_get("/v2/", v2)
    server = TestServer(app)
    await server.start_server()
    async with aiohttp.ClientSession() as client:
        assert await registry_reachable(client, str(server.make_url("")).rstrip("/"), 2.0)
        port = server.port
        await server.close()
        assert not await registry_reachable(client, f"http://127.0.0.1:{port}", 2.0)


async def test_pages(harness: Harness) -> None:
    resp = await harness.client.get("/")
    assert resp.status == 200 and "launch-form" in await resp.text()
    assert "script-src 'self'" in resp.headers["Content-Security-Policy"]
    resp = await harness.client.get(f"/v2/git/{GIT_SPEC}?urlpath=lab")
    assert resp.status == 200 and 'id="log"' in await resp.text()
    resp = await harness.client.get("/v2/svn%3Cscript%3E/x/HEAD")
    text = await resp.text()
    assert resp.status == 400 and "<script>" not in text
    resp = await harness.client.get("/static/urlpath.js")
    assert resp.status == 200 and "safeUrlpath" in await resp.text()
    resp = await harness.client.get(
        "/launch",
        params={"repo": "https://example.org/r.git", "ref": "", "path": "a.ipynb"},
        allow_redirects=False,
    )
    assert resp.status == 303
    assert resp.headers["Location"] == (
        "/v2/git/https%3A%2F%2Fexample.org%2Fr.git/HEAD?urlpath=lab%2Ftree%2Fa.ipynb"
    )
    assert harness.bus.published == []


# --- proxy -------------------------------------------------------------------------------


def upstream_app() -> web.Application:
    """Stands in for Jupyter under /user/s1/."""
    app = web.Application()

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        response = web.json_response(
            {
                "method": request.method,
                "raw_path": request.raw_path,
                "headers": {k: v for k, v in request.headers.items()},
                "body_length": len(body),
            }
        )
        response.headers.add("Set-Cookie", "a=1; Path=/user/s1/")
        response.headers.add("Set-Cookie", "b=2; Path=/user/s1/")
        return response

    async def big(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_type = "application/octet-stream"
        await response.prepare(request)
        for _ in range(64):
            await response.write(b"x" * 65536)
        return response

    async def ws(request: web.Request) -> web.WebSocketResponse:
        sock = web.WebSocketResponse(protocols=("v1.kernel.websocket.jupyter.org",))
        await sock.prepare(request)
        await sock.send_str(
            json.dumps(
                {
                    "origin": request.headers.get("Origin"),
                    "host": request.headers.get("Host"),
                    "auth": request.headers.get("Authorization"),
                }
            )
        )
        async for msg in sock:
            if msg.type == aiohttp.WSMsgType.TEXT:
                if msg.data == "close-me":
                    await sock.close(code=4001, message=b"bye")
                    break
                await sock.send_str("echo:" + msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await sock.send_bytes(b"echo:" + msg.data)
        return sock

    async def pinging(request: web.Request) -> web.WebSocketResponse:
        """Pings the browser as Jupyter Server does, says when the pong came back."""
        sock = web.WebSocketResponse(autoping=False)
        await sock.prepare(request)
        await sock.ping(b"jupyter")
        async for msg in sock:
            if msg.type == aiohttp.WSMsgType.PONG:
                await sock.send_str("pong-seen")
            elif msg.type == aiohttp.WSMsgType.PING:
                await sock.pong(msg.data)
            elif msg.type == aiohttp.WSMsgType.TEXT:
                await sock.send_str("echo:" + msg.data)
        return sock

    app.router.add_route("*", "/user/s1/api/{tail:.*}", echo)
    app.router.add_route("*", "/user/s1/lab/{tail:.*}", echo)
    app.router.add_get("/user/s1/big", big)
    app.router.add_get("/user/s1/ws", ws)
    app.router.add_get("/user/s1/pinging", pinging)
    return app


@pytest.fixture
async def upstream() -> AsyncIterator[TestServer]:
    server = TestServer(upstream_app())
    await server.start_server()
    try:
        yield server
    finally:
        await server.close()


async def test_proxy_http_keeps_path_query_host_and_auth(
    harness: Harness, upstream: TestServer
) -> None:
    target = str(upstream.make_url("")).rstrip("/")
    harness.gateway.routes.add("s1", target, "l" * 32)
    resp = await harness.client.post(
        f"/user/s1/api/contents/a%2Fb%20c.ipynb?token={S1_TOKEN}&x=1",
        data=b"y" * 100_000,
        headers={
            "Authorization": f"token {S1_TOKEN}",
            "Origin": "http://gw.example:8585",
            "Cookie": "_xsrf=1",
            "Proxy-Authorization": "secret",
        },
    )
    assert resp.status == 200
    seen = await resp.json()
    assert seen["method"] == "POST"
    assert seen["raw_path"] == f"/user/s1/api/contents/a%2Fb%20c.ipynb?token={S1_TOKEN}&x=1"
    assert seen["headers"]["Host"] == f"{harness.client.host}:{harness.client.port}"
    assert seen["headers"]["Authorization"] == f"token {S1_TOKEN}"
    assert seen["headers"]["Origin"] == "http://gw.example:8585"
    assert seen["headers"]["Cookie"] == "_xsrf=1"
    assert "Proxy-Authorization" not in seen["headers"]
    assert seen["body_length"] == 100_000
    assert resp.headers.getall("Set-Cookie")[:2] == ["a=1; Path=/user/s1/", "b=2; Path=/user/s1/"]
    route = harness.gateway.routes.get("s1")
    assert route is not None and route.last_activity > 0


async def test_proxy_never_keeps_cookies_between_clients(
    harness: Harness, upstream: TestServer
) -> None:
    """Set-Cookie from a session goes to the browser only: the proxy's pool has no jar."""
    harness.gateway.routes.add("s1", f"http://localhost:{upstream.port}", "l" * 32)
    resp = await harness.client.get("/user/s1/api/first", params={"token": S1_TOKEN})
    assert len(resp.headers.getall("Set-Cookie")) == 3  # the session's two and the gateway's
    url = harness.client.make_url("/user/s1/api/second")
    async with (
        aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as stranger,
        stranger.get(url, headers={"Authorization": f"token {S1_TOKEN}"}) as second,
    ):
        seen = await second.json()
    assert "Cookie" not in seen["headers"]


async def test_proxy_streams_large_bodies(harness: Harness, upstream: TestServer) -> None:
    harness.gateway.routes.add("s1", str(upstream.make_url("")), "l" * 32)
    resp = await harness.client.get("/user/s1/big", params={"token": S1_TOKEN})
    assert resp.status == 200
    total = 0
    async for chunk in resp.content.iter_any():
        total += len(chunk)
    assert total == 64 * 65536


async def test_proxy_websocket_both_ways_with_close_code(
    harness: Harness, upstream: TestServer
) -> None:
    harness.gateway.routes.add("s1", str(upstream.make_url("")), "l" * 32)
    route = harness.gateway.routes.get("s1")
    assert route is not None
    ws = await harness.client.ws_connect(
        f"/user/s1/ws?token={S1_TOKEN}",
        headers={"Origin": "http://gw.example:8585", "Authorization": f"token {S1_TOKEN}"},
        protocols=("v1.kernel.websocket.jupyter.org",),
    )
    assert ws.protocol == "v1.kernel.websocket.jupyter.org"
    hello = json.loads((await ws.receive(timeout=5)).data)
    assert hello == {
        "origin": "http://gw.example:8585",
        "host": f"{harness.client.host}:{harness.client.port}",
        "auth": f"token {S1_TOKEN}",
    }
    before = route.last_activity
    await ws.send_str("hi")
    assert (await ws.receive(timeout=5)).data == "echo:hi"
    await ws.send_bytes(b"\x00\x01")
    assert (await ws.receive(timeout=5)).data == b"echo:\x00\x01"
    assert route.last_activity > before == 0, "the handshake is not activity, messages are"
    await ws.send_str("close-me")
    msg = await ws.receive(timeout=5)
    assert msg.type == aiohttp.WSMsgType.CLOSE
    assert ws.close_code == 4001
    await ws.close()


async def test_pings_pongs_and_what_the_session_sends_are_not_activity(
    harness: Harness, upstream: TestServer
) -> None:
    """A tab left open answers Jupyter's pings every 30 s: that must not keep its session."""
    harness.gateway.routes.add("s1", str(upstream.make_url("")), "l" * 32)
    route = harness.gateway.routes.get("s1")
    assert route is not None
    ws = await harness.client.ws_connect(
        "/user/s1/pinging", headers={"Authorization": f"token {S1_TOKEN}"}, autoping=False
    )
    ping = await ws.receive(timeout=5)
    assert ping.type == aiohttp.WSMsgType.PING
    await ws.pong(ping.data)
    assert (await ws.receive(timeout=5)).data == "pong-seen"
    await ws.ping(b"browser")
    assert (await ws.receive(timeout=5)).type == aiohttp.WSMsgType.PONG
    assert route.last_activity == 0
    await ws.send_str("run this")
    assert (await ws.receive(timeout=5)).data == "echo:run this"
    assert route.last_activity > 0
    await ws.close()


@pytest.mark.parametrize(
    ("method", "path", "activity"),
    [
        ("GET", "lab/tree/index.ipynb", True),
        ("GET", "api/kernels", False),
        ("GET", "api/sessions", False),
        ("GET", "api/contents/notebooks?content=1", False),
        ("GET", "lab/api/settings", False),
        ("PUT", "api/contents/index.ipynb", True),
        ("POST", "api/kernels", True),
        ("DELETE", "api/kernels/k1", True),
        ("OPTIONS", "api/kernels", False),
    ],
)
async def test_requests_a_person_makes_are_activity_polling_is_not(
    harness: Harness, upstream: TestServer, method: str, path: str, activity: bool
) -> None:
    harness.gateway.routes.add("s1", str(upstream.make_url("")), "l" * 32)
    route = harness.gateway.routes.get("s1")
    assert route is not None
    resp = await harness.client.request(
        method, f"/user/s1/{path}", headers={"Authorization": f"token {S1_TOKEN}"}
    )
    assert resp.status == 200
    assert (route.last_activity > 0) is activity


async def test_unknown_session_is_404(harness: Harness) -> None:
    resp = await harness.client.get("/user/nobody/lab")
    assert resp.status == 404
    assert "nobody" in (await resp.json())["message"]


async def test_dead_session_is_502(harness: Harness, unused_tcp_port: int) -> None:
    harness.gateway.routes.add("s1", f"http://127.0.0.1:{unused_tcp_port}", "l" * 32)
    resp = await harness.client.get("/user/s1/api/status", params={"token": S1_TOKEN})
    assert resp.status == 502


async def test_routes_follow_pod_ready_and_pod_stopped(harness: Harness) -> None:
    lid = "d" * 32
    await harness.handlers.on_event(
        pod_ready(lid, session="s9", node="n", image="i", target="http://127.0.0.1:9")
    )
    assert "s9" in harness.gateway.routes
    await harness.handlers.on_event(PodStopped(launch_id=lid, session="s9", reason=StopReason.IDLE))
    assert "s9" not in harness.gateway.routes
