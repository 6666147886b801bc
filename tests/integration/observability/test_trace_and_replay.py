"""Against the real broker: a trace crosses a message; the event log reads back in order and
replays into a fresh virtual host; `bindery events show` names a failure (issue 7)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from bindery import telemetry
from bindery.bus import Bus, Handlers, QueueSpec
from bindery.bus.eventlog import read
from bindery.events import Event, FailureReason, LaunchFailed, LaunchRequested
from tests.integration.conftest import VHOST
from tests.support.launches import ref_resolved
from tests.support.stack import own_vhost
from tests.support.tracing import memory_exporter

REPLAY_VHOST = f"{VHOST}-replay"


@pytest.fixture(scope="module")
def replay_url() -> Iterator[str]:
    with own_vhost(REPLAY_VHOST) as url:
        yield url


@pytest.fixture
async def resolver_bus(amqp_url: str) -> AsyncIterator[Bus]:
    bus = Bus(amqp_url, "resolver", connect_timeout=10)
    await bus.connect()
    yield bus
    await bus.close()


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bindery.cli", "events", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_consumer_handles_a_message_in_the_publishers_trace(bus: Bus) -> None:
    spans = memory_exporter()
    seen: asyncio.Queue[str | None] = asyncio.Queue()

    async def handler(_event: Event) -> None:
        await seen.put(telemetry.trace_id())

    spec = QueueSpec("bindery.test.trace", ("launch-requested",))
    await bus.consume(spec, Handlers().on(LaunchRequested, handler))
    launch_id = uuid.uuid4().hex
    with telemetry.span("launch"):
        trace_id = telemetry.trace_id()
        await bus.publish(LaunchRequested(launch_id=launch_id, provider="git", spec="x/main"))
    assert await asyncio.wait_for(seen.get(), 10) == trace_id
    handled = [s for s in spans.get_finished_spans() if s.name == "handle launch-requested"]
    assert handled, "the consumer made a span"
    assert handled[-1].attributes is not None
    assert handled[-1].attributes["bindery.launch_id"] == launch_id


async def test_a_launch_reads_back_in_order_and_replays_into_a_fresh_vhost(
    bus: Bus, resolver_bus: Bus, amqp_url: str, replay_url: str
) -> None:
    launch_id = uuid.uuid4().hex
    sent: list[tuple[Bus, Event]] = [
        (bus, LaunchRequested(launch_id=launch_id, provider="git", spec="x/nope")),
        (
            resolver_bus,
            ref_resolved(
                launch_id,
                image="i",
                image_exists=True,
                spec="x/nope",
                repo_url="x",
                ref="nope",
                resolved_ref="c" * 40,
            ),
        ),
        (
            resolver_bus,
            LaunchFailed(
                launch_id=launch_id,
                service="resolver",
                reason=FailureReason.REF_NOT_FOUND,
                message="no ref nope in x",
            ),
        ),
    ]
    for publisher, event in sent:
        await publisher.publish(event)

    recorded = [r async for r in read(amqp_url, launch_id=launch_id)]
    assert [r.event for r in recorded] == [event for _, event in sent]
    assert [r.producer for r in recorded] == ["integration-test", "resolver", "resolver"]

    replayed = cli("replay", "--launch", launch_id, "--into", REPLAY_VHOST, "--amqp-url", amqp_url)
    assert replayed.returncode == 0, replayed.stderr
    assert f"replayed 3 events from {VHOST} into {REPLAY_VHOST}" in replayed.stdout

    there = [r async for r in read(replay_url, launch_id=launch_id)]
    assert [(r.event, r.producer, r.headers) for r in there] == [
        (r.event, r.producer, r.headers) for r in recorded
    ]

    shown = cli("show", launch_id, "--amqp-url", amqp_url)
    assert shown.returncode == 0, shown.stderr
    assert (
        f"launch {launch_id}: failed in resolver (ref_not_found): no ref nope in x" in shown.stdout
    )


async def test_replay_refuses_the_vhost_it_reads(amqp_url: str) -> None:
    result = cli("replay", "--since", "1h", "--into", VHOST, "--amqp-url", amqp_url)
    assert result.returncode == 1
    assert "run those launches again" in result.stderr
    assert "Traceback" not in result.stderr
