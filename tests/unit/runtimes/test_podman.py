"""The podman runtime against a stand-in podman API on a unix socket. Disk: one listing per node
with sizes, only this instance's running sessions, and what each wrote; when a file vanishes
under podman's walk, each session measured on its own. Exits: this instance's died events, with
the exit status and the OOM killer's verdict, read again from the last one after a break."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from bindery.runtimes import Limits, PodmanRuntime, SessionSpec
from bindery.runtimes import podman as podman_runtime
from bindery.runtimes.base import Exit
from bindery.sessionnetwork import CA_PATH, SessionNetwork

MiB = 1024**2


def container(name: str, launch_id: str, size_rw: int | None, **labels: str) -> dict[str, Any]:
    """An entry of `GET /containers/json?size=true` as podman 4.3 answers it."""
    return {
        "Id": f"id-{name}",
        "Names": [f"/test-{name}"],
        "Labels": {
            "bindery.instance": "test",
            "bindery.session": name,
            "bindery.launch-id": launch_id,
            **labels,
        },
        "SizeRw": size_rw,
        "SizeRootFs": 555_867_543,
    }


VANISHED = {
    "cause": "no such file or directory",
    "message": "lstat /var/lib/containers/storage/overlay/abc/diff/srv/venv/lib/python3.11/"
    "site-packages/jinja2/__pycache__/parser.cpython-311.pyc.139822302562320: "
    "no such file or directory",
    "response": 500,
}


class FakePodman:
    def __init__(self) -> None:
        self.listed: list[dict[str, str]] = []
        self.containers: list[dict[str, Any]] = []
        self.racing: dict[str, int] = {}
        """Container id -> how many more sized requests fail as podman's walk races a rename."""
        self.inspected: list[str] = []
        self.removed: set[str] = set()
        """Container ids still listed but removed by the time they are inspected."""
        self.removed_before_stop: set[str] = set()
        """Container ids found, then removed by someone else before they are stopped."""
        self.event_streams: list[dict[str, str]] = []
        """The query of every events request, in order."""
        self.events: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        """Events to stream to the open events request; None ends that stream."""
        self.created: list[dict[str, Any]] = []
        """The body of every container create."""

    def _races(self, ids: list[str]) -> bool:
        racing = [i for i in ids if self.racing.get(i, 0) > 0]
        for i in racing:
            self.racing[i] -= 1
        return bool(racing)

    async def list_containers(self, request: web.Request) -> web.Response:
        self.listed.append(dict(request.query))
        if request.query.get("size") == "true" and self._races([c["Id"] for c in self.containers]):
            return web.json_response(VANISHED, status=500)
        return web.json_response(self.containers)

    async def inspect(self, request: web.Request) -> web.Response:
        ident = request.match_info["id"]
        self.inspected.append(ident)
        found = next((c for c in self.containers if c["Id"] == ident), None)
        if found is None or ident in self.removed:
            return web.json_response({"cause": "no such container", "response": 404}, status=404)
        if self._races([ident]):
            return web.json_response(VANISHED, status=500)
        labels = found["Labels"]
        state = found.get("State", {})
        return web.json_response(
            {"Id": ident, "Config": {"Labels": labels}, "State": state, **_sizes(found)}
        )

    async def create(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.created.append(body)
        self.containers.append(
            {"Id": request.query["name"], "Labels": body["Labels"], "SizeRw": 0, "SizeRootFs": 0}
        )
        return web.json_response({"Id": request.query["name"]}, status=201)

    async def start(self, request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def stop_or_remove(self, request: web.Request) -> web.Response:
        if request.match_info["id"] in self.removed_before_stop:  # as podman 4.3 answers
            return web.json_response(NO_SUCH_CONTAINER, status=500)
        return web.Response(status=204)

    async def stream_events(self, request: web.Request) -> web.StreamResponse:
        self.event_streams.append(dict(request.query))
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        while (event := await self.events.get()) is not None:
            await response.write(json.dumps(event).encode() + b"\n")
        return response


NO_SUCH_CONTAINER = {
    "cause": "no such container",
    "message": "container id-gone does not exist in database: no such container",
    "response": 500,
}


def died(name: str | None, code: int, at: int) -> dict[str, Any]:
    """A died event as podman 4.3's libpod events API streams it."""
    attributes = {"bindery.instance": "test", "containerExitCode": str(code), "name": "x"}
    if name is not None:
        attributes["bindery.session"] = name
    ident = f"id-{name}"
    return {
        "status": "died",
        "id": ident,
        "Type": "container",
        "Action": "died",
        "Actor": {"ID": ident, "Attributes": attributes},
        "time": at,
        "timeNano": at * 10**9,
    }


def _sizes(item: dict[str, Any]) -> dict[str, Any]:
    return {"SizeRw": item["SizeRw"], "SizeRootFs": item["SizeRootFs"]}


@pytest.fixture
async def podman(tmp_path: Path) -> AsyncIterator[tuple[FakePodman, PodmanRuntime]]:
    fake = FakePodman()
    app = web.Application()
    app.router.add_get("/v1.41/containers/json", fake.list_containers)
    app.router.add_get("/v1.41/containers/{id}/json", fake.inspect)
    app.router.add_post("/v1.41/containers/create", fake.create)
    app.router.add_post("/v1.41/containers/{id}/start", fake.start)
    app.router.add_post("/v1.41/containers/{id}/stop", fake.stop_or_remove)
    app.router.add_delete("/v1.41/containers/{id}", fake.stop_or_remove)
    app.router.add_get("/v4.0.0/libpod/events", fake.stream_events)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    socket = tmp_path / "node-1.sock"
    await web.UnixSite(runner, str(socket)).start()
    runtime = PodmanRuntime("test", {"node-1": f"unix://{socket}"})
    yield fake, runtime
    await runtime.close()
    fake.events.put_nowait(None)  # ends an events request still open, or the cleanup waits
    await runner.cleanup()


async def test_a_session_gets_the_ca_bundle_read_only_and_the_index_in_its_env(
    podman: tuple[FakePodman, PodmanRuntime], tmp_path: Path
) -> None:
    fake, runtime = podman
    bundle = tmp_path / "ca.crt"
    bundle.write_text("a bundle")
    network = SessionNetwork(ca_bundle=str(bundle), index_url="http://mirror.example:3141/simple")
    limits = Limits(memory_limit=2, memory_reservation=1, cpus=1.0, pids=64, disk=1)
    spec = SessionSpec("s1", "img", "launch-1", "t" * 8, "repo", limits, network=network)
    await runtime.start("node-1", spec)
    [body] = fake.created
    assert body["HostConfig"]["Binds"] == [f"{bundle}:{CA_PATH}:ro"]
    env = dict(item.split("=", 1) for item in body["Env"])
    assert env["JUPYTER_TOKEN"] == "t" * 8
    assert (env["MEM_LIMIT"], env["MEM_GUARANTEE"], env["CPU_LIMIT"]) == ("2", "1", "1")
    assert env["REQUESTS_CA_BUNDLE"] == env["NODE_EXTRA_CA_CERTS"] == CA_PATH
    assert env["PIP_INDEX_URL"] == "http://mirror.example:3141/simple"
    assert env["PIP_TRUSTED_HOST"] == env["UV_INSECURE_HOST"] == "mirror.example:3141"


async def test_a_session_is_published_on_loopback_or_where_the_node_url_says(
    podman: tuple[FakePodman, PodmanRuntime], tmp_path: Path
) -> None:
    fake, loopback_runtime = podman
    socket = tmp_path / "node-1.sock"
    # compose.yaml's node: a container of its own, reached by its name on the compose network.
    named = PodmanRuntime("test", {"node-1": f"unix://{socket}?publish=localhost"})
    limits = Limits(memory_limit=2, memory_reservation=1, cpus=1.0, pids=64, disk=1)
    try:
        await loopback_runtime.start("node-1", SessionSpec("s1", "img", "l1", "t" * 8, "r", limits))
        await named.start("node-1", SessionSpec("s2", "img", "l2", "t" * 8, "r", limits))
    finally:
        await named.close()
    bound = [body["HostConfig"]["PortBindings"]["8888/tcp"][0]["HostIp"] for body in fake.created]
    assert bound == ["127.0.0.1", "127.0.0.1"]  # the name resolved to the node's one address
    with pytest.raises(ValueError, match="unknown options"):
        PodmanRuntime("test", {"node-1": f"unix://{socket}?publsh=node"})


async def test_disk_usage_is_one_sized_listing_of_this_instances_running_sessions(
    podman: tuple[FakePodman, PodmanRuntime],
) -> None:
    fake, runtime = podman
    fake.containers = [
        container("heavy", "L1", 100 * MiB),
        container("light", "L2", 12),
        container("pool-1", "P1", None, **{"bindery.warm": "true"}),
    ]
    usages = await runtime.disk_usage("node-1")

    [query] = fake.listed
    assert (query["all"], query["size"]) == ("false", "true")
    assert json.loads(query["filters"]) == {"label": ["bindery.instance=test"]}
    assert [(u.name, u.launch_id, u.written, u.evicted) for u in usages] == [
        ("heavy", "L1", 100 * MiB, False),
        ("light", "L2", 12, False),
        ("pool-1", "P1", 0, False),
    ]


async def test_containers_without_a_session_label_are_not_sessions(
    podman: tuple[FakePodman, PodmanRuntime],
) -> None:
    fake, runtime = podman
    stray = container("x", "L", 5 * MiB)
    del stray["Labels"]["bindery.session"]
    fake.containers = [stray]
    assert await runtime.disk_usage("node-1") == []


async def test_a_file_vanishing_mid_walk_has_each_session_measured_on_its_own(
    podman: tuple[FakePodman, PodmanRuntime],
) -> None:
    fake, runtime = podman
    fake.containers = [
        container("heavy", "L1", 100 * MiB),
        container("busy", "L2", 70 * MiB),
        container("light", "L3", 12),
    ]
    # The listing fails once for "busy"; measured alone it races twice more, then answers.
    fake.racing = {"id-busy": 3}
    usages = await runtime.disk_usage("node-1")
    assert [(u.name, u.written) for u in usages] == [
        ("heavy", 100 * MiB),
        ("busy", 70 * MiB),
        ("light", 12),
    ]
    assert fake.listed[1] == {"all": "false", "filters": fake.listed[0]["filters"]}
    assert fake.inspected == ["id-heavy", "id-busy", "id-busy", "id-busy", "id-light"]


async def test_a_session_that_races_every_attempt_is_unmeasured_not_fatal(
    podman: tuple[FakePodman, PodmanRuntime],
) -> None:
    fake, runtime = podman
    fake.containers = [container("churner", "L1", 1 * MiB), container("heavy", "L2", 90 * MiB)]
    fake.racing = {"id-churner": 100}
    usages = await runtime.disk_usage("node-1")
    assert [(u.name, u.written) for u in usages] == [("churner", None), ("heavy", 90 * MiB)]


async def test_a_session_removed_while_measured_is_left_out(
    podman: tuple[FakePodman, PodmanRuntime],
) -> None:
    fake, runtime = podman
    fake.containers = [container("gone", "L1", 1 * MiB), container("heavy", "L2", 90 * MiB)]
    fake.racing, fake.removed = {"id-heavy": 1}, {"id-gone"}
    usages = await runtime.disk_usage("node-1")
    assert [(u.name, u.written) for u in usages] == [("heavy", 90 * MiB)]


async def test_stopping_a_session_removed_since_it_was_listed_is_done_not_an_error(
    podman: tuple[FakePodman, PodmanRuntime],
) -> None:
    # A restarted scheduler stops the dead sessions it finds; one its culler or another
    # replica removed meanwhile made podman answer 500 and the scheduler's start crash.
    fake, runtime = podman
    fake.containers, fake.removed_before_stop = [container("gone", "L1", 0)], {"id-gone"}
    assert await runtime.stop("gone") is True


async def test_exits_are_this_instances_died_events_read_again_from_the_last_after_a_break(
    podman: tuple[FakePodman, PodmanRuntime], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake, runtime = podman
    monkeypatch.setattr(podman_runtime, "EVENTS_RECONNECT_DELAY", 0.01)
    fake.containers = [
        {**container("hog", "L2", 0), "State": {"OOMKilled": True, "ExitCode": 137}},
    ]
    began = int(time.time())
    exits = runtime.exits()
    try:
        fake.events.put_nowait(died("shut", 0, began + 1))  # gone before it is inspected
        assert await asyncio.wait_for(anext(exits), 10) == Exit("shut", "node-1", 0)
        [first] = fake.event_streams
        assert first["stream"] == "true" and began - 1 <= int(first["since"]) <= began + 1
        assert json.loads(first["filters"]) == {
            "type": ["container"],
            "event": ["died"],
            "label": ["bindery.instance=test"],
        }
        fake.events.put_nowait(died(None, 1, began + 2))  # not a session: skipped
        fake.events.put_nowait(died("hog", 137, began + 3))
        assert await asyncio.wait_for(anext(exits), 10) == Exit(
            "hog", "node-1", 137, oom_killed=True
        )

        fake.events.put_nowait(None)  # the node's service restarts
        fake.events.put_nowait(died("late", 1, began + 4))
        assert await asyncio.wait_for(anext(exits), 10) == Exit("late", "node-1", 1)
        assert int(fake.event_streams[1]["since"]) == began + 3, "from the last event seen"
    finally:
        await exits.aclose()
