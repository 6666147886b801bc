"""A launch everyone left before it was ready is abandoned after a grace: the gateway publishes
launch-abandoned once and a client coming back later reads why; a client that returns within
the grace, a finished launch and a build-only launch abandon nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import pytest
from yarl import URL

from bindery.events import Event, LaunchAbandoned, LaunchRequested
from tests.support.eventually import eventually
from tests.unit.gateway.fakes import GIT_SPEC, Harness, full_launch, make_harness

GRACE = 0.3


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    async for h in make_harness(abandon_grace=GRACE):
        yield h


def echo_only(h: Harness) -> None:
    """The bus echoes the request and nothing more: the launch stays in progress."""

    async def answer(event: Event) -> None:
        if isinstance(event, LaunchRequested):
            await h.handlers.on_event(event)

    h.bus.on_publish = answer


def abandoned(h: Harness) -> list[LaunchAbandoned]:
    return [e for e in h.bus.published if isinstance(e, LaunchAbandoned)]


async def until_abandoned(h: Harness) -> LaunchAbandoned:
    [event] = await eventually(lambda: abandoned(h), within=10, what="a LaunchAbandoned")
    return event


async def open_socket(h: Harness, query: str = "") -> tuple[aiohttp.ClientWebSocketResponse, str]:
    ws = await h.client.ws_connect(URL(f"/build/git/{GIT_SPEC}{query}", encoded=True))
    first = await ws.receive_json()
    return ws, first["launch_id"]


async def test_a_launch_everyone_left_is_abandoned_once_and_says_so(harness: Harness) -> None:
    echo_only(harness)
    ws, launch_id = await open_socket(harness)
    await ws.close()
    event = await until_abandoned(harness)
    assert event.launch_id == launch_id

    ws = await harness.client.ws_connect(
        URL(f"/build/git/{GIT_SPEC}?launch_id={launch_id}&after=0", encoded=True)
    )
    last = await ws.receive_json()
    assert (last["phase"], last["reason"]) == ("failed", "abandoned")
    assert "cancelled" in last["message"]
    await ws.close()
    await asyncio.sleep(GRACE * 3)  # the second leave starts no second abandon
    assert len(abandoned(harness)) == 1


async def test_an_event_stream_client_leaving_abandons_too(harness: Harness) -> None:
    echo_only(harness)
    response = await harness.client.get(URL(f"/build/git/{GIT_SPEC}", encoded=True))
    await response.content.readuntil(b"\n\n")  # `waiting`
    response.close()  # noticed at the next keepalive write
    await until_abandoned(harness)


async def test_coming_back_within_the_grace_keeps_the_launch(harness: Harness) -> None:
    echo_only(harness)
    ws, launch_id = await open_socket(harness)
    await ws.close()
    back, _ = await open_socket(harness, f"?launch_id={launch_id}&after=-1")
    listening = asyncio.create_task(back.receive())  # answers the gateway's pings, as browsers do
    await asyncio.sleep(GRACE * 3)
    assert abandoned(harness) == []
    listening.cancel()
    await back.close()
    await until_abandoned(harness)  # leaving for good still abandons it


async def test_leaving_a_finished_or_build_only_launch_abandons_nothing(harness: Harness) -> None:
    harness.bus.on_publish = full_launch(harness)
    ws = await harness.client.ws_connect(URL(f"/build/git/{GIT_SPEC}", encoded=True))
    async for _message in ws:  # up to `ready`
        pass
    echo_only(harness)
    ws, _ = await open_socket(harness, "?build_only=true")
    await ws.close()
    await asyncio.sleep(GRACE * 3)
    assert abandoned(harness) == []
