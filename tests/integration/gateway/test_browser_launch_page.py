"""The launch page in headless Chromium against a gateway whose launches are answered through the
fake bus (no broker, no build: the gateway integrated with a real browser): hostile urlpath values
never take the browser, or a Location header, off the gateway's origin, a failure is shown with
its reason and what to do about it, and a launch waiting its turn to start shows its place in
its machine's line."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

import aiohttp
import pytest
from aiohttp import web
from playwright.async_api import Browser, Page, Request

from bindery.bus import topology
from bindery.events import (
    BuildLog,
    Event,
    FailureReason,
    LaunchFailed,
    LaunchQueued,
    LaunchRequested,
    PodScheduled,
    QueueLimit,
)
from bindery.gateway.app import create_app
from bindery.gateway.deps import Gateway
from bindery.gateway.handlers import EventHandlers
from bindery.gateway.settings import GatewaySettings
from bindery.gateway.stages import STAGE_QUEUES, StageCheck
from tests.support.browser import chromium, screenshot_path
from tests.support.fakebus import FakeBus
from tests.support.launches import pod_ready, ref_resolved

SECRET = "s" * 32
SPEC = quote("https://example.org/owner/repo.git", safe="") + "/main"

HOSTILE = [
    "https://evil.example/",
    "//evil.example/x",
    "\\\\evil.example/x",
    "/\\evil.example",
    "javascript:alert(document.domain)",
    "JaVaScRiPt:alert(1)",
    "\tjavascript:alert(1)",
    "data:text/html,<script>alert(1)</script>",
    "http:evil.example",
    " //evil.example",
    "../../../evil",
    "lab/../../../..",
    "%2e%2e/%2e%2e/%2e%2e/x",
    "%252e%252e/%252e%252e/x",
    "/%2F%2Fevil.example",
    "lab/..%2F..%2F..%2Fx",
    "%5c%5cevil.example",
    "..\\..\\evil",
    "lab#//evil.example",
    "/%09/evil.example",
]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LaunchAnswers:
    """The rest of Bindery, as the fake bus's answer to each launch-requested: at once, a cached
    image and a session `s1`, or a failure."""

    handlers: EventHandlers | None = None
    upstream: str = ""
    fail_with: FailureReason | None = None
    stall: bool = False
    """Answer nothing: the launch waits, as it does while its stage has no consumer."""
    warning: str = ""
    """A warning line the build logs before the session is placed."""
    in_line: int = 0
    """Leave the launch waiting its turn to start, at this place in its machine's line."""

    async def __call__(self, event: Event) -> None:
        if not isinstance(event, LaunchRequested) or self.handlers is None:
            return
        on, lid = self.handlers.on_event, event.launch_id
        await on(event)
        if self.stall:
            return
        resolved = ref_resolved(
            lid,
            image="img",
            image_exists=self.fail_with is None,
            provider=event.provider,
            spec=event.spec,
            repo_url="https://example.org/owner/repo.git",
            ref="main",
            resolved_ref="c" * 40,
        )
        await on(resolved)
        if self.fail_with is not None:
            for i in range(30):
                await self.handlers.on_log(
                    BuildLog(launch_id=lid, image="img", message=f"Step {i}/30 : RUN thing\n")
                )
            await on(
                LaunchFailed(
                    launch_id=lid,
                    service="builder",
                    reason=self.fail_with,
                    message="The command 'pip install nope' returned a non-zero code: 1",
                )
            )
            return
        if self.warning:
            await self.handlers.on_log(
                BuildLog(launch_id=lid, image="img", phase="warning", message=self.warning)
            )
        if self.in_line:
            limit = QueueLimit.STARTING
            await on(LaunchQueued(launch_id=lid, repo_key="k", position=self.in_line, limit=limit))
            return
        await on(PodScheduled(launch_id=lid, session="s1", node="n", image="img"))
        ready = pod_ready(
            lid, session="s1", node="n", image="img", target=self.upstream, context=resolved.context
        )
        await on(ready)


@dataclass
class Site:
    url: str
    answers: LaunchAnswers
    gateway: Gateway


async def fake_jupyter(request: web.Request) -> web.Response:
    return web.Response(
        text="<!doctype html><title>session</title><h1>inside s1</h1>", content_type="text/html"
    )


