"""Scheduler integration: the real scheduler over two real podman nodes with separate image
stores, the real registry they pull from, and real Jupyter sessions. Events are collected in a
list instead of the broker (the bus has its own integration tests)."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import aiohttp
import pytest

from bindery.builder.pythons import DEFAULT_PYTHON
from bindery.events import Event
from bindery.runtimes import PodmanRuntime
from bindery.scheduler.launch import LaunchOrder, Scheduler
from bindery.scheduler.settings import SchedulerSettings
from tests.support.launches import launch_context
from tests.support.sandbox import push, sandbox_podman
from tests.support.schedulerloops import running_loops
from tests.support.stack import NODES, REPO, SLOT

INSTANCE = f"bindery-it-sched-{SLOT}"
IMAGE_REPOSITORY = f"127.0.0.1:5000/bindery-test-{SLOT}/scheduler-session"
E = TypeVar("E", bound=Event)


def podman(node: str, *args: str, check: bool = True) -> str:
    return subprocess.run(
        ["podman", "--url", NODES[node], *args], capture_output=True, text=True, check=check
    ).stdout


def remove_sessions() -> None:
    for node in NODES:
        ids = podman(node, "ps", "-aq", "--filter", f"label=bindery.instance={INSTANCE}").split()
        if ids:
            podman(node, "rm", "-f", "-t", "0", *ids, check=False)


@pytest.fixture(scope="session")
def two_nodes() -> list[str]:
    """Both node services up (idempotent), with isolation rules in place."""
    if len(NODES) < 2:
        pytest.fail("the scheduler tests need BINDERY_NODE_COUNT>=2 (make test sets it)")
    subprocess.run(
        [str(REPO / "scripts/infra.sh"), "up"],
        check=True,
        capture_output=True,
        env={**os.environ, "BINDERY_NODE_COUNT": str(len(NODES))},
    )
    return list(NODES)


@pytest.fixture(scope="session")
def session_image(two_nodes: list[str]) -> str:
    """A Jupyter image in the registry, held by node-1 (where builds land) and no other node."""
    base = subprocess.run(
        [str(REPO / "scripts/base-image.sh"), DEFAULT_PYTHON],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    image = f"{IMAGE_REPOSITORY}:{base.rpartition(':')[2]}"
    # The base image is in the build sandbox's store, where builds push from.
    subprocess.run(sandbox_podman("tag", base, image), check=True)
    push(image)
    return image


def drop_image(node: str, image: str) -> None:
    podman(node, "rmi", "-f", image, check=False)


@dataclass
class Harness:
    scheduler: Scheduler
    runtime: PodmanRuntime
    events: list[Event] = field(default_factory=list)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]

    def order(self, launch_id: str, image: str, repo: str = "file:///srv/demo") -> LaunchOrder:
        return LaunchOrder(launch_id, image, launch_context(repo_url=repo))

    def loops(self, *names: str) -> contextlib.AbstractAsyncContextManager[None]:
        """The scheduler's loops of these names, supervised as the service runs them, while
        the block runs."""
        return running_loops(self.scheduler, *names)


MakeScheduler = Callable[..., Awaitable[Harness]]


@pytest.fixture
async def make_scheduler(two_nodes: list[str]) -> AsyncIterator[MakeScheduler]:
    """A scheduler over the real nodes; every session it starts is removed afterwards."""
    made: list[tuple[PodmanRuntime, aiohttp.ClientSession]] = []
    remove_sessions()

    async def make(**overrides: Any) -> Harness:
        settings = SchedulerSettings(
            instance=INSTANCE,
            nodes=",".join(f"{name}={url}" for name, url in NODES.items()),
            session_secret="integration-secret-" + "x" * 16,
            **overrides,
        )
        runtime = PodmanRuntime(INSTANCE, settings.node_urls())
        http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))
        made.append((runtime, http))
        events: list[Event] = []

        async def publish(event: Event) -> None:
            events.append(event)

        scheduler = await Scheduler.create(settings, runtime, publish, http)
        return Harness(scheduler, runtime, events)

    yield make
    for runtime, http in made:
        await runtime.close()
        await http.close()
    remove_sessions()


@pytest.fixture(scope="session")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300)) as session:
        yield session


def container_ip(node: str, key: str) -> str:
    return podman(
        node, "inspect", "-f", "{{.NetworkSettings.IPAddress}}", f"{INSTANCE}-{key}"
    ).strip()
