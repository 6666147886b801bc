"""A podman node that dies with sessions on it (issue 14), on real podman: two private nodes of
the test's own (`podman system service` over their own root, run root and tmp dir, as
scripts/infra.sh starts node-2 and up), each running a session container of a tiny image made
here from the host's sh and sleep (nothing is pulled). Node b's service is killed: the runtime's
survey lists node a's sessions and names b as unreachable, `get` and `stop` still work on a; the
scheduler starts with b down, adopts b's session when b is back, keeps its seat while b is down
within the grace, ends it as lost after the grace (pod-stopped `node_lost`, once), and stops its
container when b is back again. Everything the test made (containers, storage, processes) is
removed, even on failure."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from bindery.events import Event, PodStopped, StopReason
from bindery.runtimes import Limits, PodmanRuntime, RuntimeError_, SessionSpec
from bindery.scheduler.launch import Scheduler
from bindery.scheduler.settings import SchedulerSettings
from tests.support.privatenode import PrivateNode
from tests.support.stack import SLOT

GiB = 1024**3
IMAGE = "localhost/bindery-node-lost:1"
GRACE = 60.0
LIMITS = Limits(memory_limit=64 * 2**20, memory_reservation=0, cpus=0.1, pids=16, disk=GiB)
# The session's command (Jupyter's) becomes arguments to `sh -c`, which ignores them.
ENTRYPOINT = '["/bin/sh", "-c", "exec /bin/sleep 100000", "sh"]'


def tiny_rootfs(into: Path) -> None:
    """The host's sh and sleep with the libraries they load: a 3 MB image."""
    files = {"/bin/sh", "/bin/sleep"}
    for program in ("/bin/sh", "/bin/sleep"):
        listed = subprocess.run(["ldd", program], capture_output=True, text=True, check=True)
        files |= {part for part in listed.stdout.split() if part.startswith("/")}
    for path in files:
        target = into / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(path), target)


@pytest.fixture
def private_nodes() -> Iterator[dict[str, PrivateNode]]:
    base = Path(tempfile.mkdtemp(prefix=f"bindery-nodes-{SLOT}-"))
    nodes = {name: PrivateNode(name, base / name) for name in ("a", "b")}
    try:
        tiny_rootfs(base / "rootfs")
        archive = base / "rootfs.tar"
        subprocess.run(["tar", "-C", str(base / "rootfs"), "-cf", str(archive), "."], check=True)
        for node in nodes.values():
            node.start()
            node.podman("import", "--change", f"ENTRYPOINT {ENTRYPOINT}", str(archive), IMAGE)
        yield nodes
    finally:
        for node in nodes.values():
            with contextlib.suppress(Exception):
                node.remove()
        shutil.rmtree(base, ignore_errors=True)


def spec(name: str) -> SessionSpec:
    return SessionSpec(
        name=name, image=IMAGE, launch_id=f"launch-{name}", token="t", repo="", limits=LIMITS
    )


def instance() -> str:
    return f"bindery-it-nodelost-{SLOT}-{uuid.uuid4().hex[:6]}"


async def test_the_runtime_lists_the_nodes_that_answer_and_names_the_dead_one(
    private_nodes: dict[str, PrivateNode],
) -> None:
    a, b = private_nodes["a"], private_nodes["b"]
    runtime = PodmanRuntime(instance(), {"a": a.url, "b": b.url})
    try:
        await runtime.start("a", spec("on-a"))
        await runtime.start("b", spec("on-b"))
        survey = await runtime.survey()
        assert {(s.name, s.node) for s in survey.sessions} == {("on-a", "a"), ("on-b", "b")}
        assert survey.unreachable == {}

        b.kill()
        survey = await runtime.survey()
        assert [(s.name, s.node, s.running) for s in survey.sessions] == [("on-a", "a", True)]
        assert set(survey.unreachable) == {"b"}
        assert survey.unreachable["b"].startswith("b does not answer")
        with pytest.raises(RuntimeError_, match="nodes not answering"):
            await runtime.list_sessions()  # it promises every session
        found = await runtime.get("on-a")
        assert found is not None and found.node == "a"
        assert await runtime.get("on-b") is None, "out of reach"
        assert await runtime.stop("on-a") is True
        assert (await runtime.survey()).sessions == []

        b.start()  # the same storage: its container ran on meanwhile
        survey = await runtime.survey()
        assert [(s.name, s.node, s.running) for s in survey.sessions] == [("on-b", "b", True)]
        assert survey.unreachable == {}
    finally:
        await runtime.close()


class Clock:
    def __init__(self) -> None:
        self.now = time.monotonic()

    def __call__(self) -> float:
        return self.now


async def test_the_scheduler_rides_out_a_dead_node_and_ends_its_sessions_after_the_grace(
    private_nodes: dict[str, PrivateNode],
) -> None:
    a, b = private_nodes["a"], private_nodes["b"]
    name = instance()
    settings = SchedulerSettings(
        instance=name,
        nodes=f"a={a.url},b={b.url}",
        session_secret="integration-secret-" + "x" * 16,
        node_lost_seconds=GRACE,
        startup_timeout=600,  # the tiny sessions never answer: adopted ones wait, not removed
    )
    runtime = PodmanRuntime(name, settings.node_urls())
    events: list[Event] = []

    async def publish(event: Event) -> None:
        events.append(event)

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
        scheduler = None
        try:
            await runtime.start("a", spec("on-a"))
            await runtime.start("b", spec("on-b"))
            b.kill()
            scheduler = await Scheduler.create(settings, runtime, publish, http)
            clock = scheduler.clock = Clock()
            await scheduler.reconcile()  # starts with b down
            assert set(scheduler.cluster.seats) == {"on-a"}
            assert set(scheduler.cluster.down_since) == {"b"}

            b.start()
            assert await scheduler.end_vanished() == []
            assert set(scheduler.cluster.seats) == {"on-a", "on-b"}, "b's session taken over"
            assert scheduler.cluster.capacity["b"] > 0, "b's memory learned once it answered"

            b.kill()
            assert await scheduler.end_vanished() == []
            clock.now += GRACE
            assert await scheduler.end_vanished() == []
            assert set(scheduler.cluster.seats) == {"on-a", "on-b"}, "within the grace"
            choice = scheduler.cluster.choose(IMAGE, GiB)
            assert choice is not None and choice.node == "a"

            clock.now += 1
            await scheduler.end_vanished()
            clock.now += GRACE
            await scheduler.end_vanished()
            stopped = [(e.session, e.reason) for e in events if isinstance(e, PodStopped)]
            assert stopped == [("on-b", StopReason.NODE_LOST)], "once"
            assert set(scheduler.cluster.seats) == {"on-a"}
            assert "on-b" in b.podman("ps", "--format", "{{.Labels}}"), "still on the dead node"

            b.start()
            await scheduler.end_vanished()
            assert b.podman("ps", "-aq") == "", "its container is stopped once b is back"
            assert set(scheduler.cluster.seats) == {"on-a"}
        finally:
            if scheduler is not None:
                for task in list(scheduler._tasks):  # adoptions waiting for a Jupyter
                    task.cancel()
            await runtime.close()
