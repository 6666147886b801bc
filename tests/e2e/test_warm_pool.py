"""The warm pool through the whole started stack (issue 16): a scheduler that starts with a
pool share reads the recent launches back from the event log and starts a session of the
launched image at once; the next launch of it is served by that session, and the pool refills
behind it. The test stack runs without a pool otherwise (BINDERY_WARM_POOL_SHARE=0)."""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bindery.runtimes import Session
from bindery.runtimes.podman import PodmanRuntime
from bindery.scheduler.settings import SchedulerSettings
from bindery.tokens import session_token
from tests.e2e.test_scheduler import session_of, stop_session
from tests.support.eventually import eventually
from tests.support.gitrepo import make_repo
from tests.support.stack import INSTANCE, NODES, Stack, build_path, launch


@pytest.fixture(scope="module")
def popular_repo(repos: Path) -> str:
    path = repos / "popular"
    make_repo(path, {"README.md": "warm pool e2e\n", "requirements.txt": "six==1.16.0\n"})
    return f"file://{path}"


@pytest.fixture
async def runtime() -> AsyncIterator[PodmanRuntime]:
    """The stack's sessions as the runtime lists them; warm ones left are stopped afterwards."""
    runtime = PodmanRuntime(INSTANCE, NODES)
    yield runtime
    for session in await runtime.list_warm():
        await runtime.stop(session.name)
    await runtime.close()


async def answering_warm(
    http: aiohttp.ClientSession, stack: Stack, runtime: PodmanRuntime
) -> list[Session]:
    """Warm sessions whose Jupyter answers (with the token the scheduler derives): claimable."""
    secret = stack.env["BINDERY_SESSION_SECRET"]
    answering = []
    for session in await runtime.list_warm():
        token = session_token(secret, session.name)
        url = f"{session.target}/user/{session.name}/api/status"
        try:
            async with http.get(url, headers={"Authorization": f"token {token}"}) as resp:
                if resp.status == 200:
                    answering.append(session)
        except aiohttp.ClientError:
            pass
    return answering


async def test_a_restarted_scheduler_warms_what_was_launched_and_the_next_launch_takes_it(
    stack: Stack, http: aiohttp.ClientSession, popular_repo: str, runtime: PodmanRuntime
) -> None:
    began = time.monotonic()
    path = build_path(popular_repo, "main")
    for _ in range(2):  # built, then launched again: among the last minutes' most launched
        ready = (await launch(http, stack.gateway, path))[-1]
        assert ready["phase"] == "ready", ready
        await stop_session(stack, ready)
    image = ready["image"]
    assert await runtime.list_warm() == [], "the test stack has no pool"

    async def warm_of_image() -> list[Session]:
        return [s for s in await answering_warm(http, stack, runtime) if s.image == image]

    # The restarted scheduler knows the launches only from the event log. A window reaching back
    # just to this test's first launch keeps out the images the suite's other modules launched
    # before (a whole suite launches more of other images in three minutes than these two).
    # Sessions they left running are adopted but are not demand. The share is the default one.
    window = math.ceil(time.monotonic() - began) + 10
    share = str(SchedulerSettings.model_fields["warm_pool_share"].default)
    with stack.settings(
        "scheduler", BINDERY_WARM_POOL_SHARE=share, BINDERY_POPULARITY_WINDOW=str(window)
    ):
        warm = await eventually(warm_of_image, within=120, what="a warm session answering")
        ready = (await launch(http, stack.gateway, path))[-1]
        assert ready["phase"] == "ready", ready
        assert session_of(ready) in {s.name for s in warm}, "served by a warm session"

        async def refilled() -> list[Session]:
            return [s for s in await warm_of_image() if s.name != session_of(ready)]

        await eventually(refilled, within=120, what="the pool refilled")
        await stop_session(stack, ready)