@pytest.fixture(scope="module")
async def site() -> AsyncIterator[Site]:
    jupyter = web.Application()
    jupyter.router.add_get("/user/s1/{tail:.*}", fake_jupyter)
    jupyter_runner = web.AppRunner(jupyter)
    await jupyter_runner.setup()
    jupyter_port = free_port()
    await web.TCPSite(jupyter_runner, "127.0.0.1", jupyter_port).start()

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    answers = LaunchAnswers(upstream=f"http://127.0.0.1:{jupyter_port}")
    settings = GatewaySettings(
        session_secret=SECRET,
        public_url=url,
        client_log_dir="",
        progress_final_line_wait=0.05,
        launch_rate_per_minute=0,
        max_launches_per_client=100_000,  # every test here launches from 127.0.0.1
    )
    gateway = Gateway.create(settings, FakeBus(on_publish=answers))
    answers.handlers = EventHandlers(gateway)
    runner = web.AppRunner(create_app(gateway))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield Site(url, answers, gateway)
    finally:
        await runner.cleanup()
        await jupyter_runner.cleanup()


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as browser:
        yield browser


async def follow(page: Page, site: Site, query: str) -> list[str]:
    """Open the launch page with `query`; returns every URL the browser requested."""
    requested: list[str] = []

    def note(request: Request) -> None:
        requested.append(request.url)

    page.on("request", note)
    await page.goto(f"{site.url}/v2/git/{SPEC}?{query}")
    await page.wait_for_url(f"{site.url}/user/s1/**", timeout=20_000)
    await page.wait_for_selector("h1:has-text('inside s1')")
    page.remove_listener("request", note)
    return requested


@pytest.mark.parametrize("value", HOSTILE)
async def test_hostile_urlpath_stays_inside_the_session(
    browser: Browser, site: Site, value: str
) -> None:
    page = await browser.new_page()
    try:
        requested = await follow(page, site, "urlpath=" + quote(value, safe=""))
        origin = urlsplit(site.url)
        for url in requested:
            parts = urlsplit(url)
            assert (parts.scheme, parts.netloc) == (origin.scheme, origin.netloc), url
        final = urlsplit(page.url)
        assert (final.scheme, final.netloc) == (origin.scheme, origin.netloc)
        assert final.path.startswith("/user/s1/")
        assert final.path == "/user/s1/lab", "an unsafe urlpath falls back to the default"
    finally:
        await page.close()


@pytest.mark.parametrize("legacy", ["labpath", "filepath"])
async def test_hostile_legacy_paths_stay_inside_the_session(
    browser: Browser, site: Site, legacy: str
) -> None:
    page = await browser.new_page()
    try:
        await follow(page, site, f"{legacy}=" + quote("../../../../evil", safe=""))
        assert urlsplit(page.url).path == "/user/s1/lab"
    finally:
        await page.close()


async def test_safe_urlpath_is_opened(browser: Browser, site: Site) -> None:
    page = await browser.new_page()
    try:
        await follow(page, site, "urlpath=" + quote("lab/tree/docs/a b.ipynb", safe=""))
        assert urlsplit(page.url).path == "/user/s1/lab/tree/docs/a%20b.ipynb"
    finally:
        await page.close()


@pytest.mark.parametrize(
    ("query", "path"),
    [
        # mybinder.org's meanings (BinderHub's LaunchSpec): filepath opens the file where
        # Notebook 7 shows a notebook, labpath in JupyterLab's one-document view; both win.
        (
            "urlpath=lab&filepath=" + quote("docs/a b.ipynb", safe=""),
            "/user/s1/tree/docs/a%20b.ipynb",
        ),
        ("labpath=index.ipynb&urlpath=lab", "/user/s1/doc/tree/index.ipynb"),
    ],
)
async def test_binderhubs_file_links_open_what_mybinder_opens(
    browser: Browser, site: Site, query: str, path: str
) -> None:
    page = await browser.new_page()
    try:
        await follow(page, site, query)
        assert urlsplit(page.url).path == path
    finally:
        await page.close()


