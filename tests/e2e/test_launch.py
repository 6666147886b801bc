"""A repository link becomes a working Jupyter session, through all five services (issue 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bindery.gateway.sessionauth import TOKEN_COOKIE
from tests.support.gitrepo import make_repo, notebook
from tests.support.kernel import run_code
from tests.support.stack import Stack, build_path, launch, running_sessions

REQUIREMENTS = "pyfiglet==1.0.2\n"  # not in the base image: proves requirements.txt ran
PROBE = "import pyfiglet; print('answer', pyfiglet.__name__.upper(), 6 * 7)"


@pytest.fixture(scope="module")
def sample_repo(repos: Path) -> Path:
    path = repos / "sample"
    make_repo(path, {"requirements.txt": REQUIREMENTS, "index.ipynb": notebook(PROBE)})
    return path


@pytest.fixture(scope="module")
async def first_launch(
    stack: Stack, http: aiohttp.ClientSession, sample_repo: Path
) -> list[dict[str, Any]]:
    return await launch(http, stack.gateway, build_path(f"file://{sample_repo}", "main"))


def phases(events: list[dict[str, Any]]) -> list[str]:
    return [event["phase"] for event in events]


async def test_link_becomes_a_working_session(
    stack: Stack, http: aiohttp.ClientSession, first_launch: list[dict[str, Any]]
) -> None:
    seen = phases(first_launch)
    assert seen[-1] == "ready", first_launch[-1]
    assert "building" in seen
    assert any(e["phase"] == "building" and e.get("message") for e in first_launch)
    ready = first_launch[-1]
    url, token = ready["url"], ready["token"]
    assert url == stack.session_url(url.rstrip("/").rsplit("/", 1)[-1]), "an origin of its own"
    assert ready["image"] and ready["launch_id"]

    async with http.get(f"{url}api/status", headers={"Authorization": f"token {token}"}) as resp:
        assert resp.status == 200
        assert "started" in await resp.json()
    async with http.get(f"{url}api/status?token={token}") as resp:
        assert resp.status == 200
    async with http.get(f"{url}api/status", allow_redirects=False) as resp:
        assert resp.status in {401, 403, 302}
        assert "started" not in await resp.text()
    async with http.get(
        f"{url}api/contents/index.ipynb", headers={"Authorization": f"token {token}"}
    ) as resp:
        assert resp.status == 200, "the repository's files are in the session"

    assert "answer PYFIGLET 42" in (await run_code(http, url, token, PROBE)).output


async def test_second_launch_of_the_same_ref_skips_the_build(
    stack: Stack, http: aiohttp.ClientSession, sample_repo: Path, first_launch: list[dict[str, Any]]
) -> None:
    assert first_launch[-1]["phase"] == "ready"
    again = await launch(http, stack.gateway, build_path(f"file://{sample_repo}", "main"))
    assert phases(again)[-1] == "ready", again[-1]
    assert "building" not in phases(again)
    assert again[-1]["image"] == first_launch[-1]["image"]
    assert again[-1]["url"] != first_launch[-1]["url"], "each launch gets its own session"


async def test_unknown_ref_fails_with_a_message_naming_it(
    stack: Stack, http: aiohttp.ClientSession, sample_repo: Path
) -> None:
    before = set(running_sessions())
    events = await launch(
        http, stack.gateway, build_path(f"file://{sample_repo}", "no-such-branch")
    )
    assert events[-1]["phase"] == "failed"
    assert "no-such-branch" in events[-1]["message"]
    assert set(running_sessions()) == before, "a failed launch leaves no container behind"


async def reload(http: aiohttp.ClientSession, ready: dict[str, Any]) -> str:
    """Where a tab open on the session lands when it reloads, on the session's cookie alone (as
    the handoff left it, no token in the address): its status and final path."""
    cookie = f"{TOKEN_COOKIE}={ready['token']}"
    async with http.get(f"{ready['url']}tree", headers={"Cookie": cookie}) as resp:
        return f"{resp.status} {resp.url.path}"


@pytest.mark.parametrize("how", ["terminated", "killed"])
async def test_session_survives_a_gateway_restart(
    stack: Stack, http: aiohttp.ClientSession, first_launch: list[dict[str, Any]], how: str
) -> None:
    """Killed (SIGKILL) while the session is ready, nothing of the gateway's memory survives:
    the gateway started again finds the session's route among what the nodes run."""
    ready = first_launch[-1]
    opened = await reload(http, ready)
    assert opened.startswith("200 ") and "login" not in opened, opened
    if how == "terminated":
        stack.restart("gateway")
    else:
        victim = stack.processes.pop("gateway")
        victim.kill()
        victim.wait()
        stack.start("gateway")
    headers = {"Authorization": f"token {ready['token']}"}
    async with http.get(f"{ready['url']}api/status", headers=headers) as resp:
        assert resp.status == 200
    assert await reload(http, ready) == opened, "the open tab works again after a reload"
