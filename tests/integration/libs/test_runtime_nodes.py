"""The runtime's nodes against real podman: one check per node (what the gateway's /health
asks), True for a node that answers, NodeUnreachable for one whose socket is gone; and a hung
node (a private podman service of the test's own, SIGSTOPped: its socket takes connections,
nothing answers) fails its lookups within the lookup bound and its ping within the ping bound,
while another node asked at the same time answers at once."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from bindery.runtimes import NodeTimedOut, NodeUnreachable, PodmanRuntime, Survey
from bindery.runtimes.podman import NODE_LOOKUP_SECONDS, NODE_PING_SECONDS
from tests.support.privatenode import PrivateNode, private_node
from tests.support.stack import INSTANCE, NODES, SLOT

#: What a bound may be overrun by on a loaded 2-core machine (the event loop's own delays).
SLACK = 2.0
T = TypeVar("T")


async def test_each_podman_node_has_a_check_that_asks_it(tmp_path: Path) -> None:
    runtime = PodmanRuntime(INSTANCE, {**NODES, "gone": f"unix://{tmp_path}/gone.sock"})
    try:
        checks = runtime.node_checks()
        assert set(checks) == {*NODES, "gone"}
        for name in NODES:
            assert await checks[name]() is True, name
        with pytest.raises(NodeUnreachable, match="gone does not answer"):
            await checks["gone"]()
    finally:
        await runtime.close()


@pytest.fixture
def hung_node() -> Iterator[PrivateNode]:
    with private_node("hung", f"hung-{SLOT}") as node:
        node.hang()
        yield node


async def timed(work: Awaitable[T]) -> tuple[float, T | Exception]:
    """How long `work` took, and its result or what it raised."""
    began = time.monotonic()
    try:
        result: T | Exception = await work
    except Exception as exc:
        result = exc
    return time.monotonic() - began, result


async def test_a_hung_node_fails_its_lookups_within_the_bound_and_holds_no_other_node_up(
    hung_node: PrivateNode,
) -> None:
    healthy = next(iter(NODES))
    runtime = PodmanRuntime(INSTANCE, {healthy: NODES[healthy], "hung": hung_node.url})
    try:
        (lookup_took, lookup), (ping_took, ping), (other_took, other) = await asyncio.gather(
            timed(runtime.has_image("hung", "localhost/nothing:1")),
            timed(runtime.node_checks()["hung"]()),
            timed(runtime.has_image(healthy, "localhost/nothing:1")),
        )
        assert isinstance(lookup, NodeTimedOut), lookup
        assert NODE_LOOKUP_SECONDS <= lookup_took < NODE_LOOKUP_SECONDS + SLACK, lookup_took
        assert isinstance(ping, NodeUnreachable), "a ping unanswered: down"
        assert NODE_PING_SECONDS <= ping_took < NODE_PING_SECONDS + SLACK, ping_took
        assert other is False and other_took < 1, f"the healthy node took {other_took:.2f} s"

        # Every node asked at once: the survey costs the hung node's bound, and names it.
        survey_took, survey = await timed(runtime.survey())
        assert isinstance(survey, Survey), survey
        assert survey_took < NODE_LOOKUP_SECONDS + SLACK, survey_took
        assert set(survey.unanswered) == {"hung"} and survey.unreachable == {}
        get_took, found = await timed(runtime.get("nobody"))
        assert isinstance(found, NodeTimedOut), "nowhere it answered, unknown where it did not"
        assert get_took < NODE_LOOKUP_SECONDS + SLACK, get_took
        assert await runtime.get("nobody", skip={"hung"}) is None, "skipped: asked nothing"

        hung_node.resume()
        assert await runtime.node_checks()["hung"]() is True, "answers again"
    finally:
        await runtime.close()
