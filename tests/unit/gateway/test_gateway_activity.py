"""What the gateway counts as a person using their session (activity.py), how it tells the
browser's data frames from its control frames without parsing more than frame headers, and how
it tells the culler."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from bindery.events import SessionActivity
from bindery.gateway.activity import flush_activity, is_person_request
from bindery.gateway.routes import RouteTable
from bindery.gateway.splice import FrameEdges
from tests.unit.gateway.test_gateway_proxy_connections import frame

# Every test here runs through both lanes of the gateway (conftest.py).
BOTH_LANES = True

# What JupyterLab 4 and common extensions request on their own while a tab is open.
POLLING = [
    "api/kernels",
    "api/sessions",
    "api/terminals",
    "api/kernelspecs",
    "api/contents?content=1&hash=0",
    "api/contents/data/sub?content=1",
    "api/me",
    "api/status",
    "api/metrics/v1",
    "lab/api/settings",
    "lab/api/translations/en",
    "lab/api/workspaces/default",
    "voila/api/shutdown/k1",
]
# What a person's actions load or change.
PAGES = ["", "lab", "lab/tree/index.ipynb", "tree", "notebooks/a.ipynb", "files/plot.png"]
PAGES += ["voila/render/app.ipynb", "static/lab/main.js", "nbconvert/html/a.ipynb", "edit/x.py"]


@pytest.mark.parametrize("path", POLLING)
def test_background_polling_is_not_activity(path: str) -> None:
    assert not is_person_request("GET", path.partition("?")[0])
    assert not is_person_request("HEAD", path.partition("?")[0])


@pytest.mark.parametrize("path", PAGES)
def test_page_loads_are_activity(path: str) -> None:
    assert is_person_request("GET", path)


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE"])
@pytest.mark.parametrize("path", ["api/kernels/k1/restart", "api/contents/a.ipynb"])
def test_every_write_is_activity(method: str, path: str) -> None:
    assert is_person_request(method, path)


def test_cors_preflights_are_not_activity() -> None:
    assert not is_person_request("OPTIONS", "api/contents/a.ipynb")


def test_a_folder_named_api_in_a_page_path_is_still_a_page() -> None:
    assert is_person_request("GET", "lab/tree/api/notes.ipynb")


@pytest.mark.parametrize(
    ("opcode", "data"),
    [(0x0, True), (0x1, True), (0x2, True), (0x8, False), (0x9, False), (0xA, False)],
)
def test_frame_edges_tell_data_frames_from_control_frames(opcode: int, data: bool) -> None:
    assert FrameEdges().feed(frame(opcode, b"payload", mask=True)) is data


def test_a_data_frame_is_seen_once_whatever_the_chunks() -> None:
    """Pongs and pings around one text frame of 70 000 bytes, cut at random: the chunk that
    completes the text frame's header, and only that one, says a data frame began."""
    frames = [frame(0xA, b"", True), frame(0x9, b"p", True), frame(0x1, b"a" * 70_000, True)]
    frames.append(frame(0xA, b"pong", True))
    stream = b"".join(frames)
    header_at = len(frames[0]) + len(frames[1])
    for seed in range(20):
        cut = random.Random(seed)
        edges = FrameEdges()
        pos, seen = 0, []
        while pos < len(stream):
            step = cut.choice((1, 2, 3, 5, 11, 4096))
            if edges.feed(stream[pos : pos + step]):
                seen.append((pos, pos + step))
            pos += step
        header_end = header_at + 2 + 8 + 4  # opcode and length, 64-bit length, mask
        assert len(seen) == 1 and seen[0][0] < header_end <= seen[0][1], (seed, seen)


async def test_activity_is_flushed_once_per_active_session() -> None:
    routes = RouteTable()
    routes.add("s1", "http://127.0.0.1:1", "a" * 32)
    routes.add("s2", "http://127.0.0.1:2", "b" * 32)
    sent: list[SessionActivity] = []

    async def publish(event: SessionActivity) -> None:
        sent.append(event)

    route = routes.get("s1")
    assert route is not None
    route.touch()
    route.touch()
    assert await flush_activity(routes, publish) == 1
    assert [(e.session, e.launch_id) for e in sent] == [("s1", "a" * 32)]
    assert sent[0].last_activity == datetime.fromtimestamp(route.last_activity, UTC)
    assert await flush_activity(routes, publish) == 0  # nothing new

    async def broken(event: SessionActivity) -> None:
        raise ConnectionError("down")

    route.touch()
    assert await flush_activity(routes, broken) == 0
    assert await flush_activity(routes, publish) == 1  # kept for the next round
