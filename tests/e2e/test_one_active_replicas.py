"""Two replicas each of the scheduler, the culler and the archiver (issue 14): one of each is
active and the other stands by (healthy, saying so), so each queue has one consumer, a launch
gets one session and one archive line; the active ones killed (SIGKILL), the standbys take
over within seconds and the next launch is served by them, once.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bindery.bus import Bus, topology
from tests.support.eventually import eventually
from tests.support.gitrepo import make_repo
from tests.support.stack import Stack, build_path, launch, launch_containers, stop_session

pytestmark = pytest.mark.e2e

ONE_ACTIVE = ("scheduler", "culler", "archiver")
#: Past the ports the stack of this slot uses (gateway + 0..10) and the second builder's (+15).
SECOND_HEALTH_PORTS = {service: n for n, service in enumerate(ONE_ACTIVE, start=16)}
QUEUES = {
    str(topology.SCHEDULER.name): "scheduler",
    str(topology.SCHEDULER_STOPS.name): "scheduler",
    str(topology.CULLER.name): "culler",
    str(topology.ARCHIVER.name): "archiver",
}
#: Generous: a loaded machine is slow; only a hang should fail.
TAKEOVER_LIMIT = 90.0


async def role(http: aiohttp.ClientSession, port: int) -> str:
    """What a replica's /health says it is, or "down"."""
    try:
        async with http.get(f"http://127.0.0.1:{port}/health") as resp:
            return str((await resp.json()).get("role", "unknown"))
    except aiohttp.ClientError:
        return "down"


async def until_role(http: aiohttp.ClientSession, port: int, expected: str) -> None:
    async def said() -> bool:
        return await role(http, port) == expected

    await eventually(said, within=TAKEOVER_LIMIT, every=0.3, what=f"port {port} {expected}")


@pytest.fixture
async def seconds(stack: Stack, http: aiohttp.ClientSession) -> AsyncIterator[dict[str, Any]]:
    """A second replica of each one-active service beside the stack's; afterwards the stack's
    own replicas are active again."""
    port = stack.slot.gateway_port
    started = {
        service: stack.spawn(service, port + offset, f"{service}-second")
        for service, offset in SECOND_HEALTH_PORTS.items()
    }
    try:
        for offset in SECOND_HEALTH_PORTS.values():
            await until_role(http, port + offset, "standby")
        yield started
    finally:
        for service, process in started.items():
            if service not in stack.processes or stack.processes[service].poll() is not None:
                stack.processes.pop(service, None)
                await asyncio.to_thread(stack.start, service)
            process.terminate()
            await asyncio.to_thread(process.wait, 30)
        for service in ONE_ACTIVE:
            await until_role(http, stack.slot.health_ports[service], "active")


async def consumers(stack: Stack) -> dict[str, int]:
    bus = Bus(stack.env["BINDERY_AMQP_URL"], "e2e-test", connect_timeout=10)
    await bus.connect()
    try:
        return await bus.consumer_counts(QUEUES)
    finally:
        await bus.close()


async def archive_lines(stack: Stack, launch_id: str) -> list[dict[str, Any]]:
    """The launch's archive lines, once there is one (bounded), and a moment more for a twin."""

    def found() -> list[dict[str, Any]]:
        return [
            record
            for path in (stack.log_dir / "archive").glob("events-*.jsonl")
            for line in path.read_text().splitlines()
            if (record := json.loads(line))["launch_id"] == launch_id
        ]

    await eventually(lambda: asyncio.to_thread(found), every=0.3, what="the launch archived")
    await asyncio.sleep(2)
    return await asyncio.to_thread(found)


async def launched_once(stack: Stack, http: aiohttp.ClientSession, repo: Path) -> None:
    events = await launch(http, stack.gateway, build_path(f"file://{repo}", "main"))
    ready = events[-1]
    assert ready["phase"] == "ready", events[-5:]
    try:
        ours = launch_containers(ready["launch_id"], stack.slot.instance)
        assert sum(len(ids) for ids in ours.values()) == 1, f"one session per launch: {ours}"
        lines = await archive_lines(stack, ready["launch_id"])
        assert [line["outcome"] for line in lines] == ["ready"], lines
    finally:
        stop_session(ready["launch_id"])


async def test_one_replica_of_each_is_active_and_a_standby_takes_over_when_it_is_killed(
    stack: Stack, http: aiohttp.ClientSession, repos: Path, seconds: dict[str, Any]
) -> None:
    repo = repos / "one-active-replicas"
    make_repo(repo, {"requirements.txt": "", "README.md": "two of each\n"})
    for service in ONE_ACTIVE:
        assert await role(http, stack.slot.health_ports[service]) == "active"
    assert await consumers(stack) == dict.fromkeys(QUEUES, 1)
    await launched_once(stack, http, repo)

    for service in ONE_ACTIVE:
        victim = stack.processes.pop(service)
        victim.kill()
        await asyncio.to_thread(victim.wait)
    for offset in SECOND_HEALTH_PORTS.values():
        await until_role(http, stack.slot.gateway_port + offset, "active")
    assert await consumers(stack) == dict.fromkeys(QUEUES, 1)
    await launched_once(stack, http, repo)