@pytest.mark.parametrize("value", HOSTILE)
async def test_no_location_header_leaves_the_origin(site: Site, value: str) -> None:
    """The no-JavaScript form and the session redirect build Location headers from input."""
    async with aiohttp.ClientSession() as http:
        for path, params in [
            ("/launch", {"repo": "https://example.org/r.git", "path": value, "kind": "url"}),
            ("/launch", {"repo": value, "path": value, "kind": "file"}),
        ]:
            async with http.get(site.url + path, params=params, allow_redirects=False) as resp:
                assert resp.status in (303, 400)
                location = resp.headers.get("Location")
                if location is not None:
                    assert location.startswith("/") and not location.startswith(("//", "/\\"))
                    resolved = urlsplit(urljoin(site.url + path, location))
                    assert resolved.netloc == urlsplit(site.url).netloc
        raw = site.url + "/user/s1?" + quote(value, safe="=&")
        async with http.get(raw, allow_redirects=False) as resp:
            location = resp.headers.get("Location", "/user/s1/")
            assert urlsplit(urljoin(raw, location)).netloc == urlsplit(site.url).netloc


async def test_failure_says_why_and_what_to_do(browser: Browser, site: Site) -> None:
    site.answers.fail_with = FailureReason.STEP_FAILED
    page = await browser.new_page()
    try:
        await page.goto(f"{site.url}/v2/git/{SPEC}")
        failure = page.locator("#failure")
        await failure.wait_for(state="visible", timeout=20_000)
        assert await page.locator("#failure-title").inner_text() == "The build failed"
        assert "requirements.txt" in await page.locator("#failure-advice").inner_text()
        assert "pip install nope" in await page.locator("#failure-message").inner_text()
        tail = await page.locator("#failure-log").inner_text()
        assert "Step 29/30" in tail and "Step 0/30" not in tail, "the log's last lines"
        assert await page.get_attribute("#favicon", "href") == "/static/favicon-failed.svg"
        assert await page.title() == "failed · Bindery"
        await page.screenshot(path=screenshot_path("launch-page", "failed"), full_page=True)
    finally:
        site.answers.fail_with = None
        await page.close()


async def test_a_build_warning_stays_in_view_before_the_session_opens(
    browser: Browser, site: Site
) -> None:
    site.answers.warning = "Warning: runtime.txt asks for Python 3.10 ...: using Python 3.11"
    page = await browser.new_page()
    try:
        await page.goto(f"{site.url}/v2/git/{SPEC}")
        warnings = page.locator("#warnings")
        await warnings.wait_for(state="visible", timeout=20_000)
        assert "using Python 3.11" in await warnings.inner_text()
        await page.locator("#status").filter(has_text="see the warning").wait_for(timeout=20_000)
        await page.screenshot(path=screenshot_path("launch-page", "warning"), full_page=True)
        # It still opens the session, a few seconds later.
        await page.wait_for_url(f"{site.url}/user/s1/**", timeout=20_000)
    finally:
        site.answers.warning = ""
        await page.close()


async def test_a_stage_nobody_runs_is_said_in_the_status_line(browser: Browser, site: Site) -> None:
    async def no_builder(_queues: Iterable[str]) -> dict[str, int]:
        return {name: 0 if name == topology.BUILDER.name else 1 for name in STAGE_QUEUES.values()}

    site.answers.stall = True
    site.gateway.stage_check = StageCheck(no_builder, max_age=60)
    page = await browser.new_page()
    try:
        await page.goto(f"{site.url}/v2/git/{SPEC}")
        status = page.locator("#status")
        await status.filter(has_text="builder is not running").wait_for(timeout=20_000)
        assert "goes on as soon as it is back" in await status.inner_text()
        assert not await page.locator("#failure").is_visible()
        await page.screenshot(path=screenshot_path("launch-page", "stalled"), full_page=True)
    finally:
        site.answers.stall = False
        site.gateway.stage_check = None
        await page.close()


async def test_a_launch_waiting_its_turn_to_start_shows_its_place(
    browser: Browser, site: Site
) -> None:
    site.answers.in_line = 2
    page = await browser.new_page()
    try:
        await page.goto(f"{site.url}/v2/git/{SPEC}")
        status = page.locator("#status")
        await status.filter(has_text="Starting soon").wait_for(timeout=20_000)
        assert await status.inner_text() == "Starting soon: position 2 in line on its machine."
        assert not await page.locator("#failure").is_visible()
        await page.screenshot(path=screenshot_path("launch-page", "in-line"), full_page=True)
    finally:
        site.answers.in_line = 0
        await page.close()
