"""`GET /api/builds/<id>/log` on the started stack (issue 12): many requests for one build are
served by one read over the gateway's one broker connection for build logs; a finished log is
then answered from the gateway's cache, with that connection gone; ids of no build are 404 with
a message. A gateway replica started mid-build shows a launch following that build the whole
log, each line once (issue 15): it runs beside the stack's, on the gateway's port + 14 (past
those the other replica tests use)."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.eventually import eventually
from tests.support.gitrepo import make_repo
from tests.support.stack import VHOST, Stack, build_path, launch, launch_events

BUILD_LINE = re.compile(r"Build (?P<id>[0-9a-f]{20}) on \S+: its log stays at")
READER = "gateway build-log reader"
MID_BUILD_GATEWAY_OFFSET = 14
#: Long enough for a gateway to start and a launch through it to join the build.
POSTBUILD_SECONDS = 30
ANSWERS = re.compile(r'^bindery_gateway_build_log_answers_total\{source="(\w+)"\} (\S+)$', re.M)


def reader_connections() -> list[str]:
    """The broker's ids of the gateway's build-log connections in this stack's virtual host
    (rabbitmqctl's table: JSON would give ids close_connection does not take)."""
    listed = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "vhost", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = [line.split("\t", 2) for line in listed.splitlines()]
    return [pid for vhost, pid, properties in rows if vhost == VHOST and READER in properties]


async def answers(http: aiohttp.ClientSession, stack: Stack) -> dict[str, float]:
    """The gateway's count of build-log requests by how they were answered."""
    async with http.get(f"{stack.gateway}/metrics") as resp:
        text = await resp.text()
    return {source: float(value) for source, value in ANSWERS.findall(text)}


@pytest.fixture(scope="module")
async def build_id(stack: Stack, http: aiohttp.ClientSession, repos: Path) -> str:
    """A finished build (build only: no session), whose log nobody has asked for yet."""
    repo = repos / "build-logs"
    make_repo(
        repo,
        {"requirements.txt": "", "postBuild": "#!/bin/bash\necho build-log-reads-say-hello\n"},
    )
    path = build_path(f"file://{repo}", "main") + "?build_only=true"
    events = await launch(http, stack.gateway, path)
    assert events[-1]["phase"] == "ready", events[-3:]
    ids = {m["id"] for event in events for m in BUILD_LINE.finditer(str(event.get("message")))}
    assert len(ids) == 1, ids
    return ids.pop()


async def test_many_requests_for_one_build_are_one_read_over_one_connection(
    stack: Stack, http: aiohttp.ClientSession, build_id: str
) -> None:
    before = await answers(http, stack)

    async def get() -> tuple[int, Any]:
        async with http.get(f"{stack.gateway}/api/builds/{build_id}/log") as resp:
            return resp.status, await resp.json()

    got = await asyncio.gather(*(get() for _ in range(40)))

    assert {status for status, _ in got} == {200}
    logs = [body for _, body in got]
    assert all(body == logs[0] for body in logs)
    kept = logs[0]
    assert kept["build_id"] == build_id and kept["complete"] is True
    messages = [line["message"] for line in kept["lines"]]
    assert BUILD_LINE.match(messages[0])
    assert any("build-log-reads-say-hello" in message for message in messages)
    assert messages[-1].startswith(f"Build {build_id} finished")

    after = await answers(http, stack)
    assert after.get("read", 0) - before.get("read", 0) == 1, "one read of the stream"
    assert len(reader_connections()) == 1, "the gateway holds one connection for build logs"


async def test_a_finished_log_is_answered_from_the_cache_without_the_broker(
    stack: Stack, http: aiohttp.ClientSession, build_id: str
) -> None:
    url = f"{stack.gateway}/api/builds/{build_id}/log"
    async with http.get(url) as resp:
        assert resp.status == 200
        first = await resp.json()

    for pid in await asyncio.to_thread(reader_connections):
        await asyncio.to_thread(
            subprocess.run,
            ["rabbitmqctl", "-q", "close_connection", pid, "test: the stream is unreachable"],
            check=True,
            capture_output=True,
        )
    await eventually(
        lambda: not reader_connections(),
        within=30,
        every=0.2,
        what="the broker closed the stream reader's connection",
    )

    async with http.get(url) as resp:
        assert resp.status == 200
        assert await resp.json() == first
    assert reader_connections() == [], "no read: the answer came from the cache"

    # The next read connects again.
    unknown = f"{int(time.time() * 1000) - 3_600_000:012x}00000000"
    async with http.get(f"{stack.gateway}/api/builds/{unknown}/log") as resp:
        assert resp.status == 404
        assert f"No log of build {unknown} is kept" in (await resp.json())["message"]
    assert len(reader_connections()) == 1


@pytest.mark.parametrize(
    ("build_id", "says"),
    [
        ("not-a-build", "is not a build id"),
        ("ffffffffffffffffffff", "is not a build id"),  # past the year 9999: was a 500
        ("0" * 20, "No log of build"),  # 1970: before the stream's retention
        (f"{int(time.time() * 1000) - 60_000:012x}deadbeef", "No log of build"),
    ],
)
async def test_ids_of_no_build_are_404_with_a_message(
    stack: Stack, http: aiohttp.ClientSession, build_id: str, says: str
) -> None:
    async with http.get(f"{stack.gateway}/api/builds/{build_id}/log") as resp:
        assert resp.status == 404
        assert says in (await resp.json())["message"]


async def test_a_launch_through_a_gateway_started_mid_build_shows_the_whole_log_once(
    stack: Stack, http: aiohttp.ClientSession, repos: Path
) -> None:
    repo = repos / "build-logs-mid-build"
    ticks = POSTBUILD_SECONDS * 2
    make_repo(
        repo,
        {
            "requirements.txt": "",
            "postBuild": "#!/bin/bash\n"
            f"for i in $(seq 1 {ticks}); do echo tick-$i; sleep 0.5; done\n",
        },
    )
    path = build_path(f"file://{repo}", "main") + "?build_only=true"
    first: list[dict[str, Any]] = []

    async def follow_first() -> None:
        async for event in launch_events(http, stack.gateway, path):
            first.append(event)

    following = asyncio.create_task(follow_first())
    await eventually(
        lambda: any("tick-" in str(event.get("message")) for event in first),
        within=600,
        what="the first launch's build running its postBuild",
    )

    port = stack.slot.gateway_port + MID_BUILD_GATEWAY_OFFSET
    url = f"http://127.0.0.1:{port}"
    saved = dict(stack.env)
    stack.env.update(
        BINDERY_PORT=str(port), BINDERY_PUBLIC_URL=url, BINDERY_SESSIONS_HOST=f"localhost:{port}"
    )
    try:
        gateway = stack.spawn("gateway", None, "gateway-mid-build")
    finally:
        stack.env.clear()
        stack.env.update(saved)
    try:

        async def healthy() -> bool:
            assert gateway.poll() is None, "the second gateway exited"
            async with http.get(f"{url}/health") as resp:
                return resp.status == 200

        await eventually(
            healthy,
            within=60,
            every=0.2,
            what="the second gateway",
            ignoring=(aiohttp.ClientError,),
        )
        events = await launch(http, url, path)
    finally:
        gateway.terminate()
        await asyncio.to_thread(gateway.wait, 30)
    await following

    assert events[-1]["phase"] == "ready", events[-3:]
    assert first[-1]["phase"] == "ready", first[-3:]
    assert any(event["message"].startswith("Building image") for event in events), (
        "the launch joined the build in flight"
    )
    ids = {m["id"] for event in events for m in BUILD_LINE.finditer(str(event.get("message")))}
    assert len(ids) == 1, ids
    async with http.get(f"{stack.gateway}/api/builds/{ids.pop()}/log") as resp:
        kept = await resp.json()
    assert kept["complete"] is True
    # As the launch shows them: each ends its line.
    log = [m if m.endswith("\n") else m + "\n" for m in (x["message"] for x in kept["lines"])]
    shown = [event["message"] for event in events if event["message"] in set(log)]
    assert shown[0] == log[0] and BUILD_LINE.match(shown[0]), "from the log's first line"
    assert shown == log, "every line of the build, once, in order"
