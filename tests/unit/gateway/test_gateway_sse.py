"""Server-Sent Events framing."""

from __future__ import annotations

import json

from bindery.gateway import sse


def test_event_is_one_data_line_with_id() -> None:
    frame = sse.format_event({"phase": "building", "message": "line 1\nline 2\r\n"}, "abc:3")
    assert frame.endswith(b"\n\n")
    lines = frame.decode().split("\n")
    assert lines[0] == "id: abc:3"
    assert lines[1].startswith("data: ")
    assert lines[2:] == ["", ""]
    assert json.loads(lines[1][len("data: ") :]) == {
        "phase": "building",
        "message": "line 1\nline 2\r\n",
    }


def test_event_without_id() -> None:
    assert sse.format_event({"phase": "waiting"}) == b'data: {"phase":"waiting"}\n\n'


def test_keepalive_is_a_comment() -> None:
    assert sse.KEEPALIVE.startswith(b":")
    assert sse.KEEPALIVE.endswith(b"\n\n")


def test_last_event_id_round_trip() -> None:
    assert sse.parse_last_event_id(sse.event_id("0f" * 16, 12)) == ("0f" * 16, 12, "")
    resumable = sse.event_id("0f" * 16, 12, "ab" * 16)
    assert sse.parse_last_event_id(resumable) == ("0f" * 16, 12, "ab" * 16)
    for bad in (None, "", "12", "abc", "x:1", "ab:-1", "ab:1:2", "AB:1"):
        assert sse.parse_last_event_id(bad) is None
