"""Events become BinderHub phases; the buffer keeps them for replay, bounded."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from bindery.bus.eventlog import StreamUnavailable
from bindery.events import (
    BuildLog,
    BuildStarted,
    FailureReason,
    IdleDetected,
    LaunchFailed,
    LaunchRequested,
    PodScheduled,
    PodStopped,
    RefResolved,
    SessionActivity,
    StopReason,
)
from bindery.events.build import new_build_id
from bindery.gateway.progress import LaunchProgress, ProgressHub, entry_bytes, to_payload
from tests.support.eventually import eventually
from tests.support.launches import image_built, pod_ready, ref_resolved

PUBLIC = "http://gw.example:8585"
L = "a" * 32


def resolved(image_exists: bool = False, **context: Any) -> RefResolved:
    return ref_resolved(
        L, image="127.0.0.1:5000/r:fff", image_exists=image_exists, resolved_ref="f" * 40, **context
    )


def payload(event: object) -> dict[str, object] | None:
    return to_payload(event, session_url=lambda s: f"{PUBLIC}/user/{s}/")  # type: ignore[arg-type]


def test_ref_resolved_missing_image_is_fetching() -> None:
    assert payload(resolved()) == {
        "phase": "fetching",
        "message": f"Resolved HEAD to {'f' * 40}\n",
        "launch_id": L,
    }


def test_ref_resolved_existing_image_is_built() -> None:
    assert payload(resolved(image_exists=True)) == {
        "phase": "built",
        "imageName": "127.0.0.1:5000/r:fff",
        "message": "Found built image, launching...\n",
        "launch_id": L,
    }


def test_build_only_with_existing_image_is_ready_without_session() -> None:
    p = payload(resolved(image_exists=True, build_only=True))
    assert p is not None and p["phase"] == "ready" and "token" not in p and "url" not in p


def test_build_phases() -> None:
    started = payload(BuildStarted(launch_id=L, image="img", builder="b1"))
    assert started is not None and started["phase"] == "building"
    line = BuildLog(launch_id=L, image="img", phase="pushing", message="Pushing layer\n")
    assert payload(line) == {"phase": "pushing", "message": "Pushing layer\n", "launch_id": L}
    built = image_built(L, image="img")
    assert payload(built) == {
        "phase": "built",
        "imageName": "img",
        "message": "Built image, launching...\n",
        "launch_id": L,
    }
    built_only = image_built(L, image="img", build_only=True)
    p = payload(built_only)
    assert p is not None and p["phase"] == "ready" and p["imageName"] == "img"


def test_a_build_warning_is_a_building_line_marked_as_a_warning() -> None:
    # BinderHub clients know no "warning" phase: they see one more building line.
    line = BuildLog(launch_id=L, image="img", phase="warning", message="Warning: Python 3.10")
    assert payload(line) == {
        "phase": "building",
        "message": "Warning: Python 3.10\n",
        "warning": True,
        "launch_id": L,
    }


def test_pod_phases_and_ready_payload() -> None:
    scheduled = payload(PodScheduled(launch_id=L, session="s-1", node="n", image="img"))
    assert scheduled is not None and scheduled["phase"] == "launching"
    ready = pod_ready(
        L,
        session="s-1",
        node="n",
        image="img",
        target="http://127.0.0.1:4000",
        repo_url="https://example.org/r.git",
    )
    assert payload(ready) == {
        "phase": "ready",
        "message": f"server running at {PUBLIC}/user/s-1/\n",
        "url": f"{PUBLIC}/user/s-1/",
        "image": "img",
        "repo_url": "https://example.org/r.git",
        "launch_id": L,
    }


def test_failure_payload() -> None:
    failed = LaunchFailed(
        launch_id=L, service="resolver", reason=FailureReason.REF_NOT_FOUND, message="no ref nope"
    )
    assert payload(failed) == {
        "phase": "failed",
        "message": "no ref nope",
        "reason": "ref_not_found",
        "launch_id": L,
    }


@pytest.mark.parametrize(
    "event",
    [
        LaunchRequested(launch_id=L, provider="git", spec="x/HEAD"),
        PodStopped(launch_id=L, session="s", reason=StopReason.IDLE),
        IdleDetected(launch_id=L, session="s", reason=StopReason.IDLE),
        SessionActivity(launch_id=L, session="s", last_activity=datetime(2026, 1, 1, tzinfo=UTC)),
    ],
)
def test_events_not_shown(event: object) -> None:
    assert payload(event) is None


def hub(**kw: int | float) -> ProgressHub:
    return ProgressHub(
        session_url=lambda s: f"{PUBLIC}/user/{s}/",
        **kw,  # type: ignore[arg-type]
    )


def test_hub_numbers_events_and_ignores_redeliveries() -> None:
    h = hub()
    launch = h.open(L, "git", "u/HEAD")
    event = BuildLog(launch_id=L, image="i", message="x\n")
    assert h.record(event) is not None
    assert h.record(event) is None  # same event id: a redelivery
    assert [e.seq for e in launch.since(-1)] == [0, 1]
    assert [e.payload["phase"] for e in launch.since(0)] == ["building"]
    assert launch.since(1) == []


def test_first_terminal_event_wins() -> None:
    h = hub()
    launch = h.open(L, "git", "u/HEAD")
    h.record(LaunchFailed(launch_id=L, service="s", reason=FailureReason.INTERNAL, message="a"))
    h.record(LaunchFailed(launch_id=L, service="s", reason=FailureReason.INTERNAL, message="b"))
    assert [e.payload["phase"] for e in launch.since(-1)] == ["waiting", "failed"]
    assert launch.finished


async def test_a_builds_end_waits_for_its_final_log_line() -> None:
    h = hub(final_line_wait=10.0)
    launch = h.open(L, "git", "u/HEAD")
    h.record(BuildStarted(launch_id=L, image="i", builder="b"))
    h.record(LaunchFailed(launch_id=L, service="b", reason=FailureReason.OOM, message="oom"))
    h.record(LaunchFailed(launch_id=L, service="s", reason=FailureReason.INTERNAL, message="2nd"))
    h.record(BuildLog(launch_id=L, image="i", message="Killed\n"))
    assert not launch.finished
    h.record(BuildLog(launch_id=L, image="i", message="Build failed\n", final=True))
    # At once, with no timer: the builder said its log is complete.
    assert launch.finished
    assert [e.payload["message"] for e in launch.since(1)] == ["Killed\n", "Build failed\n", "oom"]


def test_failure_without_a_build_is_not_delayed() -> None:
    h = hub(final_line_wait=10.0)
    launch = h.open(L, "git", "u/HEAD")
    failed = LaunchFailed(
        launch_id=L, service="resolver", reason=FailureReason.REF_NOT_FOUND, message="no ref"
    )
    assert h.record(failed) is not None and launch.finished


def test_an_end_after_the_final_line_is_not_delayed() -> None:
    h = hub(final_line_wait=10.0)
    launch = h.open(L, "git", "u/HEAD")
    h.record(BuildLog(launch_id=L, image="i", message="done\n", final=True))
    failed = LaunchFailed(
        launch_id=L, service="scheduler", reason=FailureReason.INTERNAL, message="x"
    )
    assert h.record(failed) is not None and launch.finished


async def test_a_lost_final_line_holds_the_end_only_for_the_wait() -> None:
    # A builder killed mid-build sends no final line.
    h = hub(final_line_wait=0.1)
    launch = h.open(L, "git", "u/HEAD")
    h.record(BuildLog(launch_id=L, image="i", message="0\n"))
    h.record(LaunchFailed(launch_id=L, service="b", reason=FailureReason.OOM, message="oom"))
    assert not launch.finished
    assert await launch.wait(launch.next_seq, 5.0)
    assert launch.finished and launch.since(-1)[-1].payload["phase"] == "failed"


def test_cached_ready_is_not_delayed() -> None:
    h = hub(final_line_wait=10.0)
    launch = h.open(L, "git", "u/HEAD")
    ready = pod_ready(L, session="s", node="n", image="i", target="http://127.0.0.1:1")
    assert h.record(ready) is not None and launch.finished


def line(launch_id: str, size: int) -> BuildLog:
    """A build-log line of `size` characters, newline included."""
    return BuildLog(launch_id=launch_id, image="i", message="x" * (size - 1) + "\n")


def test_buffer_keeps_the_newest_entries_per_launch_within_its_bytes() -> None:
    one = entry_bytes(to_payload(line(L, 8192), session_url=str) or {})
    h = hub(max_launch_bytes=10 * one)
    launch = h.open(L, "git", "u/HEAD")
    for _ in range(25):
        h.record(line(L, 8192))
    entries = launch.since(-1)
    assert len(entries) == 10 and launch.dropped == 16
    assert launch.held_bytes <= 10 * one
    assert [e.seq for e in launch.since(20)] == [21, 22, 23, 24, 25]

    # Short lines cost less: many more of them fit in the same bytes.
    h = hub(max_launch_bytes=10 * one)
    launch = h.open(L, "git", "u/HEAD")
    for _ in range(100):
        h.record(line(L, 10))
    assert len(launch.since(-1)) == 101 and launch.dropped == 0


def test_a_launchs_end_is_kept_however_large() -> None:
    h = hub(max_launch_bytes=1000)
    launch = h.open(L, "git", "u/HEAD")
    h.fail(L, "x" * 5000)
    assert launch.since(-1)[-1].payload["phase"] == "failed"


def test_hub_bounds_launches_and_total_bytes() -> None:
    h = hub(max_launches=3)
    for i in range(5):
        h.open(f"{i:032x}", "git", "u/HEAD")
    assert len(h) == 3 and h.get(f"{0:032x}") is None and h.get(f"{4:032x}") is not None

    h = hub(max_total_bytes=100 * 1024)
    for i in range(5):
        lid = f"{i:032x}"
        h.open(lid, "git", "u/HEAD")
        for _ in range(5):
            h.record(line(lid, 8192))
    assert h.get(f"{4:032x}") is not None and h.get(f"{0:032x}") is None
    assert sum(x.held_bytes for x in h.launches()) <= 100 * 1024
    assert sum(e.size for x in h.launches() for e in x.entries) == sum(
        x.held_bytes for x in h.launches()
    )


def test_finished_launches_expire_after_retention() -> None:
    h = hub(retention=10.0)
    launch = h.open(L, "git", "u/HEAD")
    h.fail(L, "boom")
    assert launch.finished_at is not None
    h.prune(now=launch.finished_at + 5)
    assert h.get(L) is launch
    h.prune(now=launch.finished_at + 11)
    assert h.get(L) is None


def test_requested_event_from_another_replica_creates_the_buffer() -> None:
    h = hub()
    h.requested(LaunchRequested(launch_id=L, provider="git", spec="u/HEAD"))
    launch = h.get(L)
    assert launch is not None and (launch.provider, launch.spec) == ("git", "u/HEAD")
    assert [e.payload["phase"] for e in launch.since(-1)] == ["waiting"]
    h.requested(LaunchRequested(launch_id=L, provider="git", spec="u/HEAD"))  # echo: no new entry
    assert len(launch.since(-1)) == 1


async def test_wait_wakes_on_new_entry_and_times_out() -> None:
    h = hub()
    launch = h.open(L, "git", "u/HEAD")
    assert await launch.wait(-1, 0.01) is True  # already there
    assert await launch.wait(0, 0.01) is False
    waiter = asyncio.create_task(launch.wait(0, 5.0))
    await asyncio.sleep(0)
    h.record(BuildLog(launch_id=L, image="i", message="x"))
    assert await waiter is True


L2 = "b" * 32
BUILD = "0190000000001234abcd"


def build_line(message: str, seq: int, *, final: bool = False) -> BuildLog:
    """Line `seq` of BUILD, published once, for L: the launch that started the build."""
    return BuildLog(launch_id=L, image="i", message=message, build_id=BUILD, seq=seq, final=final)


def messages(launch: LaunchProgress) -> list[object]:
    return [e.payload["message"] for e in launch.since(-1) if e.payload["phase"] == "building"]


async def test_a_launch_joining_a_build_gets_the_lines_so_far_then_each_line_once() -> None:
    h = hub(final_line_wait=10.0)
    first, joining = h.open(L, "git", "u/HEAD"), h.open(L2, "git", "u/HEAD")
    h.record(BuildStarted(launch_id=L, image="i", builder="b", build_id=BUILD))
    h.record(build_line("one\n", 0))
    h.record(build_line("two\n", 1))
    h.record(BuildStarted(launch_id=L2, image="i", builder="b", build_id=BUILD))
    three = build_line("three\n", 2)
    h.record(three)
    h.record(three)  # a redelivery
    h.record(LaunchFailed(launch_id=L2, service="b", reason=FailureReason.OOM, message="oom"))
    assert not joining.finished, "its end waits for the build's final line like the first's"
    h.record(build_line("Build failed\n", 3, final=True))

    log = ["Building image i\n", "one\n", "two\n", "three\n", "Build failed\n"]
    assert messages(first) == log
    assert messages(joining) == log
    assert {e.payload["launch_id"] for e in joining.since(-1)} == {L2}
    assert joining.finished and joining.since(-1)[-1].payload["message"] == "oom"


def test_a_launch_whose_build_started_comes_after_the_final_line_gets_the_whole_log() -> None:
    # Build logs and build-started travel on different channels: either may come first.
    h = hub(final_line_wait=10.0)
    joining = h.open(L2, "git", "u/HEAD")
    h.record(build_line("one\n", 0))
    h.record(build_line("done\n", 1, final=True))
    h.record(BuildStarted(launch_id=L2, image="i", builder="b", build_id=BUILD))
    assert messages(joining) == ["Building image i\n", "one\n", "done\n"]
    assert joining.log_ended
    ready = pod_ready(L2, session="s", node="n", image="i", target="http://127.0.0.1:1")
    assert h.record(ready) is not None and joining.finished, "not held: the log is complete"


def test_lines_of_a_build_no_launch_here_follows_are_kept_for_the_launch_that_started_it() -> None:
    h = hub()
    assert h.record(build_line("one\n", 0)) is not None
    launch = h.get(L)
    assert launch is not None and messages(launch) == ["one\n"]


class KeptLines:
    """The build-log stream as progress reads a build's earlier lines back: what it holds of
    BUILD, answered once `answer` is set."""

    def __init__(self, lines: list[BuildLog], *, answered: bool = True) -> None:
        self.lines = lines
        self.asked: list[str] = []
        self.answer = asyncio.Event()
        if answered:
            self.answer.set()

    async def read_back(self, build_id: str) -> list[BuildLog]:
        self.asked.append(build_id)
        await self.answer.wait()
        return [line for line in self.lines if line.build_id == build_id]


async def test_a_replica_that_missed_a_builds_first_lines_shows_them_first_and_each_once() -> None:
    lines = [build_line(f"{n}\n", n) for n in range(5)]
    stream = KeptLines(lines[:4], answered=False)  # 3 reached the stream before the read
    h = hub(final_line_wait=10.0)
    h.read_back = stream.read_back
    joining = h.open(L2, "git", "u/HEAD")
    h.record(lines[2])  # the first this replica gets: 0 and 1 went by before it started
    h.record(BuildStarted(launch_id=L2, image="i", builder="b", build_id=BUILD))
    h.record(lines[3])  # comes while the earlier ones are read: waits for them
    assert messages(joining) == ["Building image i\n"]
    stream.answer.set()
    everything = ["Building image i\n", "0\n", "1\n", "2\n", "3\n"]
    await eventually(lambda: messages(joining) == everything, what="the lines read back")
    h.record(lines[3])  # a redelivery
    h.record(lines[4])
    assert messages(joining) == [*everything, "4\n"]
    assert stream.asked == [BUILD], "read back once"


async def test_a_build_older_than_the_replica_is_read_back_when_a_launch_joins_it() -> None:
    # The build prints nothing for a while: the launch is not left without its log until then.
    stream = KeptLines([build_line("0\n", 0), build_line("1\n", 1)])
    h = hub()
    h.read_back = stream.read_back
    joining = h.open(L2, "git", "u/HEAD")
    h.record(BuildStarted(launch_id=L2, image="i", builder="b", build_id=BUILD))
    await eventually(
        lambda: messages(joining) == ["Building image i\n", "0\n", "1\n"], what="lines read back"
    )
    newer = new_build_id()
    h.record(BuildStarted(launch_id=L, image="i", builder="b", build_id=newer))
    h.record(BuildLog(launch_id=L, image="i", message="first\n", build_id=newer, seq=0))
    assert stream.asked == [BUILD], "a build seen from its first line is not read back"


async def test_lines_go_on_when_the_earlier_ones_cannot_be_read() -> None:
    async def unreachable(build_id: str) -> list[BuildLog]:
        raise StreamUnavailable(f"cannot read {build_id}")

    h = hub()
    h.read_back = unreachable
    launch = h.open(L, "git", "u/HEAD")
    h.record(build_line("2\n", 2))
    await eventually(lambda: messages(launch) == ["2\n"], what="the line that came")
    h.record(build_line("3\n", 3))
    assert messages(launch) == ["2\n", "3\n"]
