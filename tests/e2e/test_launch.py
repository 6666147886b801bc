"""A repository link becomes a working Jupyter session, through all five services (issue 2)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import aiohttp
import pytest

from tests.support.gitrepo import make_repo, notebook
from tests.support.stack import Stack, build_path, launch, running_sessions

pytestmark = pytest.mark.e2e

REQUIREMENTS = "pyfiglet==1.0.2\n"  # not in the base image: proves requirements.txt ran
PROBE = "import pyfiglet; print('answer', pyfiglet.__name__.upper(), 6 * 7)"


@pytest.fixture(scope="module")
def sample_repo(repos: Path) -> Path:
    path = repos / "sample"
    make_repo(path, {"requirements.txt": REQUIREMENTS, "index.ipynb": notebook(PROBE)})
    return path


@pytest.fixture(scope="module")
async def first_launch(stack: Stack, http: aiohttp.ClientSession, sample_repo: Path) -> list[dict]:
    return await launch(http, stack.gateway, build_path(f"file://{sample_repo}", "main"))


def phases(events: list[dict]) -> list[str]:
    return [event["phase"] for event in events]


async def run_in_kernel(http: aiohttp.ClientSession, url: str, token: str, code: str) -> str:
    headers = {"Authorization": f"token {token}"}
    async with http.post(f"{url}api/kernels", headers=headers, json={}) as resp:
        assert resp.status == 201, await resp.text()
        kernel = await resp.json()
    ws_url = url.replace("http://", "ws://") + f"api/kernels/{kernel['id']}/channels"
    msg_id = uuid.uuid4().hex
    request = {
        "header": {
            "msg_id": msg_id,
            "msg_type": "execute_request",
            "username": "test",
            "session": uuid.uuid4().hex,
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {
            "code": code,
            "silent": False,
            "store_history": False,
            "user_expressions": {},
            "allow_stdin": False,
        },
        "channel": "shell",
    }
    output = []
    async with http.ws_connect(ws_url, headers=headers) as ws:
        await ws.send_str(json.dumps(request))
        async for message in ws:
            data = json.loads(message.data)
            if data.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if data["msg_type"] == "stream":
                output.append(data["content"]["text"])
            elif data["msg_type"] == "error":
                output.append("\n".join(data["content"]["traceback"]))
            elif data["msg_type"] == "status" and data["content"]["execution_state"] == "idle":
                break
    return "".join(output)


async def test_link_becomes_a_working_session(
    stack: Stack, http: aiohttp.ClientSession, first_launch: list[dict]
) -> None:
    seen = phases(first_launch)
    assert seen[-1] == "ready", first_launch[-1]
    assert "building" in seen
    assert any(e["phase"] == "building" and e.get("message") for e in first_launch)
    ready = first_launch[-1]
    url, token = ready["url"], ready["token"]
    assert url.startswith(f"{stack.gateway}/user/")
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

    assert "answer PYFIGLET 42" in await run_in_kernel(http, url, token, PROBE)


async def test_second_launch_of_the_same_ref_skips_the_build(
    stack: Stack, http: aiohttp.ClientSession, sample_repo: Path, first_launch: list[dict]
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


async def test_session_survives_a_gateway_restart(
    stack: Stack, http: aiohttp.ClientSession, first_launch: list[dict]
) -> None:
    ready = first_launch[-1]
    stack.restart("gateway")
    headers = {"Authorization": f"token {ready['token']}"}
    async with http.get(f"{ready['url']}api/status", headers=headers) as resp:
        assert resp.status == 200
