"""The scheduler's launch flow against a fake runtime: events a user's progress stream shows,
no twin on redelivery, quotas (the default and a repository's own), reconciliation, warm pool
claims. Jupyter is a local HTTP server."""

from __future__ import annotations

import asyncio

from bindery.bus import Handlers, topology
from bindery.bus.topology import QueueSpec
from bindery.events import (
    Event,
    FailureReason,
    IdleDetected,
    ImagePulling,
    LaunchAbandoned,
    LaunchFailed,
    LaunchQueued,
    PodReady,
    PodScheduled,
    PodStopped,
    RepoConfig,
    StopReason,
)
from bindery.naming import session_name
from bindery.scheduler import app
from bindery.scheduler.handlers import subscribe
from bindery.scheduler.launch import LaunchOrder
from bindery.scheduler.settings import SchedulerSettings
from tests.support.eventually import eventually
from tests.support.launches import image_built, launch_context, ref_resolved
from tests.unit.scheduler.conftest import IMAGE, REPO, Harness, Make, order


async def test_launch_lands_on_the_node_holding_the_image(make: Make) -> None:
    h: Harness = await make()
    h.runtime.images["node-2"].add(IMAGE)
    launch = order("L1")
    await h.scheduler.launch(launch)
    assert [node for node, _ in h.runtime.starts] == ["node-2"]
    assert h.of(ImagePulling) == [] and h.runtime.pulls == []
    ready = h.of(PodReady)
    assert len(ready) == 1 and ready[0].session == session_name(REPO, "L1")
    assert ready[0].context == launch.context, "what was launched travels on to the gateway"


async def test_no_holder_means_a_pull_the_user_sees_then_later_launches_skip_it(make: Make) -> None:
    h: Harness = await make()
    await h.scheduler.launch(order("L1"))
    pulling = h.of(ImagePulling)
    assert len(pulling) == 1 and h.runtime.pulls == [(pulling[0].node, IMAGE)]
    kinds = [type(e) for e in h.events]
    assert kinds == [ImagePulling, PodScheduled, PodReady]
    await h.scheduler.launch(order("L2"))
    assert len(h.runtime.pulls) == 1


async def test_a_redelivered_launch_resumes_its_session_instead_of_a_twin(make: Make) -> None:
    h: Harness = await make()
    h.runtime.images["node-1"].add(IMAGE)
    await h.scheduler.launch(order("L1"))
    await h.scheduler.launch(order("L1"))
    assert len(h.runtime.starts) == 1 and len(h.runtime.containers) == 1
    assert len(h.of(PodReady)) == 2, "each delivery answers, so the gateway always hears"
    assert h.scheduler.cluster.launched_sessions() == 1


async def test_over_quota_the_launch_reports_its_place_then_fails_with_the_reason(
    make: Make,
) -> None:
    h: Harness = await make(repo_quota=1, queue_timeout=0.2)
    await h.scheduler.launch(order("L1"))
    await h.scheduler.launch(order("L2"))
    queued = h.of(LaunchQueued)
    assert [(q.position, q.limit) for q in queued] == [(1, "repository")]
    failed = h.of(LaunchFailed)
    assert len(failed) == 1 and failed[0].reason == FailureReason.NO_CAPACITY
    assert "limit" in failed[0].message and "try again" in failed[0].message


async def test_a_repository_with_its_own_quota_queues_at_it_while_others_launch(
    make: Make,
) -> None:
    h: Harness = await make(repo_quota=100, queue_timeout=60)
    other = "https://example.org/other"
    await h.scheduler.launch(order("L1", repo_quota=1))
    waiting = asyncio.create_task(h.scheduler.launch(order("L2", repo_quota=1)))
    await eventually(lambda: h.of(LaunchQueued), within=10, what="a LaunchQueued")
    await h.scheduler.launch(order("O1", repo=other, repo_quota=1))
    assert [r.launch_id for r in h.of(PodReady)] == ["L1", "O1"] and not waiting.done()
    [queued] = h.of(LaunchQueued)
    assert (queued.launch_id, queued.position, queued.limit) == ("L2", 1, "repository")
    first = session_name(REPO, "L1")
    await h.scheduler.stop(IdleDetected(launch_id="L1", session=first, reason=StopReason.IDLE))
    await asyncio.wait_for(waiting, 10)
    assert h.of(PodReady)[-1].launch_id == "L2"


