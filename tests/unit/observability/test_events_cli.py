"""`bindery events`: a launch's timeline names the failing service and reason; times and virtual
hosts are parsed the way a person types them (issue 7)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bindery.bus.eventlog import Recorded
from bindery.cli.events import UsageError, parse_time, summary, timeline, vhost_of, with_vhost
from bindery.events import Event, FailureReason, LaunchFailed, LaunchRequested
from tests.support.launches import ref_resolved

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def recorded(event: Event, producer: str, offset: int) -> Recorded:
    return Recorded(offset, event, producer, event.type, event.to_json(), {})


def test_the_timeline_of_a_failed_launch_names_the_service_and_reason() -> None:
    records = [
        recorded(LaunchRequested(launch_id="l", time=T0, provider="git", spec="x/y"), "gateway", 0),
        recorded(
            LaunchFailed(
                launch_id="l",
                time=T0 + timedelta(seconds=1.25),
                service="builder",
                reason=FailureReason.STEP_FAILED,
                message="pip install failed\nstep 3",
            ),
            "builder",
            1,
        ),
    ]
    lines = timeline(records)
    assert lines[0] == "launch l: failed in builder (step_failed): pip install failed\nstep 3"
    assert "+   1.250s" in lines[-1] and "builder" in lines[-1]
    assert lines[2].split()[3:5] == ["gateway", "launch-requested"]


def test_summary_shows_fields_not_the_envelope_and_cuts_long_values() -> None:
    event = ref_resolved(
        "l",
        image="i",
        image_exists=True,
        repo_url="https://example.org/" + "r" * 300,
        ref="main",
        resolved_ref="c" * 40,
    )
    text = summary(event)
    assert "launch_id" not in text and "event_id" not in text
    assert "ref=main" in text
    assert max(len(part) for part in text.split()) <= 120 + len("repo_url=")


def test_times_are_iso_or_an_age() -> None:
    now = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    assert parse_time("15m", now) == now - timedelta(minutes=15)
    assert parse_time("2d", now) == now - timedelta(days=2)
    assert parse_time("2025-03-01T10:00") == datetime(2025, 3, 1, 10, 0, tzinfo=UTC)
    with pytest.raises(UsageError, match="not a time"):
        parse_time("yesterday")


def test_the_target_virtual_host_replaces_the_sources() -> None:
    url = "amqp://guest:pw@127.0.0.1:5672/bindery"
    assert with_vhost(url, "replay/1") == "amqp://guest:pw@127.0.0.1:5672/replay%2F1"
    assert vhost_of(with_vhost(url, "replay/1")) == "replay/1"
    assert vhost_of("amqp://h/") == "/"
