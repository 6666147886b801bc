"""One session's pages cannot reach another's, and other sites embed Bindery only on purpose:
headless Chromium against the started stack (issue 12).

A hostile repository runs, in place of Jupyter, a server whose page tosses cookies (for `/` and
for the parent domain) and registers a service worker over the whole site, reporting every
request it sees (tests/support/hostile). Then a victim session is opened in the same browser and
runs a cell. Both modes are tried: subdomain mode (the stack's default, as under `make up`) and
path mode, where the gateway's confinement of `Service-Worker-Allowed` and cookie paths is what
holds. A page on another origin starts a launch and runs code in its kernel, as Thebe does;
with origins restricted it gets neither a launch nor a token.
"""

from __future__ import annotations

import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, expect

from bindery.tokens import session_token
from tests.support.browser import chromium, run_first_cell, screenshot_path
from tests.support.gitrepo import make_repo, notebook
from tests.support.stack import Stack, build_path

HOSTILE = Path(__file__).parents[1] / "support/hostile"
PROBE = "print('victim', 6 * 7)"
EXPECTED = "victim 42"


@pytest.fixture(scope="module")
def hostile_repo(repos: Path) -> Path:
    path = repos / "hostile-origins"
    make_repo(
        path,
        {
            "start": (HOSTILE / "start").read_text(),
            "hostile.py": (HOSTILE / "hostile.py").read_text(),
        },
    )
    return path


@pytest.fixture(scope="module")
def victim_repo(repos: Path) -> Path:
    path = repos / "victim-origins"
    make_repo(path, {"index.ipynb": notebook(PROBE)})
    return path


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as browser:
        yield browser


def launch_page(stack: Stack, repo: Path, query: str = "") -> str:
    return f"{stack.gateway}/v2/git/{quote(f'file://{repo}', safe='')}/main{query}"


def session_of(url: str) -> str:
    return urlsplit(url).path.split("/")[2]


async def run_victim_cell(page: Page) -> None:
    """JupyterLab opens the notebook, its kernel comes up, the cell runs and prints."""
    await run_first_cell(page)
    await expect(page.locator(".jp-OutputArea-output").first).to_contain_text(
        EXPECTED, timeout=120_000
    )


async def attack(
    stack: Stack, http: aiohttp.ClientSession, browser: Browser, hostile: Path, victim: Path
) -> tuple[dict[str, str], str, str, str]:
    """Open the hostile session, then the victim's, in one browser; returns what the hostile
    page reported, everything its server saw (JSON), the victim's session and its URL."""
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(launch_page(stack, hostile))
        await page.wait_for_function(
            "() => document.body && document.body.dataset.done", timeout=600_000
        )
        report = json.loads(await page.evaluate("document.body.dataset.done"))
        hostile_url = page.url.split("?")[0]
        hostile_session = session_of(hostile_url)

        victim_page = await context.new_page()
        await victim_page.goto(launch_page(stack, victim, "?urlpath=lab/tree/index.ipynb"))
        await victim_page.wait_for_url(
            re.compile(r".*/user/[^/]+/lab/tree/index\.ipynb.*"), timeout=600_000
        )
        victim_url = victim_page.url
        victim_session = session_of(victim_url)
        try:
            await run_victim_cell(victim_page)
        except Exception:
            await victim_page.screenshot(path=screenshot_path("origins", "victim-failure"))
            raise
    finally:
        await context.close()

    token = session_token(stack.env["BINDERY_SESSION_SECRET"], hostile_session)
    base = hostile_url.rsplit("/user/", 1)[0] + f"/user/{hostile_session}/"
    async with http.get(f"{base}collected", headers={"Authorization": f"token {token}"}) as resp:
        assert resp.status == 200, await resp.text()
        seen = await resp.text()
    return report, seen, victim_session, victim_url


def assert_untouched(stack: Stack, seen: str, victim: str) -> None:
    victim_token = session_token(stack.env["BINDERY_SESSION_SECRET"], victim)
    assert victim_token not in seen, "the victim's token reached the hostile session"
    assert f"/user/{victim}/" not in seen, "the hostile session saw the victim's requests"
    assert "handoff" not in seen, "the hostile session saw a handoff code"


@pytest.mark.parametrize("mode", ["subdomain", "path"])
async def test_a_hostile_session_cannot_reach_another_in_the_same_browser(
    stack: Stack,
    http: aiohttp.ClientSession,
    browser: Browser,
    hostile_repo: Path,
    victim_repo: Path,
    mode: str,
) -> None:
    path_mode = stack.settings("gateway", BINDERY_SESSIONS_HOST="")
    with path_mode if mode == "path" else contextlib.nullcontext():
        report, seen, victim, victim_url = await attack(
            stack, http, browser, hostile_repo, victim_repo
        )
    assert_untouched(stack, seen, victim)
    assert report["own"] == "registered", report
    if mode == "subdomain":
        # Its worker may claim its whole origin: nothing but its own session lives there.
        assert victim_url.startswith(stack.session_url(victim)), "an origin of its own"
    else:
        assert victim_url.startswith(f"{stack.gateway}/user/{victim}/"), "one origin for all"
        # Service-Worker-Allowed was confined to the hostile session's prefix. (Without that,
        # the worker claims the whole site and reads the victim's handoff code: tried.)
        assert report["root"] == "SecurityError", report