async def test_the_queue_message_names_the_quota_that_held_the_launch(make: Make) -> None:
    h: Harness = await make(repo_quota=100, queue_timeout=0.1)
    await h.scheduler.launch(order("L1", repo_quota=1))
    await h.scheduler.launch(order("L2", repo_quota=1))
    [failed] = h.of(LaunchFailed)
    assert failed.launch_id == "L2" and "already has 1 sessions running" in failed.message
    await h.scheduler.launch(order("L3"))
    assert h.of(PodReady)[-1].launch_id == "L3", "without a quota of its own: the default"


async def test_a_stop_frees_the_seat_for_the_waiting_launch(make: Make) -> None:
    h: Harness = await make(repo_quota=1, queue_timeout=5)
    await h.scheduler.launch(order("L1"))
    waiting = asyncio.create_task(h.scheduler.launch(order("L2")))
    await eventually(lambda: h.of(LaunchQueued), within=10, what="L2 queued")
    first = session_name(REPO, "L1")
    await h.scheduler.stop(
        IdleDetected(launch_id="L1", session=first, reason=StopReason.IDLE, idle_seconds=700)
    )
    await waiting
    assert [e.session for e in h.of(PodReady)] == [first, session_name(REPO, "L2")]
    [stopped] = h.of(PodStopped)
    assert (stopped.reason, stopped.idle_seconds) == (StopReason.IDLE, 700), "for its page"


async def test_a_session_that_never_answers_fails_the_launch_and_is_removed(make: Make) -> None:
    h: Harness = await make()
    repo = "https://example.org/dead"
    await h.scheduler.launch(LaunchOrder("L1", IMAGE, launch_context(repo_url=repo)))
    failed = h.of(LaunchFailed)
    assert len(failed) == 1 and failed[0].reason == FailureReason.START_FAILED
    assert h.runtime.containers == {} and h.scheduler.cluster.seats == {}


async def test_reconcile_adopts_live_sessions_and_removes_the_dead(make: Make) -> None:
    h: Harness = await make()
    live, stopped, hung = "live-1", "gone-1", "dead-1"
    h.runtime.containers[live] = h.runtime.session(live, "node-1")
    h.runtime.containers[stopped] = h.runtime.session(stopped, "node-2", launch_id="L-gone")
    h.runtime.end(stopped, 0)  # shut down while the scheduler was away
    h.runtime.containers[hung] = h.runtime.session(hung, "node-2")
    await h.scheduler.reconcile()
    assert stopped not in h.runtime.containers
    assert set(h.scheduler.cluster.seats) == {live, hung}
    stops = [(e.launch_id, e.session, e.reason) for e in h.of(PodStopped)]
    assert stops == [("L-gone", stopped, StopReason.SHUT_DOWN)], "its route may still be there"
    await asyncio.gather(*h.scheduler._tasks)
    assert set(h.runtime.containers) == {live}, "never answered, no launch came back: orphan"
    assert set(h.scheduler.cluster.seats) == {live}


async def test_a_launch_is_served_from_the_warm_pool(make: Make) -> None:
    h: Harness = await make(warm_pool_share=0.25)  # one 1 GiB seat of 4 GiB
    h.runtime.images["node-1"].add(IMAGE)
    await h.scheduler.launch(order("L1"))
    h.scheduler.fill_pool()
    await h.settled()
    warm = await h.runtime.list_warm()
    assert len(warm) == 1
    starts = len(h.runtime.starts)
    await h.scheduler.launch(order("L2"))
    ready = h.of(PodReady)[-1]
    assert ready.session == warm[0].name, "the token is derived from the name Jupyter runs under"
    assert ready.context.repo_url == REPO, "the launch's context, not the warm session's"
    started = [spec for _, spec in h.runtime.starts[starts:] if not spec.warm]
    assert started == [], "no container started for the launch (the pool's refill, warm)"
    assert await h.runtime.get(session_name(REPO, "L2")) is not None
    await h.scheduler.launch(order("L2"))
    assert h.of(PodReady)[-1].session == warm[0].name, "a redelivery finds the claimed session"


