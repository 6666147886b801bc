"""The builder's domain with a fake build runner and a list for a bus: no broker, no podman."""

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from bindery.builder.buildprocess import BuildLine, BuildResult, FailureReason, OnLine
from bindery.builder.coordinator import Builder
from bindery.builder.job import BuildOptions, BuildRequest
from bindery.events import (
    BuildLog,
    BuildStarted,
    Event,
    ImageBuilt,
    LaunchFailed,
    RefResolved,
    RepoConfig,
)
from bindery.events import FailureReason as LaunchFailure
from tests.support.eventually import eventually
from tests.support.launches import SHA, ref_resolved


def resolved(launch_id: str, image: str = "reg/bindery/r:1", **fields: Any) -> RefResolved:
    return ref_resolved(launch_id, image=image, **fields)


class FakeRunner:
    """Emits the lines it is told to, then finishes when released, with the given outcome."""

    def __init__(self, reason: FailureReason | None = None) -> None:
        self.reason = reason
        self.requests: list[BuildRequest] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.running = 0
        self.most_running = 0

    async def __call__(
        self, request: BuildRequest, on_line: OnLine, options: BuildOptions
    ) -> BuildResult:
        self.requests.append(request)
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        await on_line(BuildLine("building", "STEP 1"))
        self.started.set()
        await self.release.wait()
        await on_line(BuildLine("pushing", "pushed"))
        self.running -= 1
        return BuildResult(
            request.image, self.reason, "failed: details" if self.reason else "ok", 4.5
        )


class Bus:
    def __init__(self, fail_logs: bool = False) -> None:
        self.events: list[Event] = []
        self.fail_logs = fail_logs

    async def publish(self, event: Event) -> None:
        if self.fail_logs and isinstance(event, BuildLog):
            raise ConnectionError("broker gone")
        self.events.append(event)

    def of(self, launch_id: str) -> list[tuple[str, str]]:
        """(event type, detail) per event of one launch, in order."""
        out = []
        for e in self.events:
            if e.launch_id == launch_id:
                detail = e.message if isinstance(e, (BuildLog, LaunchFailed)) else e.image  # type: ignore[attr-defined]
                out.append((e.type, detail))
        return out


def make(runner: FakeRunner, bus: Bus, max_concurrent: int = 2) -> Builder:
    return Builder(
        BuildOptions(),
        bus.publish,
        replica="test-1",
        max_concurrent_builds=max_concurrent,
        recently_built=2,
        run=runner,
    )


async def test_a_build_reports_start_log_lines_and_the_image() -> None:
    runner, bus = FakeRunner(), Bus()
    runner.release.set()
    requested = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    await make(runner, bus).on_ref_resolved(resolved("L1", build_only=True, requested_at=requested))
    started = bus.events[0]
    assert isinstance(started, BuildStarted)
    build_id = started.build_id
    assert bus.of("L1") == [
        ("build-started", "reg/bindery/r:1"),
        ("build-log", f"Build {build_id} on test-1: its log stays at /api/builds/{build_id}/log"),
        ("build-log", "STEP 1"),
        ("build-log", "pushed"),
        ("build-log", f"Build {build_id} finished in 4.5 s"),
        ("image-built", "reg/bindery/r:1"),
    ]
    logs = [e for e in bus.events if isinstance(e, BuildLog)]
    assert {e.build_id for e in logs} == {build_id}
    assert [e.final for e in logs] == [False, False, False, True], "the last line ends the log"
    assert [e.seq for e in logs] == [0, 1, 2, 3], "numbered: a gateway that missed some knows"
    built = bus.events[-1]
    assert isinstance(built, ImageBuilt)
    assert built.context == resolved("L1", build_only=True, requested_at=requested).context, (
        "the launch's context goes on to the scheduler (its requested_at: its place in line)"
    )
    assert built.duration_seconds == 4.5
    assert runner.requests == [BuildRequest("https://example.org/r.git", SHA, "reg/bindery/r:1")]


@pytest.mark.parametrize(
    ("reason", "launch_reason"),
    [
        (FailureReason.STEP_FAILED, LaunchFailure.STEP_FAILED),
        (FailureReason.TOO_LARGE, LaunchFailure.TOO_LARGE),
        (FailureReason.OOM, LaunchFailure.OOM),
        (FailureReason.TIMEOUT, LaunchFailure.TIMEOUT),
        (FailureReason.CLONE_FAILED, LaunchFailure.CLONE_FAILED),
        (FailureReason.PUSH_FAILED, LaunchFailure.INTERNAL),
        (FailureReason.INVALID_REQUEST, LaunchFailure.INVALID_SPEC),
        (FailureReason.INTERNAL_ERROR, LaunchFailure.INTERNAL),
    ],
)
async def test_a_failed_build_fails_the_launch_with_its_reason(
    reason: FailureReason, launch_reason: LaunchFailure
) -> None:
    runner, bus = FakeRunner(reason), Bus()
    runner.release.set()
    await make(runner, bus).on_ref_resolved(resolved("L1"))
    failed = bus.events[-1]
    assert isinstance(failed, LaunchFailed)
    assert (failed.reason, failed.service, failed.message) == (
        launch_reason,
        "builder",
        "failed: details",
    )


