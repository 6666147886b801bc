"""The launch archive: one line per launch in BinderHub's launch schema (v6) plus Bindery's
outcome, reason and durations; redelivery writes nothing twice; no IP address (issue 7)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bindery.archiver.archive import Archive, archive_file
from bindery.events import (
    BuildStarted,
    Event,
    FailureReason,
    ImageBuilt,
    LaunchAbandoned,
    LaunchFailed,
    LaunchRequested,
    PodScheduled,
    RefResolved,
)
from tests.support.launches import github_launch_context, pod_ready

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
COMMIT = "a" * 40


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


BUILD = "0190000000001234abcd"


def built_launch(launch_id: str) -> list[Event]:
    image = f"127.0.0.1:5000/bindery/r:{COMMIT}"
    return [
        LaunchRequested(launch_id=launch_id, time=at(0), provider="gh", spec="owner/repo/main"),
        RefResolved(
            launch_id=launch_id,
            time=at(0.5),
            context=github_launch_context(at(0), COMMIT),
            image=image,
            image_exists=False,
        ),
        BuildStarted(launch_id=launch_id, time=at(1), image=image, builder="b-1", build_id=BUILD),
        ImageBuilt(
            launch_id=launch_id,
            time=at(61),
            context=github_launch_context(at(0), COMMIT),
            image=image,
            duration_seconds=59.5,
        ),
        PodScheduled(launch_id=launch_id, time=at(61.2), session="s", node="node-1", image=image),
        pod_ready(
            launch_id,
            time=at(63),
            session="s",
            node="node-1",
            image=image,
            target="http://x",
            context=github_launch_context(at(0), COMMIT),
        ),
    ]


def lines(directory: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in archive_file(directory, T0).read_text().splitlines()]


def test_a_ready_launch_is_one_binderhub_record_with_durations(tmp_path: Path) -> None:
    archive = Archive(tmp_path, origin="binder.example.org")
    for event in built_launch("l-1"):
        archive.observe(event)
    (record,) = lines(tmp_path)
    assert archive_file(tmp_path, T0).name == "events-2025-03-01.jsonl"
    assert {k: record[k] for k in ("schema", "version", "provider", "spec", "ref", "status")} == {
        "schema": "binderhub.jupyter.org/launch",
        "version": 6,
        "provider": "GitHub",
        "spec": "owner/repo/main",
        "ref": COMMIT,
        "status": "success",
    }
    assert record["origin"] == "binder.example.org"
    assert record["build_token"] is False and "request_origin" in record
    assert record["outcome"] == "ready" and record["failure_reason"] is None
    assert record["built"] is True
    assert record["build_id"] == BUILD, "where the log of the build it followed stays"
    assert record["duration_seconds"] == {
        "total": 63.0,
        "resolve": 0.5,
        "build": 59.5,
        "launch": 2.0,
    }
    assert not any("ip" in key.lower() for key in record), "no IP address is archived"


def test_a_failed_launch_names_its_reason_and_service(tmp_path: Path) -> None:
    archive = Archive(tmp_path, origin="o")
    archive.observe(LaunchRequested(launch_id="l-2", time=at(0), provider="git", spec="u/x"))
    archive.observe(
        LaunchFailed(
            launch_id="l-2",
            time=at(2),
            service="resolver",
            reason=FailureReason.REF_NOT_FOUND,
            message="no branch x",
        )
    )
    (record,) = lines(tmp_path)
    assert record["status"] == "failure" and record["outcome"] == "failed"
    assert record["failure_reason"] == "ref_not_found"
    assert record["failed_service"] == "resolver"
    assert record["provider"] == "Git" and record["ref"] == ""
    assert record["build_id"] is None, "no build"
    assert record["duration_seconds"]["total"] == 2.0


def test_an_abandoned_launch_says_so_and_its_late_session_is_not_a_second_line(
    tmp_path: Path,
) -> None:
    archive = Archive(tmp_path, origin="o")
    events = built_launch("l-4")
    for event in events[:3]:  # requested, resolved, build started
        archive.observe(event)
    archive.observe(LaunchAbandoned(launch_id="l-4", time=at(40)))
    for event in events[3:]:  # the build finishes for the cache; a late ready changes nothing
        archive.observe(event)
    (record,) = lines(tmp_path)
    assert (record["outcome"], record["status"]) == ("abandoned", "failure")
    assert (record["failure_reason"], record["failed_service"]) == ("abandoned", "gateway")
    assert record["built"] is True and record["duration_seconds"]["total"] == 40.0
    assert record["duration_seconds"]["launch"] is None


def test_redelivered_events_write_nothing_twice_even_after_a_restart(tmp_path: Path) -> None:
    events = built_launch("l-3")
    archive = Archive(tmp_path, origin="o")
    for event in events:
        archive.observe(event)
    assert archive.observe(events[-1]) is None
    restarted = Archive(tmp_path, origin="o")
    restarted.load(now=T0)
    assert restarted.observe(events[-1]) is None
    assert len(lines(tmp_path)) == 1


def test_a_build_only_launch_ends_with_its_image(tmp_path: Path) -> None:
    archive = Archive(tmp_path, origin="o")
    events = built_launch("l-4")[:4]
    last = events[-1]
    assert isinstance(last, ImageBuilt)
    events[-1] = last.model_copy(
        update={"context": last.context.model_copy(update={"build_only": True})}
    )
    for event in events:
        archive.observe(event)
    (record,) = lines(tmp_path)
    assert record["outcome"] == "built" and record["status"] == "success"
    assert record["duration_seconds"]["launch"] is None


def test_a_build_only_launch_whose_image_exists_ends_when_resolved(tmp_path: Path) -> None:
    archive = Archive(tmp_path, origin="o")
    requested, resolved = built_launch("l-5")[:2]
    assert isinstance(resolved, RefResolved)
    done = resolved.model_copy(
        update={
            "image_exists": True,
            "context": resolved.context.model_copy(update={"build_only": True}),
        }
    )
    archive.observe(requested)
    archive.observe(done)
    (record,) = lines(tmp_path)
    assert (record["outcome"], record["built"]) == ("built", False)
    assert record["duration_seconds"]["total"] == 0.5


@pytest.mark.parametrize(
    "seen",
    [slice(1, None), slice(-1, None)],
    ids=["started after the request", "started while the session started"],
)
def test_a_launch_whose_first_events_were_missed_is_recorded_from_its_context(
    tmp_path: Path, seen: slice
) -> None:
    """The archiver started after some of the launch's events went by: the context that
    ref-resolved, image-built and pod-ready carry has the rest."""
    archive = Archive(tmp_path, origin="o")
    for event in built_launch("l-6")[seen]:
        archive.observe(event)
    (record,) = lines(tmp_path)
    assert (record["provider"], record["spec"], record["ref"]) == (
        "GitHub",
        "owner/repo/main",
        COMMIT,
    )
    assert record["duration_seconds"]["total"] == 63.0, "timed from the context's request time"
