"""A podman node that hangs (its service stopped: its socket takes connections, nothing answers
them) holds no launch up for longer than the runtime's lookup bound, through the whole stack
(chaos).

The stack runs in a slot of its own with the shared test nodes and one more, `stalled`: a podman
service over storage of the test's own (tests/support/privatenode.py), the only node the test
harms. Its name sorts after the shared nodes', so the first launch (which builds the image) is
placed on one of those; then `stalled` hangs (SIGSTOP). It holds nothing the next launch needs,
yet that launch asks every node for its session and for its image, and before Bindery bounded
those lookups each waited for the slow calls' bound (120 s) on the hung node. Now, as a user
and an operator notice it:
- the launch is ready within the lookup bound and a start (the hung node's lookups fail after
  the bound; by then its ping has failed and it is down, so nothing more is asked of it);
- the gateway's /health names the node down (and stays 200), the scheduler's
  `bindery_node_up` says 0;
- the service let go on (SIGCONT), both name it up again within a few seconds.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bindery.bus.eventlog import read
from bindery.events import PodScheduled
from bindery.runtimes.podman import NODE_LOOKUP_SECONDS
from tests.support.eventually import eventually
from tests.support.gitrepo import make_repo
from tests.support.privatenode import PrivateNode, private_node
from tests.support.stack import (
    LOG_DIR,
    NODES,
    SLOT,
    Slot,
    Stack,
    build_path,
    launch,
    nodes_setting,
    started_stack,
)

pytestmark = pytest.mark.chaos

#: Past the slots test runs use (and the other chaos tests' SLOT + 50, + 60): its own.
HANG_SLOT = Slot(SLOT + 70)
STALLED = "stalled"
#: Upper bound for a launch of an image that exists, with a hung node among the nodes: the
#: lookup bound, a start and Jupyter's answer on a loaded machine. Without the bound the
#: launch waited for the hung node for minutes.
READY_WITHIN = NODE_LOOKUP_SECONDS + 30
#: Upper bound for a node's state to reach /health and the scheduler's gauge: a ping (bounded
#: by the runtime), the nodes loop's second, a survey, on a loaded machine.
NOTICED_WITHIN = 30


@pytest.fixture(scope="module")
def stalled_node() -> Iterator[PrivateNode]:
    with private_node(STALLED, f"stalled-{SLOT}") as node:
        yield node


@pytest.fixture(scope="module")
def hang_stack(stalled_node: PrivateNode) -> Iterator[Stack]:
    yield from started_stack(
        LOG_DIR / "node-hang",
        HANG_SLOT,
        settings={"BINDERY_NODES": nodes_setting({STALLED: stalled_node.url})},
    )


async def gateway_nodes(http: aiohttp.ClientSession, stack: Stack) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{stack.gateway}/health") as resp:
        return resp.status, dict((await resp.json())["nodes"])


async def node_up_gauge(http: aiohttp.ClientSession, stack: Stack) -> str:
    """The scheduler's `bindery_node_up` for the stalled node: "1.0" or "0.0"."""
    async with http.get(stack.health_url("scheduler").replace("/health", "/metrics")) as resp:
        text = await resp.text()
    prefix = f'bindery_node_up{{node="{STALLED}"}} '
    return next(
        (line.removeprefix(prefix) for line in text.splitlines() if line.startswith(prefix)), ""
    )


async def placed_on(stack: Stack, launch_id: str) -> list[str]:
    url = stack.env["BINDERY_AMQP_URL"]
    return [
        r.event.node
        async for r in read(url, launch_id=launch_id)
        if isinstance(r.event, PodScheduled)
    ]


async def test_a_hung_node_holds_no_launch_up_and_is_named_down_then_up_again(
    hang_stack: Stack, stalled_node: PrivateNode, http: aiohttp.ClientSession, repos: Path
) -> None:
    stack = hang_stack
    repo = repos / f"node-hang-{uuid.uuid4().hex[:8]}"
    make_repo(repo, {"README.md": "a launch beside a node that hangs\n"})
    path = build_path(f"file://{repo}", "main")

    first = (await launch(http, stack.gateway, path))[-1]  # builds the image
    assert first["phase"] == "ready", first
    assert (await placed_on(stack, first["launch_id"]))[0] in NODES

    stalled_node.hang()
    began = time.monotonic()
    async with asyncio.timeout(READY_WITHIN):
        again = await launch(http, stack.gateway, path)
    took = time.monotonic() - began
    assert again[-1]["phase"] == "ready", again[-5:]
    placed = await placed_on(stack, again[-1]["launch_id"])
    assert len(placed) == 1 and placed[0] in NODES, placed
    print(f"ready {took:.1f} s after the launch began, a node hung")

    async def named(up: bool) -> bool:
        status, nodes = await gateway_nodes(http, stack)
        gauge = await node_up_gauge(http, stack)
        return status == 200 and nodes[STALLED] is up and gauge == ("1.0" if up else "0.0")

    await eventually(
        lambda: named(up=False), within=NOTICED_WITHIN, every=0.5, what="the node named down"
    )
    stalled_node.resume()
    began = time.monotonic()
    await eventually(
        lambda: named(up=True), within=NOTICED_WITHIN, every=0.2, what="the node named up again"
    )
    print(f"named up {time.monotonic() - began:.1f} s after it went on")