async def test_launches_of_an_image_in_flight_join_its_build_whose_log_is_published_once() -> None:
    runner, bus = FakeRunner(), Bus()
    builder = make(runner, bus)
    first = asyncio.create_task(builder.on_ref_resolved(resolved("L1")))
    await runner.started.wait()
    second = asyncio.create_task(builder.on_ref_resolved(resolved("L2")))
    await eventually(
        lambda: ("build-started", "reg/bindery/r:1") in bus.of("L2"),
        within=10,
        what="L2 joined the build",
    )
    runner.release.set()
    await asyncio.gather(first, second)

    assert len(runner.requests) == 1
    build_ids = {e.build_id for e in bus.events if isinstance(e, BuildStarted)}
    assert len(build_ids) == 1, "both launches follow the same build"
    build_id = build_ids.pop()
    assert bus.of("L1") == [
        ("build-started", "reg/bindery/r:1"),
        ("build-log", f"Build {build_id} on test-1: its log stays at /api/builds/{build_id}/log"),
        ("build-log", "STEP 1"),
        ("build-log", "pushed"),
        ("build-log", f"Build {build_id} finished in 4.5 s"),
        ("image-built", "reg/bindery/r:1"),
    ]
    # Each line once, for the launch that started the build: the gateway shows it to L2 too,
    # which its build-started names the build to.
    assert bus.of("L2") == [
        ("build-started", "reg/bindery/r:1"),
        ("image-built", "reg/bindery/r:1"),
    ]
    logs = [e for e in bus.events if isinstance(e, BuildLog)]
    assert len(logs) == 4 and {e.build_id for e in logs} == {build_id}


async def test_each_launch_carries_its_own_repository_settings_to_the_scheduler() -> None:
    runner, bus = FakeRunner(), Bus()
    builder = make(runner, bus)
    first = asyncio.create_task(builder.on_ref_resolved(resolved("L1", repo_config={"quota": 3})))
    await runner.started.wait()
    joined = asyncio.create_task(builder.on_ref_resolved(resolved("L2")))
    await eventually(
        lambda: ("build-started", "reg/bindery/r:1") in bus.of("L2"),
        within=10,
        what="L2 joined the build",
    )
    runner.release.set()
    await asyncio.gather(first, joined)
    await builder.on_ref_resolved(resolved("L3", repo_config={"quota": 9}))  # built moments ago
    built = {e.launch_id: e.context.repo_config for e in bus.events if isinstance(e, ImageBuilt)}
    assert built == {"L1": RepoConfig(quota=3), "L2": RepoConfig(), "L3": RepoConfig(quota=9)}


async def test_an_image_built_moments_ago_is_reported_at_once() -> None:
    runner, bus = FakeRunner(), Bus()
    runner.release.set()
    builder = make(runner, bus)
    await builder.on_ref_resolved(resolved("L1"))
    await builder.on_ref_resolved(resolved("L2"))
    assert len(runner.requests) == 1
    assert bus.of("L2") == [("image-built", "reg/bindery/r:1")]


async def test_a_failed_image_is_built_again_by_the_next_launch() -> None:
    runner, bus = FakeRunner(FailureReason.TIMEOUT), Bus()
    runner.release.set()
    builder = make(runner, bus)
    await builder.on_ref_resolved(resolved("L1"))
    await builder.on_ref_resolved(resolved("L2"))
    assert len(runner.requests) == 2


async def test_builds_beyond_the_limit_wait_for_a_slot() -> None:
    runner, bus = FakeRunner(), Bus()
    builder = make(runner, bus, max_concurrent=1)
    first = asyncio.create_task(builder.on_ref_resolved(resolved("L1", image="reg/a:1")))
    await runner.started.wait()
    second = asyncio.create_task(builder.on_ref_resolved(resolved("L2", image="reg/b:1")))
    await eventually(
        lambda: ("build-started", "reg/b:1") in bus.of("L2"), within=10, what="L2's build waiting"
    )
    assert [r.image for r in runner.requests] == ["reg/a:1"]
    runner.release.set()
    await asyncio.gather(first, second)
    assert [r.image for r in runner.requests] == ["reg/a:1", "reg/b:1"]
    assert runner.most_running == 1


async def test_a_local_path_is_built_from_its_file_url() -> None:
    runner, bus = FakeRunner(), Bus()
    runner.release.set()
    await make(runner, bus).on_ref_resolved(resolved("L1", repo_url="/srv/my repo"))
    assert runner.requests[0].repo_url == "file:///srv/my%20repo"


async def test_a_data_repository_is_built_as_its_provider_says() -> None:
    runner, bus = FakeRunner(), Bus()
    runner.release.set()
    event = resolved(
        "L1",
        provider="zenodo",
        spec="10.5281/zenodo.3242074",
        repo_url="https://zenodo.org/records/3242074",
        ref="",
        resolved_ref="3242074",
    )
    await make(runner, bus).on_ref_resolved(event)
    assert runner.requests == [
        BuildRequest(
            "https://zenodo.org/records/3242074", "3242074", "reg/bindery/r:1", provider="zenodo"
        )
    ]


async def test_logs_the_broker_refuses_do_not_fail_the_build() -> None:
    runner, bus = FakeRunner(), Bus(fail_logs=True)
    runner.release.set()
    await make(runner, bus).on_ref_resolved(resolved("L1"))
    assert [e.type for e in bus.events] == ["build-started", "image-built"]
    assert isinstance(bus.events[0], BuildStarted)
