"""The session environment repositories written for mybinder.org rely on (issue 17, point 2, and
point 7's voila links), as repo2docker's default environment has it: Node.js and npm at build
time (`npm install -g` in postBuild, through the build's CA bundle) and in the session; a
postBuild installing a JupyterLab extension and calling the classic `jupyter serverextension`
and `jupyter nbextension` commands; Notebook 7 behind `tree/` and `filepath=` links; ipywidgets
rendering in Chromium; jupyter-resource-usage showing memory against the session's limit; and
`urlpath=voila/render/...` when the repository installs voila.

One repository (built once) serves every test; each browser test launches it through the
launch page, as a person following the link would, onto the cached image.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from playwright.async_api import Browser, Page, expect

from tests.support.browser import chromium, run_first_cell, screenshot_path
from tests.support.gitrepo import make_repo, notebook
from tests.support.kernel import run_code
from tests.support.stack import Stack, build_path, launch, stop_session

GiB = 1024**3
MEMORY_LIMIT = 2 * GiB
"""The scheduler's default session limit (mybinder.org's)."""

# A small JupyterLab 4 extension, prebuilt, from PyPI: how extensions install since JupyterLab 3.
# (`jupyter labextension install` from npm rebuilds JupyterLab from its own npm packages at the
# installed version, which the npm registry reachable here does not have: it lags PyPI.)
LAB_EXTENSION = "jupyterlab-theme-solarized-dark"
LAB_THEME = "JupyterLab Solarized Dark"
# JupyterLab's settings API, from the page (whose session cookie the gateway turns into the
# token): the theme to use from now on.
CHOOSE_THEME = """async (theme) => {
  const url = location.pathname.replace(/\\/lab(\\/.*)?$/, "/") +
    "lab/api/settings/@jupyterlab/apputils-extension:themes";
  const xsrf = (document.cookie.match(/_xsrf=([^;]+)/) || [])[1] || "";
  const resp = await fetch(url, {
    method: "PUT",
    headers: {"Content-Type": "application/json", "X-XSRFToken": decodeURIComponent(xsrf)},
    body: JSON.stringify({raw: JSON.stringify({theme})}),
  });
  if (!resp.ok) throw new Error(`${resp.status} ${await resp.text()}`);
}"""
# An npm package with a command: `npm install -g` must put it on the session's PATH.
NPM_TOOL = "cowsay"

# A server extension that nothing enables but the repository's postBuild, the old way:
# `jupyter serverextension enable` must reach Jupyter Server for its page to answer.
SERVER_EXTENSION = '''"""Answers GET <base_url>probe-ext once enabled."""
from jupyter_server.base.handlers import JupyterHandler
from jupyter_server.utils import url_path_join
from tornado import web


class ProbeHandler(JupyterHandler):
    @web.authenticated
    def get(self):
        self.finish("probe-extension-loaded")


def _jupyter_server_extension_points():
    return [{"module": "probe_ext"}]


def _load_jupyter_server_extension(serverapp):
    base_url = serverapp.web_app.settings["base_url"]
    serverapp.web_app.add_handlers(".*$", [(url_path_join(base_url, "probe-ext"), ProbeHandler)])
'''
SETUP_PY = """from setuptools import setup
setup(name="probe-ext", version="0.1", py_modules=["probe_ext"])
"""

# What postBuild scripts on mybinder.org do; `set -e`: any command failing fails the build.
POST_BUILD = f"""#!/bin/bash
set -euo pipefail
pip install {LAB_EXTENSION}
jupyter serverextension enable --py probe_ext --sys-prefix
jupyter nbextension install --py widgetsnbextension --sys-prefix
jupyter nbextension enable --py widgetsnbextension --sys-prefix
npm install --global {NPM_TOOL}
"""

SLIDER = "import ipywidgets as w\nw.IntSlider(value=7, description='probe-slider')"
# Split so that only the executed output, never the source, holds the marker.
VOILA_CELL = "print('voila-' + 'rendered')"

PROBE = f"""
import json, shutil, subprocess
run = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True)
print(json.dumps({{
    "node": run("node", "--version").stdout.strip(),
    "npm": run("npm", "--version").stdout.strip(),
    "npm_tool": shutil.which({NPM_TOOL!r}),
    "npm_tool_output": run({NPM_TOOL!r}, "moo").stdout,
    "npm_registry": run("npm", "view", {NPM_TOOL!r}, "name").stdout.strip(),
    "labextensions": run("jupyter", "labextension", "list").stderr,
}}))
"""


@pytest.fixture(scope="module")
def env_repo(repos: Path) -> Path:
    path = repos / "session-environment"
    make_repo(
        path,
        {
            "requirements.txt": "voila\n",
            "setup.py": SETUP_PY,
            "probe_ext.py": SERVER_EXTENSION,
            "postBuild": POST_BUILD,
            "widgets.ipynb": notebook(SLIDER),
            "app.ipynb": notebook(VOILA_CELL),
        },
    )
    return path


@pytest.fixture(scope="module")
async def session(
    stack: Stack, http: aiohttp.ClientSession, env_repo: Path
) -> AsyncIterator[dict[str, Any]]:
    """The repository built and launched once: the ready event of a running session."""
    events = await launch(http, stack.gateway, build_path(f"file://{env_repo}", "main"))
    ready = events[-1]
    assert ready["phase"] == "ready", json.dumps(events[-5:], indent=1)
    yield ready
    stop_session(ready["launch_id"])


@pytest.fixture(scope="module")
async def probed(http: aiohttp.ClientSession, session: dict[str, Any]) -> dict[str, Any]:
    outcome = await run_code(http, session["url"], session["token"], PROBE)
    seen: dict[str, Any] = json.loads(outcome.output.strip().splitlines()[-1])
    return seen


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Browser]:
    async with chromium() as browser:
        yield browser


def launch_link(stack: Stack, repo: Path, query: str) -> str:
    return f"{stack.gateway}/v2/git/{quote(f'file://{repo}', safe='')}/main?{query}"


async def open_link(browser: Browser, link: str, lands: str, shot: str) -> Page:
    """A new page that follows the launch link into the session, at a path matching `lands`."""
    page = await browser.new_page(viewport={"width": 1280, "height": 900})
    await page.goto(link)
    try:
        await page.wait_for_url(re.compile(rf".*/user/[^/]+/{lands}"), timeout=600_000)
    except Exception:
        await page.screenshot(path=screenshot_path("session-env", f"{shot}-failure"))
        raise
    return page


async def notebook_page(page: Page) -> str:
    """Which Notebook 7 page this is (its page config says, as its front end reads it); empty
    for any other application, JupyterLab's included."""
    config = json.loads(await page.locator("#jupyter-config-data").text_content() or "{}")
    return str(config.get("notebookPage", ""))


