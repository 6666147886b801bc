"""An ended session's address explains itself, in Chromium, through the real stack (issue 13):
after the culler's idle-detected, the session's URL shows why it ended and a button that
launches the same repository and ref again, which ends in a new running JupyterLab."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import aiohttp
from playwright.async_api import expect

from bindery.bus import Bus
from bindery.events import IdleDetected, StopReason
from tests.support.browser import chromium, screenshot_path
from tests.support.eventually import eventually
from tests.support.gitrepo import make_repo
from tests.support.stack import Stack, build_path, launch


async def cull(stack: Stack, launch_id: str, session: str, idle_seconds: float) -> None:
    """What the culler publishes for a session nobody used for `idle_seconds`."""
    bus = Bus(stack.env["BINDERY_AMQP_URL"], "e2e-test", connect_timeout=10)
    await bus.connect()
    try:
        await bus.publish(
            IdleDetected(
                launch_id=launch_id,
                session=session,
                reason=StopReason.IDLE,
                idle_seconds=idle_seconds,
            )
        )
    finally:
        await bus.close()


async def until_not_routed(http: aiohttp.ClientSession, url: str) -> dict[str, object]:
    """Poll the session's address as a program until it no longer routes; its 404's JSON."""

    async def not_found() -> dict[str, object] | None:
        async with http.get(url + "api/status") as resp:
            return dict(await resp.json()) if resp.status == 404 else None

    return await eventually(not_found, within=60, every=0.2, what="the session no longer routed")


async def test_a_culled_sessions_page_says_why_and_relaunches_it(
    stack: Stack, http: aiohttp.ClientSession, repos: Path
) -> None:
    repo = repos / f"ended-{uuid.uuid4().hex[:8]}"
    make_repo(repo, {"requirements.txt": "", "README.md": "ended sessions\n"})
    ready = (await launch(http, stack.gateway, build_path(f"file://{repo}", "main")))[-1]
    assert ready["phase"] == "ready", ready
    url = ready["url"]
    session = url.rstrip("/").rsplit("/", 1)[-1]

    await cull(stack, ready["launch_id"], session, idle_seconds=600)
    stopped = await until_not_routed(http, url)
    assert stopped["stopped"] == "idle" and stopped["relaunch"]

    async with chromium() as browser:
        page = await browser.new_page()

        def shot(stage: str) -> Path:
            return screenshot_path("ended", stage)

        await page.goto(url + "lab")
        await expect(page.locator("h1")).to_have_text("This session has ended")
        await expect(page.locator(".error")).to_contain_text("nobody used it for 10 minutes")
        await page.screenshot(path=shot("1-ended"), full_page=True)

        await page.click("#relaunch")
        await page.wait_for_url(re.compile(r".*/v2/git/file%3A%2F%2F.*"), timeout=30_000)
        # The launch page follows the launch to the new session's JupyterLab.
        new_session = re.compile(rf".*/user/(?!{re.escape(session)}/)[^/]+/lab.*")
        await page.wait_for_url(new_session, timeout=300_000)
        await expect(page.locator("#jp-main-dock-panel")).to_be_visible(timeout=120_000)
        await page.screenshot(path=shot("2-relaunched"), full_page=True)
