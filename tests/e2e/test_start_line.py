"""Fair bursts through the whole started stack (issue 16): with one start at a time per node
(`BINDERY_START_CONCURRENCY=1`), a burst of launches of a built image waits in each node's
start line, each launch is told its place, and each node's sessions become ready in the order
the launches arrived. Orders are compared, never times."""

from __future__ import annotations

import asyncio
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.e2e.test_scheduler import session_of, stop_session, until_gone
from tests.support.gitrepo import make_repo
from tests.support.stack import INSTANCE, NODES, Stack, build_path, launch, launch_events

pytestmark = pytest.mark.e2e

LAUNCHES = 6

# Jupyter starts only after this script's pause, so each start holds its node's only slot for
# seconds: the next launches of the burst surely arrive while it does, and wait in line.
SLOW_START = """#!/bin/sh
sleep 5
exec "$@"
"""


@pytest.fixture(scope="module")
def slow_start_repo(repos: Path) -> str:
    path = repos / "slow-start"
    make_repo(path, {"README.md": "start line e2e\n", "start": SLOW_START})
    return f"file://{path}"


def node_of(session: str) -> str:
    """The node running `session`, as that node's podman says."""
    for node, url in NODES.items():
        mine = ["--filter", f"label=bindery.instance={INSTANCE}"]
        found = subprocess.run(
            [
                "podman",
                "--url",
                url,
                "ps",
                "-q",
                *mine,
                "--filter",
                f"label=bindery.session={session}",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        if found.stdout.split():
            return node
    raise AssertionError(f"no node runs {session}")


async def test_a_burst_waits_its_turn_told_its_place_and_each_node_starts_in_arrival_order(
    stack: Stack, http: aiohttp.ClientSession, slow_start_repo: str
) -> None:
    path = build_path(slow_start_repo, "main")
    built = await launch(http, stack.gateway, path)  # builds the image once
    assert built[-1]["phase"] == "ready", built[-1]
    await stop_session(stack, built[-1])
    await until_gone(f"bindery.repo={slow_start_repo}")

    events: dict[int, list[dict[str, Any]]] = defaultdict(list)
    ready_order: list[int] = []
    """Launch numbers in the order their sessions became ready."""

    async def follow(number: int, placed: asyncio.Event) -> None:
        async for event in launch_events(http, stack.gateway, path):
            events[number].append(event)
            in_line = event["phase"] == "waiting" and event.get("queue_limit") == "starting"
            if in_line or event["phase"] == "launching":
                placed.set()  # it reached its node's line: the next launch may arrive
        if events[number][-1]["phase"] == "ready":
            ready_order.append(number)

    with stack.settings("scheduler", BINDERY_START_CONCURRENCY="1"):
        followers = []
        for number in range(LAUNCHES):
            placed = asyncio.Event()
            follower = asyncio.create_task(follow(number, placed))
            followers.append(follower)
            # Arrival order is launch order: each one reaches the scheduler before the next
            # is asked for (or ends, if it fails: the assertions below say so).
            reached = asyncio.create_task(placed.wait())
            await asyncio.wait(
                (follower, reached), timeout=300, return_when=asyncio.FIRST_COMPLETED
            )
            reached.cancel()
        await asyncio.wait_for(asyncio.gather(*followers), 600)
        readies = {number: launched[-1] for number, launched in events.items()}
        try:
            assert all(r["phase"] == "ready" for r in readies.values()), readies
            by_node: dict[str, list[int]] = defaultdict(list)
            for number in ready_order:
                by_node[node_of(session_of(readies[number]))].append(number)
            for node, numbers in by_node.items():
                assert numbers == sorted(numbers), f"{node} started out of arrival order"

            places = {
                number: [
                    e["queue_position"] for e in launched if e.get("queue_limit") == "starting"
                ]
                for number, launched in events.items()
            }
            assert any(places.values()), "no launch was told its place in a start line"
            for number, told in places.items():
                assert all(p >= 1 for p in told) and told == sorted(told, reverse=True), (
                    f"launch {number} was told {told}: places only move up"
                )
        finally:
            for ready in readies.values():
                if ready["phase"] == "ready":
                    await stop_session(stack, ready)
            await until_gone(f"bindery.repo={slow_start_repo}")
