"""A person's whole path in headless Chromium, through the real stack: the home page, a fixture
repository typed in, the launch page's live build log, JupyterLab, a cell run and its output.
A screenshot of each stage is kept in .bindery/test-results/browser/."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.async_api import Browser, Page, expect

from tests.support.browser import chromium, run_first_cell, screenshot_path
from tests.support.gitrepo import make_repo, notebook
from tests.support.stack import Stack

PROBE = "import six; print('answer', six.moves.reduce(lambda a, b: a * b, range(1, 8)))"
EXPECTED = "answer 5040"
# A build step that takes a few seconds and says so as it goes: the log is seen streaming.
POST_BUILD = "#!/bin/sh\nfor i in 1 2 3 4 5 6; do echo preparing step $i; sleep 1; done\n"


@pytest.fixture(scope="module")
def browser_repo(repos: Path) -> Path:
    path = repos / "browser"
    # A fresh commit every run: the image is really built, so there is a build log to watch.
    make_repo(
        path,
        {
            "requirements.txt": "six==1.16.0\n",
            "analysis.ipynb": notebook(PROBE),
            "run-id.txt": uuid.uuid4().hex,
            "postBuild": POST_BUILD,
        },
    )
    return path


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as browser:
        yield browser


async def terminal_text(page: Page) -> str:
    """Every line the launch page's terminal holds (its scrollback too, not just what shows)."""
    return str(
        await page.evaluate(
            """() => {
              const t = window.binderyTerminal;
              if (!t) return "";
              const b = t.buffer.active, out = [];
              for (let i = 0; i < b.length; i++) out.push(b.getLine(i).translateToString(true));
              return out.join("\\n");
            }"""
        )
    )


async def test_home_to_running_cell(stack: Stack, browser: Browser, browser_repo: Path) -> None:
    page = await browser.new_page(viewport={"width": 1280, "height": 900})

    def shot(stage: str) -> Path:
        return screenshot_path("browser", stage)

    try:
        await page.goto(stack.gateway + "/")
        await page.fill("#repo", f"file://{browser_repo}")
        await page.fill("#ref", "main")
        await page.fill("#path", "analysis.ipynb")
        link = page.locator("#link")
        await expect(link).to_contain_text("/v2/git/file%3A%2F%2F")
        await expect(link).to_contain_text("urlpath=lab%2Ftree%2Fanalysis.ipynb")
        await expect(page.locator("#badge-md")).to_contain_text("/badge_logo.svg")
        await page.screenshot(path=shot("1-home"), full_page=True)

        await page.click("#launch")
        await page.wait_for_url(re.compile(r".*/v2/git/.*"))
        # The build log streams into the terminal (xterm.js) while the image builds: the
        # repository's postBuild prints a line a second for a few seconds.
        await page.wait_for_function(
            """() => {
              const t = window.binderyTerminal;
              if (!t) return false;
              const b = t.buffer.active;
              let text = "";
              for (let i = 0; i < b.length; i++) text += b.getLine(i).translateToString(true);
              return text.includes("preparing step 2");
            }""",
            timeout=600_000,
        )
        await page.screenshot(path=shot("2-build-log"), full_page=True)
        log = await terminal_text(page)
        assert "Resolved main to" in log
        assert re.search(r"STEP \d+/\d+", log, re.IGNORECASE), "repo2docker's build steps show"
        assert "preparing step 1" in log
        building = page.locator("#steps [data-step=building]")
        assert await building.get_attribute("data-state") == "current"

        # Ready: the page sends the browser into JupyterLab at the requested file.
        await page.wait_for_url(
            re.compile(r".*/user/[^/]+/lab/tree/analysis\.ipynb.*"), timeout=600_000
        )
        session = urlsplit(page.url).path.split("/")[2]
        assert page.url.startswith(stack.session_url(session)), "on the session's own origin"
        assert "token=" not in page.url and "code=" not in page.url, "no credential in sight"
        notebook = page.locator(".jp-Notebook")
        await notebook.wait_for(timeout=120_000)
        await page.screenshot(path=shot("3-jupyterlab"))

        # Once the kernel (over the proxied websocket) is idle, run the cell and see its output.
        await run_first_cell(page)
        output = page.locator(".jp-OutputArea-output").first
        await expect(output).to_contain_text(EXPECTED, timeout=120_000)
        await page.screenshot(path=shot("4-cell-output"))
    except Exception as failure:
        with contextlib.suppress(Exception):  # the page may be mid-navigation: best effort
            await page.screenshot(path=shot("failure"), full_page=True, timeout=5_000)
        # What the page showed, in the report itself: CI keeps the output, not the screenshot.
        failure.add_note(f"page at failure: {page.url}")
        with contextlib.suppress(Exception):
            text = await page.locator("body").inner_text(timeout=5_000)
            failure.add_note(f"its text: {text[:2000]!r}")
        raise
    finally:
        await page.close()
