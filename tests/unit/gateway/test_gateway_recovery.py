"""After a reconnect, the gateway reads back from the event log what its exclusive queue missed
while the broker was away: its unfinished launches end, what it already had is not shown twice,
and other launches' routes come along (issue 14)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest

from bindery.bus.eventlog import NoEventLog, Recorded
from bindery.events import BuildStarted, Event, PodReady, PodScheduled
from bindery.gateway import recovery
from bindery.gateway.progress import ProgressHub
from bindery.gateway.recovery import Recovery
from tests.support.launches import image_built, pod_ready

WAITING, DONE, OTHER = "a" * 32, "b" * 32, "c" * 32


def ready(launch_id: str, session: str) -> PodReady:
    return pod_ready(launch_id, session=session, node="node-1", image="i", target="http://t:1")


def recorded(event: Event) -> Recorded:
    return Recorded(0, event, "test", event.routing_key, event.to_json(), {})


async def test_missed_events_end_unfinished_launches_once(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = ProgressHub(session_url=lambda s: f"http://gw/user/{s}/")
    hub.open(WAITING, "git", "x/main")
    started = BuildStarted(launch_id=WAITING, image="i", builder="b1")
    hub.record(started)  # came before the broker went away
    hub.open(DONE, "git", "y/main")
    hub.record(ready(DONE, "done-session"))
    earliest = hub.get(WAITING).opened  # type: ignore[union-attr]

    log = [
        started,
        image_built(WAITING, image="i"),
        PodScheduled(launch_id=WAITING, session="s", node="node-1", image="i"),
        ready(WAITING, "waiting-session"),
        ready(OTHER, "other-session"),  # another replica's launch: its route only
        BuildStarted(launch_id=OTHER, image="i", builder="b1"),
    ]
    reads: list[dict[str, Any]] = []

    async def read(url: str, *, start: datetime, idle: float) -> AsyncIterator[Recorded]:
        reads.append({"url": url, "start": start})
        for event in log:
            yield recorded(event)

    monkeypatch.setattr(recovery, "read", read)
    handed: list[Event] = []

    async def on_event(event: Event) -> None:
        handed.append(event)
        hub.record(event)

    assert await Recovery("amqp://gw@x/v", hub, on_event).recover() == 4
    assert [e.type for e in handed] == ["image-built", "pod-scheduled", "pod-ready", "pod-ready"]
    assert reads == [{"url": "amqp://gw@x/v", "start": earliest - recovery.CLOCK_SKEW}]
    waiting = hub.get(WAITING)
    assert waiting is not None and waiting.finished
    phases = [entry.payload["phase"] for entry in waiting.entries]
    assert phases == ["waiting", "building", "built", "launching", "ready"], "each once"


async def test_nothing_to_recover_reads_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = ProgressHub(session_url=lambda s: s)

    async def read(url: str, **_: object) -> AsyncIterator[Recorded]:
        raise AssertionError("no launch waits: no read")
        yield  # pragma: no cover

    monkeypatch.setattr(recovery, "read", read)

    async def on_event(event: Event) -> None:
        raise AssertionError(event)

    assert await Recovery("amqp://x", hub, on_event).recover() == 0


async def test_an_event_log_not_answering_yet_is_asked_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    hub = ProgressHub(session_url=lambda s: s)
    hub.open(WAITING, "git", "x/main")
    tries: list[int] = []

    async def read(url: str, **_: object) -> AsyncIterator[Recorded]:
        tries.append(1)
        # A loaded machine's broker brings the event log back after many tries.
        if len(tries) <= 12:
            raise NoEventLog("broker still recovering its queues")
        yield recorded(ready(WAITING, "s"))

    monkeypatch.setattr(recovery, "read", read)
    monkeypatch.setattr(recovery, "PAUSE", 0.001)
    monkeypatch.setattr(recovery, "MAX_PAUSE", 0.001)

    async def on_event(event: Event) -> None:
        hub.record(event)

    assert await Recovery("amqp://x", hub, on_event).recover() == 1
    assert len(tries) == 13
    assert hub.get(WAITING).finished  # type: ignore[union-attr]


async def test_tries_end_when_no_launch_waits_any_more(monkeypatch: pytest.MonkeyPatch) -> None:
    hub = ProgressHub(session_url=lambda s: s)
    hub.open(WAITING, "git", "x/main")
    tries: list[int] = []

    async def read(url: str, **_: object) -> AsyncIterator[Recorded]:
        tries.append(1)
        if len(tries) == 3:  # meanwhile the launch ended (its event came on the queue)
            hub.record(ready(WAITING, "s"))
        raise NoEventLog("still away")
        yield  # pragma: no cover

    monkeypatch.setattr(recovery, "read", read)
    monkeypatch.setattr(recovery, "PAUSE", 0.001)

    async def on_event(event: Event) -> None:
        raise AssertionError(event)

    assert await Recovery("amqp://x", hub, on_event).recover() == 0
    assert len(tries) == 3
