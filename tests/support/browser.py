"""Headless Chromium (Debian's, not a downloaded one) driven by Playwright, for browser tests.

Screenshots go to .bindery/test-results/browser/, kept as test artifacts.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import Browser, async_playwright

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / ".bindery/test-results/browser"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Without these Chromium floods the closed network (updates, sync, field trials) and needs a
# sandbox that root in a container cannot have.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]


@asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield browser
        finally:
            await browser.close()


def screenshot_path(test: str, stage: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS / f"{test}-{stage}.png"
