"""`GET /api/builds/<id>/log` without a broker: the cache of finished logs, shared reads,
bounded reads, and the answers for ids that name no build."""

from __future__ import annotations

import asyncio
import json
import secrets
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from bindery.bus import topology
from bindery.bus.eventlog import Recorded, StreamUnavailable
from bindery.events import BuildLog, Event
from bindery.events.build import build_started_at
from bindery.gateway.app import create_app
from bindery.gateway.buildlog import BuildLogs, Busy
from bindery.gateway.deps import Gateway
from tests.support.eventually import eventually
from tests.support.fakebus import FakeBus
from tests.unit.gateway.fakes import settings

LAUNCH_A = "a" * 32
LAUNCH_B = "b" * 32


def past_build_id() -> str:
    """A build id from an hour ago: its lines are all older than any request in the test."""
    millis = int((datetime.now(UTC) - timedelta(hours=1)).timestamp() * 1000)
    return f"{millis:012x}{secrets.token_hex(4)}"


def recorded(event: Event) -> Recorded:
    return Recorded(0, event, "builder", event.type, event.to_json(), {})


def build_lines(build_id: str, launch_id: str, count: int, *, final: bool) -> list[Event]:
    started = build_started_at(build_id)
    assert started is not None
    return [
        BuildLog(
            launch_id=launch_id,
            image="img",
            message=f"line {i}",
            build_id=build_id,
            seq=i,
            final=final and i == count - 1,
            time=started + timedelta(seconds=i),
        )
        for i in range(count)
    ]


@dataclass
class FakeStream:
    """The build-log stream: its events in order, then quiet (the read ends as at the real
    one's idle timeout), or with `endless` nothing more ever (the reader has to stop by
    itself); `hold` keeps every read waiting before its first event; `broken` makes reads
    fail as a lost connection does."""

    events: list[Event] = field(default_factory=list)
    hold: asyncio.Event | None = None
    broken: bool = False
    endless: bool = False
    reads: int = 0
    ended_reads: int = 0
    closed: bool = False

    async def records(
        self, stream: str, start: datetime, *, idle: float, first_idle: float | None = None
    ) -> AsyncGenerator[Recorded, None]:
        assert stream == topology.BUILD_LOG_STREAM
        self.reads += 1
        try:
            if self.hold is not None:
                await self.hold.wait()
            if self.broken:
                raise StreamUnavailable("connection lost")
            for event in self.events:
                if event.time >= start - timedelta(seconds=1):
                    yield recorded(event)
            if self.endless:
                await asyncio.Event().wait()
        finally:
            self.ended_reads += 1

    async def close(self) -> None:
        self.closed = True


def logs(stream: FakeStream, **kw: Any) -> BuildLogs:
    return BuildLogs(
        stream,
        cache_bytes=kw.get("cache_bytes", 1_000_000),
        max_reads=kw.get("max_reads", 4),
        read_wait=kw.get("read_wait", 5.0),
    )


def started(build_id: str) -> datetime:
    at = build_started_at(build_id)
    assert at is not None
    return at


def finished_build(stream: FakeStream, count: int = 3) -> str:
    build_id = past_build_id()
    stream.events += build_lines(build_id, LAUNCH_A, count, final=True)
    return build_id


async def test_a_finished_log_is_its_builds_lines_and_is_then_served_from_cache() -> None:
    build_id = past_build_id()
    first = build_lines(build_id, LAUNCH_A, 3, final=True)
    stream = FakeStream(
        # Another build's lines, for another launch, interleaved: not this log.
        [
            first[0],
            *build_lines(past_build_id(), LAUNCH_B, 2, final=False),
            first[1],
            first[2],
        ]
    )
    build_logs = logs(stream)

    body = await build_logs.answer(build_id, started(build_id))
    assert body is not None
    answer = json.loads(body)
    assert answer == {
        "build_id": build_id,
        "image": "img",
        "complete": True,
        "lines": [{"phase": "building", "message": f"line {i}"} for i in range(3)],
    }
    assert stream.ended_reads == 1, "the final line ends the read"

    stream.broken = True  # the broker is gone: a finished log still is not
    assert await build_logs.answer(build_id, started(build_id)) == body
    assert stream.reads == 1


