"""A podman node that dies with a session on it, through the whole stack (issue 14, chaos).

The stack runs in a slot of its own (its ports, virtual host and podman label) with the shared
test nodes and one more, `doomed`: a podman service over storage of the test's own
(tests/support/privatenode.py), the only node the test harms. A fresh repository's image is on
no node (builds land in the build sandbox's store), every node is empty and the same machine's
memory, so placement's tie goes to the name (`Cluster.choose`) and `doomed` sorts first: the
launch lands there, which the test checks before it goes on.

"Node dies" means its machine lost its power: the podman service, each container's conmon and
the session's processes end at the same instant (SIGKILL; `PrivateNode.power_off`), so nothing
cleans up after itself. Then, as a user and an operator notice it:
- the gateway's /health names the node down (and stays 200: other nodes run sessions), the
  scheduler's `bindery_node_up` says 0;
- within `BINDERY_NODE_LOST_SECONDS` (small here) the session's address no longer routes and
  says why (`node_lost`);
- its seat is free: the repository's quota is one session, and the launch again is placed on a
  surviving node without queueing and becomes ready;
- the event log holds the lost launch's one `pod-ready` and one `pod-stopped` (`node_lost`), and
  the archive its one line (`ready`: the archive records launches, not their ends);
- nothing is orphaned: the gateway routes exactly the one session that runs, and when the node
  is back (its service started again over the same storage) the scheduler removes the container
  it left, with no second `pod-stopped`.
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from bindery.bus.eventlog import read
from bindery.events import Event, PodScheduled, PodStopped, StopReason
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

#: Past the slots test runs use (and the chaos tests' SLOT + 50): ports, vhost, label its own.
DEATH_SLOT = Slot(SLOT + 60)
DOOMED = "doomed"
NODE_LOST_SECONDS = 3
#: Upper bound for the page to learn of the loss: the grace, a reconcile pass on each side of
#: it and the event's way to the gateway, on a loaded machine.
LOSS_NOTICED_WITHIN = 60


@pytest.fixture(scope="module")
def doomed_node() -> Iterator[PrivateNode]:
    with private_node(DOOMED, f"doomed-{SLOT}") as node:
        yield node


@pytest.fixture(scope="module")
def death_stack(doomed_node: PrivateNode) -> Iterator[Stack]:
    yield from started_stack(
        LOG_DIR / "node-death",
        DEATH_SLOT,
        settings={
            "BINDERY_NODES": nodes_setting({DOOMED: doomed_node.url}),
            "BINDERY_NODE_LOST_SECONDS": str(NODE_LOST_SECONDS),
            # A survey a second: the node is noticed down, and lost, within seconds.
            "BINDERY_RECONCILE_INTERVAL": "1",
            # One session per repository: a seat the lost session kept would queue the relaunch.
            "BINDERY_REPO_QUOTA": "1",
        },
    )


def session_of(ready: dict[str, Any]) -> str:
    return str(ready["url"]).rstrip("/").rsplit("/", 1)[-1]


async def routed_status(http: aiohttp.ClientSession, ready: dict[str, Any]) -> int:
    headers = {"Authorization": f"token {ready['token']}"}
    async with http.get(f"{ready['url']}api/status", headers=headers) as resp:
        return resp.status


async def gateway_health(http: aiohttp.ClientSession, stack: Stack) -> tuple[int, dict[str, Any]]:
    async with http.get(f"{stack.gateway}/health") as resp:
        return resp.status, dict(await resp.json())


async def logged(stack: Stack, launch_id: str) -> list[Event]:
    """The launch's distinct events in the event log, oldest first."""
    events = {
        r.event.event_id: r.event
        async for r in read(stack.env["BINDERY_AMQP_URL"], launch_id=launch_id)
    }
    return list(events.values())


def containers(url: str, stack: Stack) -> list[str]:
    """Names of this stack's containers on the node at `url`, running or not."""
    mine = f"label=bindery.instance={stack.slot.instance}"
    listed = subprocess.run(
        ["podman", "--url", url, "ps", "-a", "--format", "{{.Names}}", "--filter", mine],
        capture_output=True,
        text=True,
        check=True,
    )
    return sorted(listed.stdout.split())