async def test_node_and_npm_work_in_postbuild_and_in_the_session(
    probed: dict[str, Any],
) -> None:
    assert re.fullmatch(r"v\d+\.\d+\.\d+", probed["node"]), probed
    major = int(probed["node"][1:].split(".")[0])
    assert major >= 20, f"JupyterLab 4 builds need Node 20 or later: {probed['node']}"
    assert probed["npm"], probed
    # `npm install -g` in postBuild, through the build's CA bundle, lands on the session's PATH.
    assert probed["npm_tool"] == f"/srv/venv/bin/{NPM_TOOL}", probed
    assert "moo" in probed["npm_tool_output"], probed
    # npm in the session reaches the registry through the operator's CA bundle too.
    assert probed["npm_registry"] == NPM_TOOL, probed


async def test_the_session_has_repo2dockers_default_extensions(probed: dict[str, Any]) -> None:
    listing = probed["labextensions"]
    for extension in (
        "@jupyter-notebook/lab-extension",
        "@jupyter-widgets/jupyterlab-manager",
        "@jupyter-server/resource-usage",
        "jupyter-offlinenotebook",
    ):
        assert re.search(rf"{re.escape(extension)} v[\d.]+ .*enabled.*OK", listing), listing


async def test_a_lab_extension_installed_in_postbuild_is_in_jupyterlab(
    probed: dict[str, Any], stack: Stack, browser: Browser, env_repo: Path
) -> None:
    listing = probed["labextensions"]
    assert re.search(rf"{LAB_EXTENSION} v[\d.]+ .*enabled.*OK", listing), listing
    # Its code runs in the JupyterLab the browser loads: the theme it registers can be chosen
    # (JupyterLab falls back to its default for a theme nobody registered).
    page = await open_link(browser, launch_link(stack, env_repo, "urlpath=lab"), "lab", "theme")
    try:
        await page.locator(".jp-LabShell").wait_for(timeout=120_000)
        await page.evaluate(CHOOSE_THEME, LAB_THEME)
        await page.reload()
        await expect(page.locator("body")).to_have_attribute(
            "data-jp-theme-name", LAB_THEME, timeout=120_000
        )
        await page.screenshot(path=screenshot_path("session-env", "lab-extension-theme"))
    finally:
        await page.close()


