"""A resolver killed while it holds a launch's launch-requested delivery, unacknowledged, leaves
that launch to the resolver started next: the broker gives the delivery back when the killed
process's connection drops, the launch becomes ready and its spec is resolved once (issue 14).

The resolver is stopped (SIGSTOP) before the launch, so the broker's delivery reaches its
socket but never its handler; the test waits until the broker counts it unacknowledged on the
resolver's queue, then kills the process (SIGKILL: no clean stop hands anything back) and starts
another.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp
import pytest

from bindery.bus import topology
from bindery.bus.eventlog import read
from tests.support.gitrepo import make_repo
from tests.support.stack import Stack, build_path, launch

pytestmark = pytest.mark.e2e

RESOLVER_QUEUE = topology.RESOLVER.name
UNACKED_LIMIT = 60.0


async def unacknowledged(vhost: str, queue: str | None) -> int:
    """Messages of `queue` delivered to a consumer and not yet acknowledged, as the broker
    counts them."""
    proc = await asyncio.create_subprocess_exec(
        "rabbitmqctl",
        "-q",
        "list_queues",
        "--no-table-headers",
        "-p",
        vhost,
        "name",
        "messages_unacknowledged",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    counts = dict(line.split("\t") for line in out.decode().splitlines() if "\t" in line)
    return int(counts[str(queue)])


async def until_unacknowledged(vhost: str, queue: str | None, count: int) -> None:
    deadline = time.monotonic() + UNACKED_LIMIT
    while (found := await unacknowledged(vhost, queue)) != count:
        assert time.monotonic() < deadline, f"{queue}: {found} unacknowledged, not {count}"
        await asyncio.sleep(0.2)


async def test_a_resolver_killed_holding_a_launch_unacked_leaves_it_to_the_next(
    stack: Stack, http: aiohttp.ClientSession, repos: Path
) -> None:
    repo = repos / "resolver-kill"
    make_repo(repo, {"README.md": "resolved by the resolver started after the kill\n"})
    resolver = stack.processes["resolver"]
    resolver.send_signal(signal.SIGSTOP)
    try:
        assert await unacknowledged(stack.slot.vhost, RESOLVER_QUEUE) == 0
        launching = asyncio.create_task(
            launch(http, stack.gateway, build_path(f"file://{repo}", "main"))
        )
        await until_unacknowledged(stack.slot.vhost, RESOLVER_QUEUE, 1)
    finally:
        resolver.send_signal(signal.SIGKILL)
        resolver.wait()
        stack.processes.pop("resolver")
        await asyncio.to_thread(stack.start, "resolver")

    events = await launching
    assert events[-1]["phase"] == "ready", events[-3:]
    launch_id = events[-1]["launch_id"]
    url = stack.env["BINDERY_AMQP_URL"]
    resolved = [r async for r in read(url, launch_id=launch_id, event_type="ref-resolved")]
    assert len(resolved) == 1, resolved
    assert resolved[0].producer == "resolver"
    assert await unacknowledged(stack.slot.vhost, RESOLVER_QUEUE) == 0
