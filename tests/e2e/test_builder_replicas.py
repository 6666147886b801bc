"""Builds with two builder replicas: concurrent launches share one build and all see its log;
a builder killed (SIGKILL) mid-build or mid-push hands the launch to the other, which finishes
it; the log stays readable (issues 3 and 14)."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.eventually import eventually
from tests.support.gitrepo import make_repo
from tests.support.stack import (
    GATEWAY_PORT,
    HEALTH_PORTS,
    REPO,
    SLOT,
    Stack,
    build_path,
    launch,
)

BUILD_LINE = re.compile(r"Build (?P<id>[0-9a-f]{20}) on (?P<replica>\S+): its log stays at")
STACK_REPLICA = f"{socket.gethostname().lower()}-{HEALTH_PORTS['builder']}"
# Past the ports the stack of this slot uses (gateway + 0..9).
SECOND_HEALTH_PORT = GATEWAY_PORT + 15
# Unique on the machine: a builder removes the build cgroups of its name's prefix at start, so a
# replica of the same name in another stack would kill this one's builds.
SECOND_REPLICA = f"second-{SLOT}"


@pytest.fixture
async def second_builder(stack: Stack) -> AsyncIterator[subprocess.Popen[bytes]]:
    """Another builder replica beside the stack's, started for each test: a test may kill it,
    and one started afresh removes what a killed one of its name left (its build cgroups)."""
    env = dict(stack.env)
    env.update(BINDERY_HEALTH_PORT=str(SECOND_HEALTH_PORT), BINDERY_BUILDER_REPLICA=SECOND_REPLICA)

    def start() -> subprocess.Popen[bytes]:
        with (stack.log_dir / "builder-second.log").open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "bindery.builder"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )

    def healthy() -> bool:
        assert proc.poll() is None, "the second builder exited"
        with urllib.request.urlopen(f"http://127.0.0.1:{SECOND_HEALTH_PORT}/health", timeout=2):
            return True

    proc = await asyncio.to_thread(start)
    await eventually(
        lambda: asyncio.to_thread(healthy),
        within=60,
        every=0.2,
        what="the second builder healthy",
        ignoring=(OSError,),
    )
    yield proc
    proc.terminate()
    await asyncio.to_thread(proc.wait, 30)


def builds_seen(events: list[dict[str, Any]]) -> list[re.Match[str]]:
    return [
        match
        for event in events
        if (match := BUILD_LINE.search(str(event.get("message", "")))) is not None
    ]


async def test_three_launches_at_once_share_one_build_and_all_see_its_log(
    stack: Stack,
    http: aiohttp.ClientSession,
    repos: Path,
    second_builder: subprocess.Popen[bytes],
) -> None:
    repo = repos / "replicas-concurrent"
    make_repo(
        repo,
        {
            "requirements.txt": "pyfiglet==1.0.2\n",
            # Long enough that all three launches arrive while it builds.
            "postBuild": "#!/bin/bash\necho concurrent-postbuild-says-hello\nsleep 4\n",
        },
    )
    path = build_path(f"file://{repo}", "main")
    launches = await asyncio.gather(*(launch(http, stack.gateway, path) for _ in range(3)))

    for events in launches:
        assert events[-1]["phase"] == "ready", events[-3:]
        # Published once per build, the line reaches each launch following it once.
        hellos = [e for e in events if "concurrent-postbuild-says-hello" in str(e.get("message"))]
        assert len(hellos) == 1, hellos
    assert len({events[-1]["url"] for events in launches}) == 3, "three sessions"
    build_ids = {match["id"] for events in launches for match in builds_seen(events)}
    assert len(build_ids) == 1, f"one build, not {build_ids}"

    # The whole log, afterwards, from any gateway: the build-log stream keeps it.
    build_id = build_ids.pop()
    async with http.get(f"{stack.gateway}/api/builds/{build_id}/log") as resp:
        assert resp.status == 200, await resp.text()
        kept = await resp.json()
    assert kept["complete"] is True
    messages = [line["message"] for line in kept["lines"]]
    assert BUILD_LINE.search(messages[0])
    assert any("concurrent-postbuild-says-hello" in message for message in messages)
    assert messages[-1].startswith(f"Build {build_id} finished")
    async with http.get(f"{stack.gateway}/api/builds/{'0' * 20}/log") as resp:
        assert resp.status == 404


#: What a build's log shows when the kill comes, by launch phase: its postBuild running
#: (mid-build), or the first line of the push to the registry (mid-push).
KILL_AT = {
    "mid-build": re.compile(r"kill-the-builder-now"),
    "mid-push": re.compile(r"^Pushing \S+"),
}


@pytest.mark.parametrize("phase", list(KILL_AT))
async def test_a_builder_killed_hands_the_launch_to_another(
    stack: Stack,
    http: aiohttp.ClientSession,
    repos: Path,
    second_builder: subprocess.Popen[bytes],
    phase: str,
) -> None:
    repo = repos / f"replicas-kill-{phase}"
    make_repo(
        repo,
        {
            "requirements.txt": "pyfiglet==1.0.2\n",
            # A build of its own per phase; mid-build, long enough to be killed in.
            "postBuild": f"#!/bin/bash\necho kill-the-builder-now {phase}\nsleep 8\n",
        },
    )
    processes = {STACK_REPLICA: stack.processes["builder"], SECOND_REPLICA: second_builder}
    events: list[dict[str, Any]] = []
    killed = ""
    async with http.get(
        stack.gateway + build_path(f"file://{repo}", "main"),
        headers={"Accept": "text/event-stream"},
    ) as resp:
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if not line.startswith("data:"):
                continue
            events.append(json.loads(line[5:]))
            message = str(events[-1].get("message", ""))
            if KILL_AT[phase].search(message) and not killed:
                killed = builds_seen(events)[-1]["replica"]
                processes[killed].send_signal(signal.SIGKILL)
                processes[killed].wait()
            if events[-1]["phase"] in {"ready", "failed"}:
                break
    if killed == STACK_REPLICA:
        stack.processes.pop("builder")
        stack.start("builder")

    assert killed, f"the build never reached {phase}"
    assert events[-1]["phase"] == "ready", events[-3:]
    builds = builds_seen(events)
    assert len({match["id"] for match in builds}) == 2, "the build ran again"
    assert builds[-1]["replica"] != killed, "retried by the replica still alive"