async def test_a_server_extension_enabled_the_classic_way_in_postbuild_is_loaded(
    http: aiohttp.ClientSession, session: dict[str, Any]
) -> None:
    headers = {"Authorization": f"token {session['token']}"}
    async with http.get(f"{session['url']}probe-ext", headers=headers) as resp:
        assert (resp.status, await resp.text()) == (200, "probe-extension-loaded")


async def test_the_memory_limit_is_the_sessions_and_shows_in_jupyterlab(
    http: aiohttp.ClientSession,
    session: dict[str, Any],
    stack: Stack,
    browser: Browser,
    env_repo: Path,
) -> None:
    headers = {"Authorization": f"token {session['token']}"}
    async with http.get(f"{session['url']}api/metrics/v1", headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        metrics = await resp.json()
    assert metrics["limits"]["memory"]["rss"] == MEMORY_LIMIT, metrics
    page = await open_link(browser, launch_link(stack, env_repo, "urlpath=lab"), "lab", "memory")
    try:
        # jupyter-resource-usage's status bar item: "Mem: <used> / <limit> MB".
        indicator = page.locator("#jp-main-statusbar").get_by_text(re.compile(r"Mem: "))
        limit = re.compile(rf"Mem: +[\d.]+ / {MEMORY_LIMIT // 2**20}(\.0+)? MB")
        await expect(indicator).to_have_text(limit, timeout=120_000)
        await page.screenshot(path=screenshot_path("session-env", "memory-indicator"))
    finally:
        await page.close()


async def test_a_tree_link_opens_notebook_7(stack: Stack, browser: Browser, env_repo: Path) -> None:
    page = await open_link(browser, launch_link(stack, env_repo, "urlpath=tree/"), "tree", "tree")
    try:
        # Notebook 7's file browser, not JupyterLab's, lists the repository.
        assert await notebook_page(page) == "tree"
        listing = page.locator(".jp-DirListing-content")
        await expect(listing).to_contain_text("widgets.ipynb", timeout=120_000)
        await page.screenshot(path=screenshot_path("session-env", "tree"))
    finally:
        await page.close()


async def test_a_filepath_link_opens_the_notebook_in_notebook_7_and_widgets_render(
    stack: Stack, browser: Browser, env_repo: Path
) -> None:
    link = launch_link(stack, env_repo, "filepath=widgets.ipynb")
    # mybinder.org's filepath: tree/<path>, which Notebook 7 answers with its notebook view.
    page = await open_link(browser, link, r"notebooks/widgets\.ipynb", "filepath")
    try:
        assert await notebook_page(page) == "notebooks"
        await run_first_cell(page)
        # ipywidgets' front end (jupyterlab-widgets) draws the slider the kernel made.
        slider = page.locator(".jp-OutputArea-output .widget-slider")
        await expect(slider).to_be_visible(timeout=120_000)
        await expect(slider).to_contain_text("probe-slider")
        await expect(slider.locator(".widget-readout")).to_contain_text("7")
        await page.screenshot(path=screenshot_path("session-env", "widgets"))
    finally:
        await page.close()


async def test_a_voila_link_renders_the_notebook_through_the_launch_page(
    stack: Stack, browser: Browser, env_repo: Path
) -> None:
    link = launch_link(stack, env_repo, "urlpath=" + quote("voila/render/app.ipynb", safe=""))
    page = await open_link(browser, link, r"voila/render/app\.ipynb", "voila")
    try:
        await expect(page.locator("body")).to_contain_text("voila-rendered", timeout=120_000)
        await expect(page.locator("body")).not_to_contain_text("'voila-' +")
        await page.screenshot(path=screenshot_path("session-env", "voila"))
    finally:
        await page.close()
