"""A launch everyone left gives its slot back (issue 13): closing the launch page during the
build cancels the launch once the grace has passed (the stack's BINDERY_ABANDON_GRACE): the
build finishes for the cache, no session ever starts, and the archive says `abandoned`. A page
that comes back within the grace gets its session."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from bindery.bus.eventlog import read
from bindery.runtimes.base import LABEL_LAUNCH
from tests.support.eventually import eventually
from tests.support.gitrepo import make_repo
from tests.support.stack import NODES, Stack, build_path

# Long enough that the build outlives the grace (5 s in the test stack) by far.
SLOW_POSTBUILD = "#!/bin/sh\nsleep 30\n"


def progress_socket_url(stack: Stack, path: str, query: str = "") -> str:
    return stack.gateway.replace("http://", "ws://") + path + query


async def follow_until(
    ws: aiohttp.ClientWebSocketResponse, phases: set[str]
) -> list[dict[str, Any]]:
    """What the launch page receives, up to the first message in one of `phases`."""
    seen: list[dict[str, Any]] = []
    async with asyncio.timeout(600):
        async for message in ws:
            seen.append(json.loads(message.data))
            if seen[-1]["phase"] in phases:
                return seen
    raise AssertionError(f"the stream ended before {phases}: {seen[-3:]}")


def sessions_of(launch_id: str) -> list[str]:
    """Containers of the launch on any node, running or not."""
    found = []
    for url in NODES.values():
        found += subprocess.run(
            ["podman", "--url", url, "ps", "-aq", "--filter", f"label={LABEL_LAUNCH}={launch_id}"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    return found


def archived(stack: Stack, launch_id: str) -> dict[str, Any] | None:
    for path in sorted((stack.log_dir / "archive").glob("events-*.jsonl")):
        for line in path.read_text().splitlines():
            record: dict[str, Any] = json.loads(line)
            if record["launch_id"] == launch_id:
                return record
    return None


async def image_built(stack: Stack, launch_id: str) -> None:
    """Wait until the event log holds the launch's image-built."""
    url = stack.env["BINDERY_AMQP_URL"]
    async with asyncio.timeout(600):
        async for _built in read(url, launch_id=launch_id, event_type="image-built", follow=True):
            return


async def test_closing_the_page_during_the_build_cancels_the_launch(
    stack: Stack, http: aiohttp.ClientSession, repos: Path
) -> None:
    repo = repos / f"abandoned-{uuid.uuid4().hex[:8]}"
    make_repo(repo, {"requirements.txt": "", "postBuild": SLOW_POSTBUILD})
    path = build_path(f"file://{repo}", "main")
    ws = await http.ws_connect(progress_socket_url(stack, path))
    seen = await follow_until(ws, {"building", "failed", "ready"})
    assert seen[-1]["phase"] == "building", seen[-1]
    launch_id = seen[0]["launch_id"]
    await ws.close()  # the person closed the tab

    record = await eventually(
        lambda: archived(stack, launch_id),
        within=120,
        every=0.5,
        what="the abandoned launch archived",
    )
    assert (record["outcome"], record["failure_reason"]) == ("abandoned", "abandoned")

    await image_built(stack, launch_id)  # the build went on, for the cache
    # Nothing answers an ignored image-built: give the scheduler time to have (wrongly) acted.
    await asyncio.sleep(5)
    assert sessions_of(launch_id) == [], "an abandoned launch must not start a session"

    back = await http.ws_connect(progress_socket_url(stack, path, f"?launch_id={launch_id}"))
    last = (await follow_until(back, {"failed", "ready"}))[-1]
    assert (last["phase"], last["reason"]) == ("failed", "abandoned")
    await back.close()


async def test_a_page_back_within_the_grace_gets_its_session(
    stack: Stack, http: aiohttp.ClientSession, repos: Path
) -> None:
    repo = repos / f"reloaded-{uuid.uuid4().hex[:8]}"
    make_repo(repo, {"requirements.txt": "", "postBuild": "#!/bin/sh\nsleep 8\n"})
    path = build_path(f"file://{repo}", "main")
    ws = await http.ws_connect(progress_socket_url(stack, path))
    seen = await follow_until(ws, {"building", "failed", "ready"})
    launch_id = seen[0]["launch_id"]
    await ws.close()  # a reload: the page comes straight back with its launch id

    back = await http.ws_connect(
        progress_socket_url(stack, path, f"?launch_id={launch_id}&after={len(seen) - 1}")
    )
    last = (await follow_until(back, {"failed", "ready"}))[-1]
    await back.close()
    assert last["phase"] == "ready", last
    assert sessions_of(launch_id), "the launch's session runs"
