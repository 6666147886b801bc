"""A stage with no live consumer: /health degraded naming it, a new launch told so; the broker's
counts asked at most once per interval."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from yarl import URL

from bindery.bus import topology
from bindery.gateway.stages import STAGE_QUEUES, StageCheck, Stages
from tests.unit.gateway.fakes import GIT_SPEC, Harness, full_launch, parse_sse


class FakeBroker:
    """Consumer counts per queue, as `Bus.consumer_counts` answers; counts the questions."""

    def __init__(self) -> None:
        self.consumers = dict.fromkeys(STAGE_QUEUES.values(), 1)
        self.asked = 0
        self.down = False

    async def consumer_counts(self, queues: Iterable[str]) -> dict[str, int]:
        self.asked += 1
        await asyncio.sleep(0)  # an answer takes a round trip: callers overlap
        if self.down:
            raise ConnectionError("broker down")
        return {queue: self.consumers[queue] for queue in queues}


async def test_the_answer_is_cached_and_shared() -> None:
    broker = FakeBroker()
    check = StageCheck(broker.consumer_counts, max_age=60)
    answers = await asyncio.gather(*(check() for _ in range(5)))
    assert broker.asked == 1
    assert answers[0] == Stages({"resolver": 1, "builder": 1, "scheduler": 1})
    assert all(answer is answers[0] for answer in answers)
    broker.consumers[topology.BUILDER.name or ""] = 0
    assert (await check()) is answers[0] and broker.asked == 1  # still fresh


async def test_a_stale_answer_is_asked_again_and_a_failure_is_unknown() -> None:
    broker = FakeBroker()
    check = StageCheck(broker.consumer_counts, max_age=0.0001)
    await check()
    broker.consumers[topology.SCHEDULER.name or ""] = 0
    await asyncio.sleep(0.001)
    stages = await check()
    assert stages is not None and stages.stalled == ["scheduler"] and broker.asked == 2
    broker.down = True
    await asyncio.sleep(0.001)
    assert await check() is None


async def test_health_is_degraded_naming_a_stage_without_consumers(harness: Harness) -> None:
    broker = FakeBroker()
    harness.gateway.stage_check = StageCheck(broker.consumer_counts, max_age=0)
    resp = await harness.client.get("/health")
    body = await resp.json()
    assert (resp.status, body["ok"], body["degraded"]) == (200, True, [])
    assert body["stages"] == {"resolver": 1, "builder": 1, "scheduler": 1}

    broker.consumers[topology.BUILDER.name or ""] = 0
    resp = await harness.client.get("/health")
    body = await resp.json()
    assert (resp.status, body["ok"], body["degraded"]) == (503, False, ["builder"])
    assert body["stages"]["builder"] == 0

    # The broker cannot say: its own field says it is down; no stage is named for it.
    broker.down = True
    resp = await harness.client.get("/health")
    body = await resp.json()
    assert (body["stages"], body["degraded"]) == ({}, [])


async def test_a_launch_started_while_a_stage_is_down_is_told_and_goes_on(
    harness: Harness,
) -> None:
    broker = FakeBroker()
    broker.consumers[topology.BUILDER.name or ""] = 0
    harness.gateway.stage_check = StageCheck(broker.consumer_counts, max_age=60)
    harness.bus.on_publish = full_launch(harness)
    resp = await harness.client.get(URL(f"/build/git/{GIT_SPEC}", encoded=True))
    events = [data for _, data in parse_sse(await resp.text())]
    assert events[0]["phase"] == "waiting" and "stalled" not in events[0]
    note = events[1]
    assert (note["phase"], note["stalled"]) == ("waiting", ["builder"])
    assert "builder is not running" in note["message"]
    # Not an end: the launch goes on once a builder consumes again.
    assert events[-1]["phase"] == "ready"


async def test_a_launch_with_every_stage_consumed_gets_no_note(harness: Harness) -> None:
    harness.gateway.stage_check = StageCheck(FakeBroker().consumer_counts, max_age=60)
    harness.bus.on_publish = full_launch(harness)
    resp = await harness.client.get(URL(f"/build/git/{GIT_SPEC}", encoded=True))
    events = [data for _, data in parse_sse(await resp.text())]
    assert not [event for event in events if "stalled" in event]
