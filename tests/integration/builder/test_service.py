"""The builder service as a process on the real broker: ref-resolved in, build events out."""

import asyncio
import os
import socket
import subprocess
import sys
import threading
import urllib.request
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from bindery.builder.pythons import Pythons
from bindery.bus import Bus, Handlers, topology
from bindery.events import (
    BuildLog,
    BuildStarted,
    Event,
    FailureReason,
    ImageBuilt,
    LaunchFailed,
    RefResolved,
)
from tests.integration.builder.test_build import manifest_status
from tests.support import launches
from tests.support.eventually import eventually
from tests.support.fakeproviders import FakeProviders
from tests.support.gitrepo import make_repo, notebook
from tests.support.sandbox import podman_run

REPO = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def providers() -> Iterator[FakeProviders]:
    """A Zenodo for the builder service, on a loop of its own (the service lives across tests)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = FakeProviders()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
    yield server
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)


@pytest.fixture(scope="module")
async def builder_service(
    amqp_url: str, registry: str, pythons: Pythons, providers: FakeProviders
) -> AsyncIterator[None]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BINDERY_")}
    env.update(
        BINDERY_AMQP_URL=amqp_url,
        BINDERY_PROFILE="local",
        BINDERY_HEALTH_PORT=str(port),
        BINDERY_REGISTRY=registry,
        BINDERY_LOG_FORMAT="json",
        BINDERY_ZENODO_URL=providers.url("/zenodo"),
        # The storage is shared with every other test run: test_prune.py prunes its own images.
        BINDERY_PRUNE_INTERVAL="0",
    )
    proc = await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-m", "bindery.builder"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )

    def healthy() -> bool:
        assert proc.poll() is None, proc.stdout.read().decode() if proc.stdout else ""
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
            return True

    await eventually(
        lambda: asyncio.to_thread(healthy),
        within=60,
        every=0.2,
        what="the builder healthy",
        ignoring=(OSError,),
    )
    yield
    proc.terminate()
    assert await asyncio.to_thread(proc.wait, 30) == 0


@pytest.fixture
async def launch_events(bus: Bus, builder_service: None) -> AsyncIterator["asyncio.Queue[Event]"]:
    """Every domain event and build log, as a gateway sees them."""
    received: asyncio.Queue[Event] = asyncio.Queue()
    await bus.consume(topology.GATEWAY_EVENTS, Handlers().on(Event, received.put))
    await bus.consume(topology.GATEWAY_LOGS, Handlers().on(BuildLog, received.put))
    yield received


async def events_until_done(received: "asyncio.Queue[Event]", launch_id: str) -> list[Event]:
    events: list[Event] = []
    while True:
        event = await asyncio.wait_for(received.get(), 120)
        if event.launch_id != launch_id:
            continue
        events.append(event)
        if isinstance(event, (ImageBuilt, LaunchFailed)):
            return events


def ref_resolved(repo: Path, sha: str, image: str) -> RefResolved:
    return launches.ref_resolved(
        uuid.uuid4().hex,
        image=image,
        spec=f"{repo}/main",
        repo_url=str(repo),  # a local Bindery's resolver passes paths as they are
        ref="main",
        resolved_ref=sha,
    )


async def test_a_missing_image_is_built_pushed_and_announced(
    tmp_path: Path,
    bus: Bus,
    launch_events: "asyncio.Queue[Event]",
    image_name: str,
) -> None:
    repo = tmp_path / "repo"
    # A requirements file of its own: a new environment, built here, not found from before.
    requirements = f"pyfiglet\n# {uuid.uuid4().hex}\n"
    sha = make_repo(repo, {"requirements.txt": requirements, "a.ipynb": notebook("1")})
    event = ref_resolved(repo, sha, image_name)
    await bus.publish(event)

    events = await events_until_done(launch_events, event.launch_id)

    assert isinstance(events[0], RefResolved)
    assert isinstance(events[1], BuildStarted)
    built = events[-1]
    assert isinstance(built, ImageBuilt), events[-1]
    assert (built.image, built.context) == (image_name, event.context), "its launch's context"
    logs = [e for e in events if isinstance(e, BuildLog)]
    assert any("uv pip install" in e.message for e in logs)
    assert {"building", "pushing"} <= {e.phase for e in logs}
    assert manifest_status(image_name) == 200


async def test_a_failing_build_fails_the_launch_with_a_reason(
    tmp_path: Path,
    bus: Bus,
    launch_events: "asyncio.Queue[Event]",
    image_name: str,
) -> None:
    repo = tmp_path / "repo"
    sha = make_repo(repo, {"postBuild": "#!/bin/sh\necho about to fail\nexit 3\n"})
    event = ref_resolved(repo, sha, image_name)
    await bus.publish(event)

    events = await events_until_done(launch_events, event.launch_id)

    failed = events[-1]
    assert isinstance(failed, LaunchFailed)
    assert (failed.reason, failed.service) == (FailureReason.STEP_FAILED, "builder")
    assert "about to fail" in failed.message


async def test_a_zenodo_record_is_fetched_and_built(
    bus: Bus,
    launch_events: "asyncio.Queue[Event]",
    image_name: str,
    providers: FakeProviders,
) -> None:
    providers.zenodo_records["5151"] = 5151
    providers.zenodo_files["5151"] = {"requirements.txt": b"pyfiglet\n", "data.csv": b"a,b\n"}
    # As the resolver emits it for the DOI 10.5281/zenodo.5151 (LaunchContext's docstring).
    event = launches.ref_resolved(
        uuid.uuid4().hex,
        image=image_name,
        provider="zenodo",
        spec="10.5281/zenodo.5151",
        repo_url=providers.url("/zenodo/records/5151"),
        ref="",
        resolved_ref="5151",
    )
    await bus.publish(event)

    events = await events_until_done(launch_events, event.launch_id)

    built = events[-1]
    assert isinstance(built, ImageBuilt), events[-1]
    fetched = [e.message for e in events if isinstance(e, BuildLog) and e.phase == "fetching"]
    assert any("data.csv" in m for m in fetched), fetched
    assert manifest_status(image_name) == 200
    assert podman_run(image_name, "cat", "data.csv") == "a,b\n"
