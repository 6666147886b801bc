import json

import pytest

from bindery.events import (
    MAX_SPEC_LENGTH,
    FailureReason,
    InvalidEvent,
    LaunchFailed,
    LaunchRequested,
    parse_event,
)


def test_round_trip_keeps_every_field() -> None:
    event = LaunchRequested(launch_id="l1", provider="git", spec="a%2Fb/main")
    parsed = parse_event(event.to_json())
    assert parsed == event
    assert json.loads(event.to_json())["type"] == "launch-requested"


def test_events_are_frozen() -> None:
    event = LaunchFailed(launch_id="l1", service="x", reason=FailureReason.OOM, message="m")
    with pytest.raises(Exception, match="frozen"):
        event.message = "changed"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b"not json", "not JSON"),
        (b"[1]", "not a JSON object"),
        (b'{"type": "nope", "version": 1}', "unknown event type"),
        (b'{"type": "launch-requested", "version": 99, "launch_id": "x"}', "version"),
        (b'{"type": "launch-requested", "version": 1, "launch_id": "x"}', "invalid"),
        # Before the launch context: loose repository and ref, refused as RefResolved v1 is.
        (
            b'{"type": "pod-ready", "version": 1, "launch_id": "x", "session": "s", "node": "n",'
            b' "image": "i", "target": "http://t", "repo_url": "r", "resolved_ref": "c"}',
            "pod-ready version 1 is not 2",
        ),
        (
            b'{"type": "launch-failed", "version": 1, "launch_id": "x", "service": "s",'
            b' "reason": "gremlins", "message": "m"}',
            "invalid",
        ),
    ],
)
def test_malformed_bodies_are_refused_with_a_reason(body: bytes, why: str) -> None:
    with pytest.raises(InvalidEvent, match=why):
        parse_event(body)


def test_unknown_fields_are_refused() -> None:
    body = LaunchRequested(launch_id="l", provider="git", spec="s").to_json()
    data = json.loads(body) | {"surprise": 1}
    with pytest.raises(InvalidEvent):
        parse_event(json.dumps(data))


def test_a_launch_carries_no_spec_longer_than_the_one_limit() -> None:
    longest = LaunchRequested(launch_id="l1", provider="git", spec="a" * MAX_SPEC_LENGTH)
    body = json.loads(longest.to_json())
    body["spec"] += "a"
    with pytest.raises(InvalidEvent):
        parse_event(json.dumps(body).encode())