async def test_a_running_builds_log_is_read_again_each_time() -> None:
    build_id = past_build_id()
    stream = FakeStream(build_lines(build_id, LAUNCH_A, 2, final=False))
    # The stream goes on with what comes after the request: the read stops there.
    stream.events.append(
        BuildLog(launch_id=LAUNCH_A, image="img", message="later", build_id=build_id,
                 time=datetime.now(UTC) + timedelta(hours=1))
    )  # fmt: skip
    stream.endless = True
    build_logs = logs(stream)

    for reads in (1, 2):
        body = await build_logs.answer(build_id, started(build_id))
        assert body is not None
        answer = json.loads(body)
        assert answer["complete"] is False
        assert [line["message"] for line in answer["lines"]] == ["line 0", "line 1"]
        assert stream.reads == reads


async def test_an_unknown_build_ends_its_read_at_lines_from_well_after_its_start() -> None:
    build_id = past_build_id()
    later = build_lines(past_build_id(), LAUNCH_A, 1, final=False)[0]
    later = later.model_copy(update={"time": started(build_id) + timedelta(minutes=3)})
    stream = FakeStream([later], endless=True)
    async with asyncio.timeout(30):  # an upper bound: the read ends on the later line
        assert await logs(stream).answer(build_id, started(build_id)) is None


async def test_concurrent_requests_for_one_build_share_one_read() -> None:
    stream = FakeStream(hold=asyncio.Event())
    build_id = finished_build(stream)
    build_logs = logs(stream, max_reads=1)

    waiting = [
        asyncio.create_task(build_logs.answer(build_id, started(build_id))) for _ in range(50)
    ]
    await eventually(lambda: stream.reads, within=10, what="a read started")
    # A client that leaves does not end the read the others wait for.
    waiting[0].cancel()
    stream.hold.set()  # type: ignore[union-attr]
    bodies = await asyncio.gather(*waiting[1:])
    assert len(set(bodies)) == 1 and bodies[0] is not None
    assert stream.reads == 1


async def test_reads_beyond_the_bound_wait_then_are_refused() -> None:
    stream = FakeStream(hold=asyncio.Event())
    first, second = finished_build(stream), finished_build(stream)
    build_logs = logs(stream, max_reads=1, read_wait=0.05)

    reading = asyncio.create_task(build_logs.answer(first, started(first)))
    await eventually(lambda: stream.reads, within=10, what="a read started")
    with pytest.raises(Busy):
        await build_logs.answer(second, started(second))
    assert stream.reads == 1, "the refused request read nothing"

    stream.hold.set()  # type: ignore[union-attr]
    assert await reading is not None
    assert await build_logs.answer(second, started(second)) is not None


async def test_a_waiting_read_gets_the_slot_a_finished_one_frees() -> None:
    stream = FakeStream(hold=asyncio.Event())
    first, second = finished_build(stream), finished_build(stream)
    build_logs = logs(stream, max_reads=1, read_wait=30)

    reading = asyncio.create_task(build_logs.answer(first, started(first)))
    queued = asyncio.create_task(build_logs.answer(second, started(second)))
    await eventually(lambda: stream.reads, within=10, what="a read started")
    assert stream.reads == 1 and not queued.done()
    stream.hold.set()  # type: ignore[union-attr]
    assert None not in await asyncio.gather(reading, queued)


async def test_the_cache_is_bounded_in_bytes_least_recently_asked_out() -> None:
    stream = FakeStream()
    ids = [finished_build(stream, count=20) for _ in range(3)]
    one = await logs(stream).answer(ids[0], started(ids[0]))
    assert one is not None
    build_logs = logs(stream, cache_bytes=len(one) * 2 + 10)

    for build_id in ids[:2]:
        await build_logs.answer(build_id, started(build_id))
    await build_logs.answer(ids[0], started(ids[0]))  # asked again: the newest
    await build_logs.answer(ids[2], started(ids[2]))  # pushes out ids[1]
    assert build_logs.cached_bytes <= len(one) * 2 + 10
    reads = stream.reads
    await build_logs.answer(ids[0], started(ids[0]))
    await build_logs.answer(ids[2], started(ids[2]))
    assert stream.reads == reads
    await build_logs.answer(ids[1], started(ids[1]))
    assert stream.reads == reads + 1