async def test_a_dead_node_ends_its_session_once_frees_its_seat_and_leaves_nothing_behind(
    death_stack: Stack, doomed_node: PrivateNode, http: aiohttp.ClientSession, repos: Path
) -> None:
    stack = death_stack
    repo = repos / f"node-death-{uuid.uuid4().hex[:8]}"
    make_repo(repo, {"README.md": "a session on a machine that dies\n"})
    path = build_path(f"file://{repo}", "main")

    lost = (await launch(http, stack.gateway, path))[-1]
    assert lost["phase"] == "ready", lost
    scheduled = [e for e in await logged(stack, lost["launch_id"]) if isinstance(e, PodScheduled)]
    assert [e.node for e in scheduled] == [DOOMED], "the session runs on the node that dies"
    assert await routed_status(http, lost) == 200

    assert doomed_node.power_off(), "the session's processes were running"

    # The operator's view: the node is down, the gateway still serves (other nodes run).
    async def node_reported_down() -> dict[str, Any] | None:
        status, body = await gateway_health(http, stack)
        return body if status == 200 and body["nodes"][DOOMED] is False else None

    await eventually(node_reported_down, within=30, every=0.5, what="/health names the node down")
    metrics_url = stack.health_url("scheduler").replace("/health", "/metrics")

    async def node_up_gauge_zero() -> bool:
        async with http.get(metrics_url) as resp:
            return f'bindery_node_up{{node="{DOOMED}"}} 0.0' in await resp.text()

    await eventually(node_up_gauge_zero, within=30, every=0.5, what="bindery_node_up 0")

    # The user's view: the session's address says it ended, and why.
    async def ended() -> dict[str, Any] | None:
        async with http.get(f"{lost['url']}api/status") as resp:
            return dict(await resp.json()) if resp.status == 404 else None

    said = await eventually(
        ended, within=LOSS_NOTICED_WITHIN, every=0.2, what="the lost session's address ended"
    )
    assert said["stopped"] == StopReason.NODE_LOST, said
    assert "stopped answering" in str(said["message"]) and said["relaunch"], said

    # Its seat is free: the repository's one session may run again, elsewhere.
    again = await launch(http, stack.gateway, path)
    assert again[-1]["phase"] == "ready", again[-5:]
    relaunched = await logged(stack, again[-1]["launch_id"])
    placed = [e.node for e in relaunched if isinstance(e, PodScheduled)]
    assert len(placed) == 1 and placed[0] in NODES, placed
    assert "launch-queued" not in [e.type for e in relaunched], "waited for the lost seat"
    assert await routed_status(http, again[-1]) == 200

    # The event log and the archive agree: the lost launch was ready once, then lost once.
    ends = [(e.type, getattr(e, "reason", None)) for e in await logged(stack, lost["launch_id"])]
    assert [end for end in ends if end[0] in ("pod-ready", "pod-stopped", "launch-failed")] == [
        ("pod-ready", None),
        ("pod-stopped", StopReason.NODE_LOST),
    ], ends
    for launch_id in (lost["launch_id"], again[-1]["launch_id"]):
        records = await eventually(
            partial(stack.archived, launch_id), within=30, every=0.2, what="the launch archived"
        )
        assert [r["outcome"] for r in records] == ["ready"], records

    # Nothing orphaned: one route, for the one session that runs.
    _, health = await gateway_health(http, stack)
    assert health["sessions"] == 1, health
    running = {url: containers(url, stack) for url in NODES.values()}
    assert sorted(name for names in running.values() for name in names) == [
        f"{stack.slot.instance}-{session_of(again[-1])}"
    ], running

    # The machine is back: what it still held of the lost session is removed, quietly.
    doomed_node.start()
    await eventually(
        lambda: not containers(doomed_node.url, stack),
        within=60,
        every=0.5,
        what="the lost session's container removed from the node that came back",
    )
    stops = [e for e in await logged(stack, lost["launch_id"]) if isinstance(e, PodStopped)]
    assert [e.reason for e in stops] == [StopReason.NODE_LOST], "said once"
    _, health = await gateway_health(http, stack)
    assert health["sessions"] == 1 and all(health["nodes"].values()), health
