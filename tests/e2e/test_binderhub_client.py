"""The official BinderHub client (npm `@jupyterhub/binderhub-client`, unchanged) launches a
fixture repository through the whole stack and reaches `ready` with a working session."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from tests.support.gitrepo import make_repo, notebook
from tests.support.stack import REPO, Stack

# node and the npm packages come from `make install` (scripts/install.sh runs npm ci): a missing one
# fails these tests rather than skipping the check.

CLIENT = REPO / "tests/support/binderhub_client.mjs"


@pytest.fixture(scope="module")
def client_repo(repos: Path) -> Path:
    path = repos / "binderhub-client"
    make_repo(path, {"index.ipynb": notebook("print('hello from the client test')")})
    return path


async def run_client(
    gateway: str, provider_spec: str, *extra: str
) -> tuple[int, list[dict[str, Any]]]:
    proc = await asyncio.create_subprocess_exec(
        "node",
        str(CLIENT),
        f"{gateway}/build/",
        provider_spec,
        *extra,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 900)
    events = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    assert proc.returncode is not None
    if proc.returncode != 0:
        print(err.decode())
    return proc.returncode, events


async def test_official_client_reaches_ready(
    stack: Stack, http: aiohttp.ClientSession, client_repo: Path
) -> None:
    spec = f"git/{quote(f'file://{client_repo}', safe='')}/main"
    code, events = await run_client(stack.gateway, spec)
    phases = [e.get("phase") for e in events]
    assert code == 0 and phases[-1] == "ready", events[-3:]
    assert phases[0] == "waiting"
    assert "building" in phases and "launching" in phases
    ready = events[-1]
    session = ready["url"].rstrip("/").rsplit("/", 1)[-1]
    assert ready["url"] == stack.session_url(session)
    assert ready["binder_request"] == f"v2/{spec}"
    assert ready["binder_launch_host"] == f"{stack.gateway}/"
    headers = {"Authorization": f"token {ready['token']}"}
    async with http.get(f"{ready['url']}api/contents/index.ipynb", headers=headers) as resp:
        assert resp.status == 200, "the session serves the repository's files"

    # build_only: the image exists now, so the client is told `ready` without a session.
    code, events = await run_client(stack.gateway, spec, "build_only")
    assert code == 0, events
    assert events[-1]["phase"] == "ready" and "url" not in events[-1]
    assert events[-1]["imageName"] == ready["image"]


async def test_official_client_reports_a_missing_ref(stack: Stack, client_repo: Path) -> None:
    spec = f"git/{quote(f'file://{client_repo}', safe='')}/no-such-branch"
    code, events = await run_client(stack.gateway, spec)
    assert code == 1
    assert events[-1]["phase"] == "failed"
    assert "no-such-branch" in events[-1]["message"]
