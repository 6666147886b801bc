"""Capacity given back on real podman nodes (issue 13): a repository with a quota of its own
queues its second launch while another repository launches; a session shut down from inside
(Jupyter's `POST /api/shutdown`) or killed outside Bindery (`podman kill`) frees its seat within
seconds, its container removed and its pod-stopped saying why, so the queued launch goes; a
launch abandoned in the queue never starts, one abandoned mid-start leaves no container."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp

from bindery.events import (
    LaunchAbandoned,
    LaunchQueued,
    PodReady,
    PodScheduled,
    PodStopped,
    RepoConfig,
    StopReason,
)
from bindery.naming import session_name
from bindery.scheduler.launch import LaunchOrder
from tests.integration.scheduler.conftest import INSTANCE, Harness, MakeScheduler, podman
from tests.support.eventually import eventually
from tests.support.launches import launch_context

REPO_A = "file:///srv/course"
REPO_B = "file:///srv/other"


def launch_id(label: str) -> str:
    """Unique per run, so nothing of an earlier run can answer for this one."""
    return f"{label}-{uuid.uuid4().hex[:8]}"


def order(launch: str, image: str, repo: str, quota: int | None = None) -> LaunchOrder:
    return LaunchOrder(
        launch, image, launch_context(repo_url=repo, repo_config=RepoConfig(quota=quota))
    )


def containers(name: str) -> list[str]:
    """The containers of the session `name` on any node, stopped ones included."""
    return [
        line
        for node in ("node-1", "node-2")
        for line in podman(
            node, "ps", "-a", "--format", "{{.Names}}", "--filter", f"label=bindery.session={name}"
        ).split()
    ]


def ready(h: Harness, launch: str) -> PodReady | None:
    return next((r for r in h.of(PodReady) if r.launch_id == launch), None)


async def test_a_repository_at_its_own_quota_queues_and_a_shutdown_from_inside_frees_its_seat(
    make_scheduler: MakeScheduler, session_image: str, http: aiohttp.ClientSession
) -> None:
    h = await make_scheduler(repo_quota=100, queue_timeout=600)
    a1, a2, a3, b1 = (launch_id(label) for label in ("A1", "A2", "A3", "B1"))
    await h.scheduler.launch(order(a1, session_image, REPO_A, quota=1))
    second = asyncio.create_task(h.scheduler.launch(order(a2, session_image, REPO_A, quota=1)))
    third = asyncio.create_task(h.scheduler.launch(order(a3, session_image, REPO_A, quota=1)))
    await eventually(
        lambda: {q.launch_id for q in h.of(LaunchQueued)} == {a2, a3},
        within=60,
        what="the second and third launches queued",
    )
    assert {q.limit for q in h.of(LaunchQueued)} == {"repository"}

    await h.scheduler.launch(order(b1, session_image, REPO_B))
    assert ready(h, b1) is not None and not second.done(), "another repository launches"

    await h.scheduler.abandon(LaunchAbandoned(launch_id=a3))
    await asyncio.wait_for(third, 30)
    assert [type(e).__name__ for e in h.events if e.launch_id == a3] == ["LaunchQueued"]
    assert containers(session_name(REPO_A, a3)) == [], "abandoned in the queue: never started"

    first = ready(h, a1)
    assert first is not None
    async with h.loops("exits"):
        headers = {"Authorization": f"token {h.scheduler.token(first.session)}"}
        url = f"{first.target}/user/{first.session}/api/shutdown"
        async with http.post(url, headers=headers) as resp:
            assert resp.status == 200, await resp.text()
        await asyncio.wait_for(second, 60)
    [stopped] = h.of(PodStopped)
    assert (stopped.launch_id, stopped.session) == (a1, first.session)
    assert stopped.reason is StopReason.SHUT_DOWN, "Jupyter exits 0 when shut down from inside"
    assert containers(first.session) == [], "its container is removed"
    assert ready(h, a2) is not None, "the queued launch got the seat"
    running = {s.name for s in await h.runtime.list_sessions() if s.running}
    assert set(h.scheduler.cluster.seats) == running, "the count is what runs"


async def test_a_session_killed_outside_bindery_is_ended_by_its_event_or_by_reconciliation(
    make_scheduler: MakeScheduler, session_image: str
) -> None:
    h = await make_scheduler()
    k1, k2 = launch_id("K1"), launch_id("K2")
    for launch in (k1, k2):
        await h.scheduler.launch(order(launch, session_image, REPO_B))
    first, second = ready(h, k1), ready(h, k2)
    assert first is not None and second is not None

    async with h.loops("exits"):
        podman(first.node, "kill", f"{INSTANCE}-{first.session}")
        await eventually(lambda: h.of(PodStopped), within=60, what="a PodStopped")
    assert [(e.launch_id, e.reason) for e in h.of(PodStopped)] == [(k1, StopReason.CRASHED)]
    await eventually(
        lambda: containers(first.session) == [], within=60, what="the container removed"
    )

    # Not following: only the periodic reconciliation can notice this one.
    podman(second.node, "kill", f"{INSTANCE}-{second.session}")
    ended = await h.scheduler.end_vanished()
    assert [(e.name, e.code) for e in ended] == [(second.session, 137)]
    assert [(e.launch_id, e.reason) for e in h.of(PodStopped)][1:] == [(k2, StopReason.CRASHED)]
    assert containers(second.session) == [] and h.scheduler.cluster.seats == {}


async def test_a_launch_abandoned_mid_start_leaves_no_container(
    make_scheduler: MakeScheduler, session_image: str
) -> None:
    h = await make_scheduler()
    launch = launch_id("X1")
    starting = asyncio.create_task(h.scheduler.launch(order(launch, session_image, REPO_B)))
    await eventually(
        lambda: h.of(PodScheduled), within=60, what="a PodScheduled"
    )  # its container is starting; Jupyter takes ~1 s
    await h.scheduler.abandon(LaunchAbandoned(launch_id=launch))
    await asyncio.wait_for(starting, 60)

    name = session_name(REPO_B, launch)
    assert h.of(PodReady) == []
    assert [(e.session, e.reason) for e in h.of(PodStopped)] == [(name, StopReason.ABANDONED)]
    assert containers(name) == [] and h.scheduler.cluster.seats == {}