async def test_a_log_larger_than_the_cache_is_served_but_not_kept() -> None:
    stream = FakeStream()
    build_id = finished_build(stream, count=50)
    build_logs = logs(stream, cache_bytes=100)
    assert await build_logs.answer(build_id, started(build_id)) is not None
    assert build_logs.cached_bytes == 0


@pytest.fixture
async def served() -> AsyncIterator[tuple[TestClient[Any, Any], FakeStream]]:
    stream = FakeStream()
    gateway = Gateway.create(settings(), FakeBus())
    gateway.build_logs = logs(stream, read_wait=0.05)
    client = TestClient(TestServer(create_app(gateway)))
    await client.start_server()
    try:
        yield client, stream
    finally:
        await client.close()
    assert stream.closed, "the gateway closes its reader when it stops"


@pytest.mark.parametrize(
    "build_id",
    [
        "nope",
        "0123456789abcdef012",  # one digit short
        "ffffffffffffffffffff",  # past the year 9999: once a 500
        f"{int((datetime.now(UTC) + timedelta(days=1)).timestamp() * 1000):012x}00000000",
    ],
)
async def test_ids_no_build_can_have_are_404_with_a_message_and_read_nothing(
    served: tuple[TestClient[Any, Any], FakeStream], build_id: str
) -> None:
    client, stream = served
    resp = await client.get(f"/api/builds/{build_id}/log")
    assert resp.status == 404
    assert "is not a build id" in (await resp.json())["message"]
    assert stream.reads == 0


async def test_the_endpoint_answers_logs_unknown_builds_and_outages(
    served: tuple[TestClient[Any, Any], FakeStream],
) -> None:
    client, stream = served
    build_id = finished_build(stream)
    resp = await client.get(f"/api/builds/{build_id}/log")
    assert resp.status == 200
    assert (await resp.json())["complete"] is True

    unknown = past_build_id()
    stream.events.append(
        build_lines(past_build_id(), LAUNCH_A, 1, final=False)[0].model_copy(
            update={"time": started(unknown) + timedelta(minutes=5)}
        )
    )
    resp = await client.get(f"/api/builds/{unknown}/log")
    assert resp.status == 404
    assert f"No log of build {unknown} is kept" in (await resp.json())["message"]

    stream.broken = True
    resp = await client.get(f"/api/builds/{past_build_id()}/log")
    assert resp.status == 503
    assert "try again" in (await resp.json())["message"]

    stream.broken, stream.hold, reads = False, asyncio.Event(), stream.reads
    held = [asyncio.create_task(client.get(f"/api/builds/{past_build_id()}/log")) for _ in range(4)]
    await eventually(lambda: stream.reads >= reads + 4, within=10, what="every read slot taken")
    resp = await client.get(f"/api/builds/{past_build_id()}/log")
    assert resp.status == 503
    assert "Too many build logs" in (await resp.json())["message"]
    stream.hold.set()
    for task in held:
        assert (await task).status == 404


async def test_progress_reads_a_builds_earlier_lines_through_the_same_reads() -> None:
    """A replica started mid-build: its first line of the build is the third; the launch is
    shown the first two from the stream, through the endpoint's reader."""
    build_id = past_build_id()
    lines = build_lines(build_id, LAUNCH_A, 3, final=False)
    stream = FakeStream(list(lines))
    gateway = Gateway.create(settings(), FakeBus())
    gateway.build_logs = logs(stream)
    client = TestClient(TestServer(create_app(gateway)))
    await client.start_server()
    try:
        gateway.progress.record(lines[2])

        def shown() -> list[object]:
            launch = gateway.progress.get(LAUNCH_A)
            return [entry.payload["message"] for entry in launch.since(-1)] if launch else []

        await eventually(lambda: shown() == ["line 0\n", "line 1\n", "line 2\n"], what="all")
        assert stream.reads == 1
    finally:
        await client.close()