async def test_a_warm_session_serves_only_launches_with_its_binderhub_variables(
    make: Make,
) -> None:
    """A process's environment is fixed at its start: a warm session gets the variables of its
    image's latest launch, goes only to launches with the same, and is replaced when launches
    of its image come with others."""
    h: Harness = await make(warm_pool_share=0.25)  # one 1 GiB seat of 4 GiB
    h.runtime.images["node-1"].add(IMAGE)
    badge = {"BINDER_REQUEST": "v2/gh/o/r/HEAD", "BINDER_REPO_URL": REPO}
    pinned = {"BINDER_REQUEST": "v2/gh/o/r/v1", "BINDER_REPO_URL": REPO}
    await h.scheduler.launch(order("L1", env=badge))
    assert h.runtime.starts[-1][1].env == badge, "a launched session gets its launch's"
    h.scheduler.fill_pool()
    await h.settled()
    assert [w.env for w in await h.runtime.list_warm()] == [badge]
    starts = len(h.runtime.starts)
    await h.scheduler.launch(order("L2", env=pinned))
    assert len(h.runtime.starts) == starts + 1, "the warm session has other variables"
    assert h.runtime.starts[-1][1].env == pinned
    h.scheduler.fill_pool()
    await h.settled()
    warm = await h.runtime.list_warm()
    assert [w.env for w in warm] == [pinned], "the pool follows the latest launch"
    starts = len(h.runtime.starts)
    await h.scheduler.launch(order("L3", env=pinned))
    assert h.of(PodReady)[-1].session == warm[0].name
    assert all(spec.warm for _, spec in h.runtime.starts[starts:]), "only the pool's refill"


async def test_the_handlers_pass_the_repositorys_quota_and_abandonments_on() -> None:
    tables: dict[str | None, Handlers] = {}
    orders: list[LaunchOrder] = []
    abandoned: list[str] = []

    class Bus:
        async def consume(self, spec: QueueSpec, handlers: Handlers, *, prefetch: int) -> str:
            handlers.check(spec)  # as the real bus does: the table matches the bindings
            tables[spec.name] = handlers
            return spec.name or "exclusive"

    async def deliver(spec: QueueSpec, event: Event) -> None:
        handler = tables[spec.name].handler_for(event)
        assert handler is not None, event.type
        await handler(event)

    class Scheduler:
        settings = SchedulerSettings()

        async def launch(self, order: LaunchOrder) -> None:
            orders.append(order)

        async def abandon(self, event: LaunchAbandoned) -> None:
            abandoned.append(event.launch_id)

        async def stop(self, event: IdleDetected) -> None:
            raise AssertionError(event)

    await subscribe(Bus(), Scheduler())  # type: ignore[arg-type]
    resolved = ref_resolved(
        "L1",
        image=IMAGE,
        image_exists=True,
        repo_url=REPO,
        repo_config=RepoConfig(quota=2),
        session_env={"BINDER_REQUEST": "v2/gh/o/r/main"},
    )
    await deliver(topology.SCHEDULER, resolved)
    built = image_built(
        "L2", image=IMAGE, repo_url=REPO, session_env={"BINDER_REQUEST": "v2/git/x/HEAD"}
    )
    await deliver(topology.SCHEDULER, built)
    await deliver(topology.SCHEDULER_STOPS, LaunchAbandoned(launch_id="L3"))
    assert [(o.launch_id, o.repo_quota, o.session_env["BINDER_REQUEST"]) for o in orders] == [
        ("L1", 2, "v2/gh/o/r/main"),
        ("L2", None, "v2/git/x/HEAD"),
    ]
    assert abandoned == ["L3"]
    assert orders[0].repo_key == resolved.context.repo_key, "the resolver's key, not recomputed"
    launches = tables[topology.SCHEDULER.name]
    assert launches.handler_for(ref_resolved("L4", image_exists=False)) is None, "a builder's"
    assert launches.handler_for(image_built("L5", build_only=True)) is None, "nothing to start"


async def test_the_runner_supervises_the_schedulers_loops_at_their_intervals(make: Make) -> None:
    h: Harness = await make(disk_check_interval=7, reconcile_interval=9)
    declared = {loop.name: loop.interval for loop in app.loops(h.scheduler)}
    # Maintenance, pre-pulls and exits wait inside their steps (for a launch, for a node found
    # down or their own interval, for the runtime's next exit).
    assert declared == {
        "maintain": 0,
        "prepull": 0,
        "disk": 7,
        "exits": 0,
        "reconcile": 9,
        "nodes": 1,
    }
