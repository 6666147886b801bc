"""Progress over a websocket (Bindery's page), resuming a dropped stream without a second launch,
and the events a person waits on: queue position, image pull, BinderHub's `ready` fields."""

from __future__ import annotations

from typing import Any

import aiohttp
from yarl import URL

from bindery.events import ImagePulling, LaunchQueued, LaunchRequested, QueueLimit
from tests.unit.gateway.fakes import (
    FULL_LAUNCH_PHASES,
    GIT_SPEC,
    Harness,
    full_launch,
    parse_sse,
    same_but_handoff,
)


async def receive_all(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    messages = []
    async for message in ws:
        assert message.type == aiohttp.WSMsgType.TEXT
        messages.append(message.json())
    return messages


async def test_websocket_carries_the_same_events_as_sse(harness: Harness) -> None:
    harness.bus.on_publish = full_launch(harness)
    ws = await harness.client.ws_connect(URL(f"/build/git/{GIT_SPEC}", encoded=True))
    messages = await receive_all(ws)
    [request] = harness.bus.published
    lid = request.launch_id
    assert [m["phase"] for m in messages] == FULL_LAUNCH_PHASES
    resume = harness.gateway.credentials.resume_secret(lid)
    assert [m["id"] for m in messages] == [f"{lid}:{i}:{resume}" for i in range(len(messages))]
    assert ws.close_code == 1000


async def test_websocket_resume_replays_the_rest_without_a_second_launch(
    harness: Harness,
) -> None:
    harness.bus.on_publish = full_launch(harness)
    first = await receive_all(
        await harness.client.ws_connect(URL(f"/build/git/{GIT_SPEC}", encoded=True))
    )
    lid = first[0]["launch_id"]
    resume = harness.gateway.credentials.resume_secret(lid)
    again = await receive_all(
        await harness.client.ws_connect(
            URL(f"/build/git/{GIT_SPEC}?launch_id={lid}&after=3&resume={resume}", encoded=True)
        )
    )
    assert same_but_handoff(again, first[4:])
    whole = await receive_all(
        await harness.client.ws_connect(
            URL(f"/build/git/{GIT_SPEC}?launch_id={lid}&after=-1&resume={resume}", encoded=True)
        )
    )
    assert same_but_handoff(whole, first), "a page reload replays the whole launch and log"
    assert len(harness.bus.published) == 1


async def test_sse_replay_from_the_start_by_launch_id(harness: Harness) -> None:
    harness.bus.on_publish = full_launch(harness)
    first = parse_sse(await (await harness.client.get(f"/build/git/{GIT_SPEC}")).text())
    lid = first[0][1]["launch_id"]
    resume = harness.gateway.credentials.resume_secret(lid)
    resp = await harness.client.get(
        f"/build/git/{GIT_SPEC}", params={"launch_id": lid, "resume": resume}
    )
    assert same_but_handoff(parse_sse(await resp.text()), first)
    assert len(harness.bus.published) == 1


async def test_dropped_stream_resumes_mid_launch(harness: Harness) -> None:
    """The client goes away while the build runs; it comes back and gets what it missed."""
    resp = await harness.client.get(f"/build/git/{GIT_SPEC}")
    await resp.content.readuntil(b"\n\n")  # `waiting`
    [request] = harness.bus.published
    assert isinstance(request, LaunchRequested)
    resp.close()
    answer = full_launch(harness)
    await answer(request)  # the launch went on meanwhile
    resp = await harness.client.get(
        f"/build/git/{GIT_SPEC}", headers={"Last-Event-ID": f"{request.launch_id}:0"}
    )
    events = parse_sse(await resp.text())
    assert events[0][0] == f"{request.launch_id}:1"
    assert events[-1][1]["phase"] == "ready"
    assert len(harness.bus.published) == 1


async def test_queue_positions_and_pull_are_shown(harness: Harness) -> None:
    async def answer(event: object) -> None:
        assert isinstance(event, LaunchRequested)
        lid = event.launch_id
        await harness.handlers.on_event(
            LaunchQueued(launch_id=lid, repo_key="k", position=3, limit=QueueLimit.REPOSITORY)
        )
        await harness.handlers.on_event(
            LaunchQueued(launch_id=lid, repo_key="k", position=2, limit=QueueLimit.STARTING)
        )
        await harness.handlers.on_event(ImagePulling(launch_id=lid, node="node-2", image="img"))
        full = full_launch(harness)
        await full(event)

    harness.bus.on_publish = answer
    events = [
        d for _, d in parse_sse(await (await harness.client.get(f"/build/git/{GIT_SPEC}")).text())
    ]
    queued = events[1]
    assert queued["phase"] == "waiting" and queued["queue_position"] == 3
    assert "position 3 in the queue" in queued["message"]
    in_line = events[2]
    assert (in_line["phase"], in_line["queue_position"], in_line["queue_limit"]) == (
        "waiting",
        2,
        "starting",
    )
    assert "starting on its machine: position 2 in line" in in_line["message"]
    assert events[3]["phase"] == "pulling" and "node-2" in events[3]["message"]


async def test_ready_carries_binderhub_share_fields(harness: Harness) -> None:
    harness.bus.on_publish = full_launch(harness)
    resp = await harness.client.get(URL(f"/build/git/{GIT_SPEC}", encoded=True))
    ready = parse_sse(await resp.text())[-1][1]
    assert ready["binder_launch_host"] == "http://gw.example:8585/"
    assert ready["binder_request"] == f"v2/git/{GIT_SPEC}"
    assert ready["binder_persistent_request"] == f"v2/git/{GIT_SPEC.rsplit('/', 1)[0]}/{'c' * 40}"
    # Sessions get the same values: the request names the site they are launched from.
    [requested] = [e for e in harness.bus.published if isinstance(e, LaunchRequested)]
    assert requested.launch_host == ready["binder_launch_host"]
