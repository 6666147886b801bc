"""Sessions on origins of their own, what a session may claim in path mode, and who gets a
session's credentials: the handoff code, the resume secret, cookies tossed by a sibling."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from multidict import CIMultiDict
from yarl import URL

from bindery.gateway.sessionauth import TOKEN_COOKIE, Credentials
from bindery.gateway.sessionurls import SessionUrls
from bindery.tokens import session_token
from tests.unit.gateway.fakes import GIT_SPEC, SECRET, Harness, full_launch, make_harness, parse_sse

# Every test here runs through both lanes of the gateway (conftest.py).
BOTH_LANES = True

SUBDOMAINS = SessionUrls("http://gw.example:8585", "gw.example:8585")
PATHS = SessionUrls("http://gw.example:8585")


def test_each_session_has_its_own_origin_in_subdomain_mode() -> None:
    assert SUBDOMAINS.url("s-1") == "http://s-1.gw.example:8585/user/s-1/"
    assert SUBDOMAINS.session_of_host("S-1.gw.example:8585") == "s-1"
    assert SUBDOMAINS.session_of_host("gw.example:8585") is None
    assert SUBDOMAINS.session_of_host("a.b.gw.example:8585") is None
    assert SUBDOMAINS.session_of_host("s-1.gw.example:9999") is None
    assert PATHS.url("s-1") == "http://gw.example:8585/user/s-1/"
    assert PATHS.session_of_host("s-1.gw.example:8585") is None


def confined(urls: SessionUrls, **headers: str | list[str]) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        for item in value if isinstance(value, list) else [value]:
            out.add(name.replace("_", "-"), item)
    urls.confine("s-1", out)
    return out


def test_path_mode_keeps_service_workers_and_cookies_inside_the_session() -> None:
    out = confined(
        PATHS,
        Service_Worker_Allowed="/",
        Set_Cookie=[
            "a=1; Path=/; Domain=gw.example",
            "b=2",
            "c=3; Path=/user/s-1/lab",
            "d=4; Path=/user/s-10",
        ],
    )
    assert out["Service-Worker-Allowed"] == "/user/s-1/"
    assert out.getall("Set-Cookie") == [
        "a=1; Path=/user/s-1/",
        "b=2; Path=/user/s-1/",
        "c=3; Path=/user/s-1/lab",
        "d=4; Path=/user/s-1/",
    ]


def test_subdomain_mode_drops_only_parent_domains() -> None:
    out = confined(
        SUBDOMAINS,
        Service_Worker_Allowed="/",
        Set_Cookie="a=1; Path=/; Domain=gw.example; HttpOnly",
    )
    assert out["Service-Worker-Allowed"] == "/", "the whole origin is the session's"
    assert out["Set-Cookie"] == "a=1; Path=/; HttpOnly"


def test_a_handoff_code_is_spent_on_first_use_and_bound_to_its_session() -> None:
    credentials = Credentials(SECRET)
    code = credentials.handoff("s-1")
    assert not credentials.redeem("s-2", code), "another session's code"
    assert credentials.redeem("s-1", code)
    assert not credentials.redeem("s-1", code), "spent"
    old = credentials.handoff("s-1", now=1_000.0)
    assert not credentials.redeem("s-1", old), "expired"
    forged = code.rsplit(".", 1)[0] + "." + "0" * 32
    assert not credentials.redeem("s-1", forged)


def test_the_resume_secret_belongs_to_one_launch() -> None:
    credentials = Credentials(SECRET)
    secret = credentials.resume_secret("aa" * 16)
    assert credentials.resumes("aa" * 16, secret)
    assert not credentials.resumes("bb" * 16, secret)
    assert not credentials.resumes("aa" * 16, "")


@pytest.fixture
async def subdomains(lane: str) -> AsyncIterator[Harness]:
    async for h in make_harness(lane, sessions_host="gw.example:8585"):
        yield h


async def launch(harness: Harness, query: str = "", **headers: str) -> list[dict[str, object]]:
    resp = await harness.client.get(
        URL(f"/build/git/{GIT_SPEC}{query}", encoded=True), headers=headers
    )
    assert resp.status == 200, await resp.text()
    return [data for _, data in parse_sse(await resp.text())]


async def test_only_the_launching_client_gets_the_token(harness: Harness) -> None:
    harness.bus.on_publish = full_launch(harness, session="s-1")
    resp = await harness.client.get(URL(f"/build/git/{GIT_SPEC}", encoded=True))
    events = parse_sse(await resp.text())
    first_id, ready = events[0][0], events[-1][1]
    assert ready["token"] == session_token(SECRET, "s-1") and ready["handoff"]
    assert first_id is not None
    launch_id, _, resume = first_id.split(":")

    # Someone who learnt the launch id (logs, the archive, a shared screen) sees progress only.
    stranger = [
        data
        for _, data in parse_sse(
            await (
                await harness.client.get(
                    URL(f"/build/git/{GIT_SPEC}", encoded=True),
                    headers={"Last-Event-ID": f"{launch_id}:0"},
                )
            ).text()
        )
    ]
    assert stranger[-1]["phase"] == "ready" and stranger[-1]["url"]
    assert "token" not in stranger[-1] and "handoff" not in stranger[-1]
    guessed = await launch(harness, f"?launch_id={launch_id}&after=0&resume={'0' * 32}")
    assert "token" not in guessed[-1]

    # The page that started it, reloaded, resumes with its secret and gets them again.
    again = await launch(harness, f"?launch_id={launch_id}&after=0&resume={resume}")
    assert again[-1]["token"] == session_token(SECRET, "s-1")
    assert len(harness.bus.published) == 1, "no resume started a second launch"


async def test_the_handoff_code_becomes_a_cookie_once(harness: Harness) -> None:
    harness.gateway.routes.add("s-1", "http://127.0.0.1:1", "l-1")
    code = harness.gateway.credentials.handoff("s-1")
    url = f"/user/s-1/.bindery/handoff?code={code}&next=lab%2Ftree%2Fx.ipynb"
    resp = await harness.client.get(url, allow_redirects=False)
    assert resp.status == 303
    assert resp.headers["Location"] == "/user/s-1/lab/tree/x.ipynb"
    assert resp.cookies[TOKEN_COOKIE].value == session_token(SECRET, "s-1")
    assert resp.cookies[TOKEN_COOKIE]["path"] == "/user/s-1/"
    again = await harness.client.get(url, allow_redirects=False)
    assert again.status == 403
    assert "used already or has expired" in (await again.json())["message"]
    hostile = await harness.client.get(
        f"/user/s-1/.bindery/handoff?code={harness.gateway.credentials.handoff('s-1')}"
        "&next=%2F%2Fevil.example%2F",
        allow_redirects=False,
    )
    assert hostile.headers["Location"] == "/user/s-1/lab", "next never leaves the session"


async def test_a_tossed_cookie_does_not_lock_the_owner_out(harness: Harness) -> None:
    harness.gateway.routes.add("s-1", "http://127.0.0.1:1", "l-1")
    token = session_token(SECRET, "s-1")
    resp = await harness.client.get(
        "/user/s-1/api", headers={"Cookie": f"{TOKEN_COOKIE}=tossed; {TOKEN_COOKIE}={token}"}
    )
    assert resp.status == 502, "past the token check (nothing listens upstream)"
    wrong = await harness.client.get("/user/s-1/api", headers={"Cookie": f"{TOKEN_COOKIE}=tossed"})
    assert wrong.status == 403


async def test_session_origins_serve_their_session_only(subdomains: Harness) -> None:
    subdomains.bus.on_publish = full_launch(subdomains, session="s-1")
    ready = (await launch(subdomains))[-1]
    assert ready["url"] == "http://s-1.gw.example:8585/user/s-1/"
    client = subdomains.client
    on_session = {"Host": "s-1.gw.example:8585"}
    home = await client.get("/", headers=on_session, allow_redirects=False)
    assert home.status == 302 and home.headers["Location"] == "/user/s-1/"
    for path in ("/build/git/x/HEAD", "/user/s-2/lab", "/static/launch.js", "/v2/gh/a/b/HEAD"):
        resp = await client.get(path, headers=on_session, allow_redirects=False)
        assert resp.status == 404, path
        assert "serves the session s-1 only" in (await resp.json())["message"]
    moved = await client.get("/user/s-1/lab?x=1", allow_redirects=False)
    assert moved.status == 307
    assert moved.headers["Location"] == "http://s-1.gw.example:8585/user/s-1/lab?x=1"
    assert (await client.get("/", allow_redirects=False)).status == 200, "the gateway's own pages"


async def test_other_origins_launch_only_when_allowed() -> None:
    async for h in make_harness(allowed_origins="https://thebe.example"):
        h.bus.on_publish = full_launch(h, session="s-1")
        allowed = await h.client.get(
            URL(f"/build/git/{GIT_SPEC}", encoded=True), headers={"Origin": "https://thebe.example"}
        )
        assert allowed.headers["Access-Control-Allow-Origin"] == "https://thebe.example"
        assert parse_sse(await allowed.text())[-1][1]["phase"] == "ready"
        refused = await h.client.get(
            URL(f"/build/git/{GIT_SPEC}", encoded=True), headers={"Origin": "https://evil.example"}
        )
        assert refused.status == 403
        assert (await refused.json())["reason"] == "origin_not_allowed"
        own = await launch(h, Origin="http://gw.example:8585")
        assert own[-1]["phase"] == "ready"
        assert len(h.bus.published) == 2, "the refused page started nothing"


async def test_the_cookie_counts_only_on_the_sessions_own_pages(harness: Harness) -> None:
    """Sibling session origins are same-site: their pages get the cookie sent along, and must
    not be able to use it (a terminal's websocket, a kernel's)."""
    harness.gateway.routes.add("s-1", "http://127.0.0.1:1", "l-1")
    cookie = {"Cookie": f"{TOKEN_COOKIE}={session_token(SECRET, 's-1')}"}
    host = harness.client.server.host, harness.client.server.port
    own = {**cookie, "Origin": f"http://{host[0]}:{host[1]}"}
    sibling = {**cookie, "Origin": "http://s-2.gw.example:8585"}
    assert (await harness.client.post("/user/s-1/api/terminals", headers=own)).status == 502
    refused = await harness.client.post("/user/s-1/api/terminals", headers=sibling)
    assert refused.status == 403
    assert "own pages" in (await refused.json())["message"]
    upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}
    socket = await harness.client.get(
        "/user/s-1/terminals/websocket/1",
        headers={**sibling, **upgrade, "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="},
    )
    assert socket.status == 403
    embedded = {
        "Origin": "https://thebe.example",
        "Authorization": f"token {session_token(SECRET, 's-1')}",
    }
    assert (await harness.client.post("/user/s-1/api/kernels", headers=embedded)).status == 502
