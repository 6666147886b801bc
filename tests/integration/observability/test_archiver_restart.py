"""Against the real broker: a launch in flight while the archiver restarts is archived once,
with the stages the stopped archiver had already taken off its queue, rebuilt from the event
log (issue 7)."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika

from bindery.archiver.archive import Archive, archive_file
from bindery.archiver.handlers import replay_in_flight, subscribe
from bindery.bus import Bus, topology
from bindery.events import (
    BuildStarted,
    Event,
    ImageBuilt,
    LaunchRequested,
    PodScheduled,
    RefResolved,
)
from tests.support.launches import github_launch_context, pod_ready

WINDOW = timedelta(hours=2)
COMMIT = "b" * 40
IMAGE = f"127.0.0.1:5000/bindery/r:{COMMIT}"


class WatchedArchive(Archive):
    """The real archive, telling the test each event it folded in."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory, origin="binder.example.org")
        self.seen: asyncio.Queue[Event] = asyncio.Queue()

    def observe(self, event: Event) -> dict[str, Any] | None:
        record = super().observe(event)
        self.seen.put_nowait(event)
        return record


async def start_archiver(amqp_url: str, directory: Path) -> tuple[Bus, WatchedArchive]:
    """What the archiver's `start` does, on a bus of the test's own."""
    bus = Bus(amqp_url, "archiver", connect_timeout=10)
    await bus.connect()
    archive = WatchedArchive(directory)
    archive.load()
    await replay_in_flight(amqp_url, archive, WINDOW)
    await subscribe(bus, archive)
    return bus, archive


async def wait_for(archive: WatchedArchive, wanted: Event) -> None:
    async def until_seen() -> None:
        while (await archive.seen.get()).event_id != wanted.event_id:
            pass

    await asyncio.wait_for(until_seen(), 30)


async def archiver_queue_depth(amqp_url: str) -> int:
    connection = await aio_pika.connect(amqp_url)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(topology.ARCHIVER.name, passive=True)
        return queue.declaration_result.message_count or 0


async def test_a_launch_in_flight_across_a_restart_keeps_its_earlier_stages(
    amqp_url: str, bus: Bus, tmp_path: Path
) -> None:
    launch_id = uuid.uuid4().hex
    t0 = datetime.now(UTC) - timedelta(seconds=120)

    def at(seconds: float) -> datetime:
        return t0 + timedelta(seconds=seconds)

    before = [
        LaunchRequested(launch_id=launch_id, time=at(0), provider="gh", spec="owner/repo/main"),
        RefResolved(
            launch_id=launch_id,
            time=at(0.5),
            context=github_launch_context(at(0), COMMIT),
            image=IMAGE,
            image_exists=False,
        ),
        BuildStarted(launch_id=launch_id, time=at(1), image=IMAGE, builder="b-1"),
    ]
    after = [
        ImageBuilt(
            launch_id=launch_id,
            time=at(61),
            context=github_launch_context(at(0), COMMIT),
            image=IMAGE,
            duration_seconds=59.5,
        ),
        PodScheduled(launch_id=launch_id, time=at(61.2), session="s", node="node-1", image=IMAGE),
        pod_ready(
            launch_id,
            time=at(63),
            session="s",
            node="node-1",
            image=IMAGE,
            target="http://x",
            context=github_launch_context(at(0), COMMIT),
        ),
    ]

    first_bus, first = await start_archiver(amqp_url, tmp_path)
    for event in before:
        await bus.publish(event)
    await wait_for(first, before[-1])
    # Another launch's event after them: by the time it is handled, the earlier ones are acked.
    fence = LaunchRequested(launch_id=uuid.uuid4().hex, provider="gh", spec="other/repo/main")
    await bus.publish(fence)
    await wait_for(first, fence)
    await first_bus.close()
    assert await archiver_queue_depth(amqp_url) == 0, "the stopped archiver took every event"

    for event in after:
        await bus.publish(event)
    second_bus, second = await start_archiver(amqp_url, tmp_path)
    try:
        # The end arrives twice: from the event log at start, then from the queue.
        await wait_for(second, after[-1])
        await wait_for(second, after[-1])
    finally:
        await second_bus.close()

    path = archive_file(tmp_path, after[-1].time)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    (record,) = [r for r in records if r["launch_id"] == launch_id]
    assert record["outcome"] == "ready" and record["provider"] == "GitHub"
    assert record["ref"] == COMMIT and record["built"] is True
    assert record["duration_seconds"] == {
        "total": 63.0,
        "resolve": 0.5,
        "build": 59.5,
        "launch": 2.0,
    }
