"""Limits on real sessions (issue 5): a kernel allocating 3 GiB is killed while its Jupyter
server lives on and runs a new kernel, and other sessions notice nothing; a fork bomb is held
to the pids limit while the node keeps serving other sessions."""

from __future__ import annotations

import asyncio

import aiohttp

from bindery.events import PodReady
from tests.integration.scheduler.conftest import Harness, MakeScheduler
from tests.support.kernel import run_code, start_kernel


def address(h: Harness, ready: PodReady) -> tuple[str, str]:
    return f"{ready.target}/user/{ready.session}/", h.scheduler.token(ready.session)


async def test_a_kernel_over_the_memory_limit_dies_and_the_server_lives_on(
    make_scheduler: MakeScheduler, session_image: str, http: aiohttp.ClientSession
) -> None:
    h = await make_scheduler()
    for launch in ("M1", "M2"):
        await h.scheduler.launch(h.order(launch, session_image))
    (url, token), (other_url, other_token) = (address(h, r) for r in h.of(PodReady))
    other_kernel = await start_kernel(http, other_url, other_token)
    await run_code(http, other_url, other_token, "kept = 'still here'", other_kernel)

    hog = await run_code(http, url, token, "x = b'\\x01' * (3 * 1024**3)\nprint('survived')")
    assert hog.ended in {"restarting", "dead"}, hog
    assert "survived" not in hog.output

    headers = {"Authorization": f"token {token}"}
    async with http.get(f"{url}api/status", headers=headers) as resp:
        assert resp.status == 200, "the Jupyter server outlives its kernel"
    fresh = await run_code(http, url, token, "print(6 * 7)")
    assert (fresh.ended, fresh.output.strip()) == ("idle", "42")
    other = await run_code(http, other_url, other_token, "print(kept)", other_kernel)
    assert other.output.strip() == "still here", "the other session's kernel kept its state"


FORK_BOMB = r"""
import os, signal, subprocess, time
bomb = subprocess.Popen(["bash", "-c", ":(){ :|:& };:"], start_new_session=True)
peak = 0
for _ in range(40):  # the bomb's run time, ~8 s
    time.sleep(0.2)
    peak = max(peak, sum(1 for p in os.listdir("/proc") if p.isdigit()))
for _ in range(200):  # the bomb's group keeps forking as it dies: kill until it is gone
    try:
        os.killpg(bomb.pid, signal.SIGKILL)
    except ProcessLookupError:
        break
    time.sleep(0.05)
bomb.wait()
print("peak", peak)
"""


async def test_a_fork_bomb_hits_the_pids_limit_and_the_node_keeps_serving(
    make_scheduler: MakeScheduler, session_image: str, http: aiohttp.ClientSession
) -> None:
    h = await make_scheduler()
    for launch in ("F1", "F2"):
        await h.scheduler.launch(h.order(launch, session_image))
    (url, token), (other_url, other_token) = (address(h, r) for r in h.of(PodReady))

    bomb = asyncio.create_task(run_code(http, url, token, FORK_BOMB))
    # While the bomb runs (about 8 s), the other session on the node answers and computes.
    during = await run_code(http, other_url, other_token, "print(sum(range(10)))")
    assert during.output.strip() == "45" and not bomb.done()
    outcome = await bomb
    assert outcome.ended == "idle", outcome
    peak = int(outcome.output.split()[-1])
    limit = h.scheduler.settings.pids_limit
    assert limit * 0.8 < peak <= limit, f"the bomb should fill, and stop at, {limit} pids"
    after = await run_code(http, url, token, "print('calm')")
    assert after.output.strip() == "calm", "the bombed session itself recovers"
    await h.scheduler.launch(h.order("F3", session_image))
    assert len(h.of(PodReady)) == 3, "the node still starts sessions"