EMBED = """<!doctype html><title>embedding page</title><body><script>
const out = (key, value) => { document.body.dataset[key] = value; };
const events = new EventSource(BUILD);
events.onerror = () => { events.close(); if (!document.body.dataset.url) out("error", "stream"); };
events.onmessage = async (event) => {
  const data = JSON.parse(event.data);
  if (data.phase === "failed") { events.close(); out("error", data.message); }
  if (data.phase !== "ready") return;
  events.close();
  out("url", data.url);
  out("token", data.token ? "given" : "none");
  try {
    const kernel = await (await fetch(data.url + "api/kernels", {
      method: "POST", body: "{}",
      headers: {"Authorization": "token " + data.token, "Content-Type": "application/json"},
    })).json();
    const ws = new WebSocket(data.url.replace(/^http/, "ws") + "api/kernels/" + kernel.id +
      "/channels?token=" + data.token);
    const id = "embed-" + Math.random();
    ws.onopen = () => ws.send(JSON.stringify({
      header: {msg_id: id, username: "", session: id, msg_type: "execute_request",
               version: "5.3", date: new Date().toISOString()},
      parent_header: {}, metadata: {}, channel: "shell",
      content: {code: CODE, silent: false, store_history: false, user_expressions: {},
                allow_stdin: false, stop_on_error: true},
    }));
    ws.onmessage = (message) => {
      const msg = JSON.parse(message.data);
      const mine = msg.parent_header.msg_id === id;
      if (mine && msg.msg_type === "stream") out("output", msg.content.text);
    };
  } catch (e) { out("error", String(e)); }
};
const socket = new WebSocket(BUILD.replace(/^http/, "ws"));
socket.onmessage = () => out("socket", "open");
socket.onerror = () => out("socketError", "refused");
</script>"""


@pytest.fixture
async def embedding_site(stack: Stack, victim_repo: Path) -> AsyncIterator[str]:
    """A page on another origin (another port of loopback) that embeds the stack's Bindery."""
    build = f"{stack.gateway}/build/git/{quote(f'file://{victim_repo}', safe='')}/main"
    page = EMBED.replace("BUILD", json.dumps(build)).replace("CODE", json.dumps(PROBE))

    async def serve(_request: web.Request) -> web.Response:
        return web.Response(text=page, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def launches_requested(http: aiohttp.ClientSession, stack: Stack) -> float:
    async with http.get(f"{stack.gateway}/metrics") as resp:
        text = await resp.text()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("bindery_gateway_launches_requested_total{")
    )


async def test_another_site_launches_and_runs_code_as_thebe_does(
    stack: Stack, browser: Browser, embedding_site: str
) -> None:
    page = await browser.new_page()
    try:
        await page.goto(embedding_site)
        body = page.locator("body")
        await expect(body).to_have_attribute(
            "data-output", re.compile("victim 42"), timeout=600_000
        )
        assert await body.get_attribute("data-token") == "given"
    finally:
        await page.close()


async def test_with_origins_restricted_another_site_gets_no_launch_and_no_token(
    stack: Stack, http: aiohttp.ClientSession, browser: Browser, embedding_site: str
) -> None:
    with stack.settings("gateway", BINDERY_ALLOWED_ORIGINS="https://thebe.example.org"):
        before = await launches_requested(http, stack)
        page = await browser.new_page()
        try:
            await page.goto(embedding_site)
            body = page.locator("body")
            await expect(body).to_have_attribute("data-error", "stream", timeout=60_000)
            await expect(body).to_have_attribute("data-socket-error", "refused", timeout=60_000)
            assert await body.get_attribute("data-url") is None
            assert await body.get_attribute("data-token") is None
            assert await body.get_attribute("data-socket") is None
        finally:
            await page.close()
        assert await launches_requested(http, stack) == before, "a refused page started a launch"


async def stream(
    http: aiohttp.ClientSession, url: str, **headers: str
) -> list[tuple[str, dict[str, Any]]]:
    """A /build event stream as (id, event) pairs, up to its end."""
    events: list[tuple[str, dict[str, Any]]] = []
    ident = ""
    async with http.get(url, headers={"Accept": "text/event-stream", **headers}) as resp:
        assert resp.status == 200, await resp.text()
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if line.startswith("id: "):
                ident = line[4:]
            elif line.startswith("data:"):
                events.append((ident, json.loads(line[5:])))
                if events[-1][1].get("phase") in {"ready", "failed"}:
                    break
    return events


async def test_a_launch_id_alone_hands_out_no_session(
    stack: Stack, http: aiohttp.ClientSession, victim_repo: Path
) -> None:
    """Launch ids are in logs, the event log, traces and the archive: knowing one must not be
    enough to get into its session."""
    url = stack.gateway + build_path(f"file://{victim_repo}", "main")
    ident, ready = (await stream(http, url))[-1]
    assert ready["phase"] == "ready" and ready["token"] and ready["handoff"], ready
    launch_id, _, secret = ident.split(":")

    stranger = (await stream(http, url, **{"Last-Event-ID": f"{launch_id}:0"}))[-1][1]
    assert stranger["phase"] == "ready" and stranger["url"] == ready["url"]
    assert "token" not in stranger and "handoff" not in stranger
    async with http.get(f"{stranger['url']}api/status") as resp:
        assert resp.status == 403

    owner = (await stream(http, url, **{"Last-Event-ID": f"{launch_id}:0:{secret}"}))[-1][1]
    assert owner["token"] == ready["token"], "the page that started it can resume with its secret"
