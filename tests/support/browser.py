"""Headless Chromium (Debian's, not a downloaded one) driven by Playwright, for browser tests.

Screenshots go to .bindery/test-results/browser/, kept as test artifacts.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from playwright.async_api import Browser, Page, async_playwright

#: A notebook's kernel is up and idle: JupyterLab's status bar says "Python 3 (ipykernel) | Idle";
#: Notebook 7 (no status bar) empties its kernel status and fades it out once the kernel is idle
#: or busy ("Kernel Starting" and the like carry the -info class). The notebook toolbar's
#: execution indicator is no signal: it says idle before the kernel is connected.
JUPYTERLAB_KERNEL_IDLE = re.compile(r"\| Idle$")
NOTEBOOK7_KERNEL_IDLE = ".jp-NotebookKernelStatus-fade:not(.jp-NotebookKernelStatus-info)"

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


async def run_first_cell(page: Page) -> None:
    """Run the open notebook's first cell once its kernel is idle: sooner, the keystroke reaches
    a notebook without a kernel. Notebook 7 asks which kernel to start when the kernel specs
    came after the notebook (a loaded machine): a person accepts the one it proposes, the
    notebook's own."""
    await page.locator(".jp-Notebook .jp-Cell").first.wait_for(timeout=120_000)
    idle = page.get_by_text(JUPYTERLAB_KERNEL_IDLE).or_(page.locator(NOTEBOOK7_KERNEL_IDLE))
    asked = page.get_by_role("dialog").filter(has_text="Select Kernel")
    await idle.or_(asked).first.wait_for(state="attached", timeout=120_000)
    if await asked.count():
        await asked.get_by_role("button", name="Select", exact=True).click()
        await idle.first.wait_for(state="attached", timeout=120_000)
    await page.locator(".jp-Cell .jp-InputArea-editor").first.click()
    await page.keyboard.press("Shift+Enter")
