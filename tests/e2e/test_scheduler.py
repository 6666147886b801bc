"""The scheduler through the whole started stack (issue 5): a launch over its repository's quota
waits at a position the user sees and goes on when a session stops; killing the scheduler while
a session starts leaves one ready session and no orphan. Issue 13: a session shut down from
inside, or killed outside Bindery, gives its seat to the waiting launch and loses its route
within seconds."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bindery.bus import Bus
from bindery.events import IdleDetected, StopReason
from tests.support.eventually import eventually
from tests.support.gitrepo import make_repo
from tests.support.stack import INSTANCE, NODES, Stack, build_path, launch, launch_events


@pytest.fixture(scope="module")
def scheduler_repo(repos: Path) -> str:
    path = repos / "scheduled"
    make_repo(path, {"README.md": "scheduler e2e\n", "requirements.txt": "six==1.16.0\n"})
    return f"file://{path}"


@pytest.fixture(scope="module")
async def built(stack: Stack, http: aiohttp.ClientSession, scheduler_repo: str) -> dict[str, Any]:
    """Build the repository's image once (first launch), then end that session."""
    events = await launch(http, stack.gateway, build_path(scheduler_repo, "main"))
    assert events[-1]["phase"] == "ready", events[-1]
    await stop_session(stack, events[-1])
    return events[-1]


def session_of(ready: dict[str, Any]) -> str:
    return str(ready["url"]).rstrip("/").rsplit("/", 1)[-1]


async def stop_session(stack: Stack, ready: dict[str, Any]) -> None:
    """Ask the scheduler to stop a session, as the culler does when it is idle."""
    bus = Bus(stack.env["BINDERY_AMQP_URL"], "e2e-test", connect_timeout=10)
    await bus.connect()
    try:
        await bus.publish(
            IdleDetected(
                launch_id=ready["launch_id"], session=session_of(ready), reason=StopReason.IDLE
            )
        )
    finally:
        await bus.close()


def containers_with(label: str) -> list[str]:
    """This stack's containers carrying `label` on every node, running or not."""
    found: list[str] = []
    for url in NODES.values():
        mine, wanted = f"label=bindery.instance={INSTANCE}", f"label={label}"
        found += subprocess.run(
            ["podman", "--url", url, "ps", "-aq", "--filter", mine, "--filter", wanted],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()
    return found


async def until_gone(label: str, limit: float = 60) -> None:
    """Wait (bounded) until the stops asked for earlier have removed every container with it."""
    await eventually(
        lambda: not containers_with(label),
        within=limit,
        every=0.2,
        what=f"every container with {label} removed",
    )


async def test_the_third_launch_waits_first_in_line_and_goes_on_when_a_session_stops(
    stack: Stack, http: aiohttp.ClientSession, scheduler_repo: str, built: dict[str, Any]
) -> None:
    path = build_path(scheduler_repo, "main")
    with stack.settings("scheduler", BINDERY_REPO_QUOTA="2"):
        first = await launch(http, stack.gateway, path)
        second = await launch(http, stack.gateway, path)
        assert first[-1]["phase"] == second[-1]["phase"] == "ready"

        third: list[dict[str, Any]] = []
        async for event in launch_events(http, stack.gateway, path):
            third.append(event)
            if event.get("queue_position") == 1:
                assert event["phase"] == "waiting" and event["queue_limit"] == "repository"
                await stop_session(stack, first[-1])
        assert third[-1]["phase"] == "ready", third[-1]
        assert any(e.get("queue_position") == 1 for e in third), "the user saw the position"
        for ready in (second[-1], third[-1]):
            await stop_session(stack, ready)


def first_launching(events: list[dict[str, Any]]) -> int:
    """1-based index of the first `launching` event (the redelivered launch sends another)."""
    return next(n for n, e in enumerate(events, 1) if e["phase"] == "launching")


async def test_a_scheduler_killed_mid_launch_leaves_one_ready_session_and_no_orphan(
    stack: Stack, http: aiohttp.ClientSession, scheduler_repo: str, built: dict[str, Any]
) -> None:
    await until_gone(f"bindery.repo={scheduler_repo}")
    events: list[dict[str, Any]] = []
    async for event in launch_events(http, stack.gateway, build_path(scheduler_repo, "main")):
        events.append(event)
        if event["phase"] == "launching" and len(events) == first_launching(events):
            victim = stack.processes.pop("scheduler")
            victim.kill()  # SIGKILL: no cleanup, the launch's delivery is still unacked
            victim.wait()
            await asyncio.to_thread(stack.start, "scheduler")
    ready = events[-1]
    assert ready["phase"] == "ready", ready
    async with http.get(
        f"{ready['url']}api/status", headers={"Authorization": f"token {ready['token']}"}
    ) as resp:
        assert resp.status == 200
    ours = containers_with(f"bindery.launch-id={ready['launch_id']}")
    assert len(ours) == 1, "one container for the launch, no twin"
    everything = containers_with(f"bindery.repo={scheduler_repo}")
    assert everything == ours, "no container of this repository without a live launch"
    await stop_session(stack, ready)


async def until_stopped(http: aiohttp.ClientSession, ready: dict[str, Any]) -> str:
    """Wait (bounded) until the gateway no longer routes to the session; what it says then."""
    auth = {"Authorization": f"token {ready['token']}", "Accept": "application/json"}

    async def not_routed() -> str | None:
        async with http.get(f"{ready['url']}api/status", headers=auth) as resp:
            return await resp.text() if resp.status == 404 else None

    return await eventually(not_routed, within=30, every=0.2, what="the session's route gone")


async def test_a_session_ending_by_itself_frees_its_seat_and_loses_its_route_within_seconds(
    stack: Stack, http: aiohttp.ClientSession, scheduler_repo: str, built: dict[str, Any]
) -> None:
    path = build_path(scheduler_repo, "main")
    await until_gone(f"bindery.repo={scheduler_repo}")
    with stack.settings("scheduler", BINDERY_REPO_QUOTA="1"):
        first = (await launch(http, stack.gateway, path))[-1]
        assert first["phase"] == "ready", first
        second: list[dict[str, Any]] = []
        async for event in launch_events(http, stack.gateway, path):
            second.append(event)
            if event.get("queue_position") == 1:  # waiting behind the first: shut it down
                auth = {"Authorization": f"token {first['token']}"}
                async with http.post(f"{first['url']}api/shutdown", headers=auth) as resp:
                    assert resp.status == 200, await resp.text()
        assert second[-1]["phase"] == "ready", second[-1]
        assert "shut down" in await until_stopped(http, first)
        await until_gone(f"bindery.session={session_of(first)}")

        survivor = second[-1]
        [container] = containers_with(f"bindery.session={session_of(survivor)}")
        for url in NODES.values():  # outside Bindery, as an operator would
            await asyncio.to_thread(
                subprocess.run, ["podman", "--url", url, "kill", container], capture_output=True
            )
        assert "stopped unexpectedly" in await until_stopped(http, survivor)
        await until_gone(f"bindery.session={session_of(survivor)}")
