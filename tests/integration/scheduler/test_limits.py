"""Limits on real sessions (issue 5): a kernel allocating 3 GiB is killed while its Jupyter
server lives on and runs a new kernel, and other sessions notice nothing; a fork bomb is held
to the pids limit while the node keeps serving other sessions; a session writing past its disk
limit is stopped with reason `disk` while one under it runs on."""

from __future__ import annotations

import asyncio

import aiohttp

from bindery.events import PodReady, PodStopped, StopReason
from tests.integration.scheduler.conftest import INSTANCE, Harness, MakeScheduler, podman
from tests.support.eventually import eventually
from tests.support.kernel import run_code, start_kernel

MiB = 1024**2


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
# The session's own pids cgroup, as the container sees it (cgroup v1, then v2). Its counter is
# exact; counting /proc while thousands of processes come and go is not.
pids = next(d for d in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup") if os.path.exists(d + "/pids.max"))
def read(name):
    with open(f"{pids}/{name}") as f:
        return f.read()
bomb = subprocess.Popen(["bash", "-c", ":(){ :|:& };:"], start_new_session=True)
peak = 0
for _ in range(40):  # the bomb's run time, ~8 s
    time.sleep(0.2)
    peak = max(peak, int(read("pids.current")))
for _ in range(200):  # the bomb's group keeps forking as it dies: kill until it is gone
    try:
        os.killpg(bomb.pid, signal.SIGKILL)
    except ProcessLookupError:
        break
    time.sleep(0.05)
bomb.wait()
refused = int(read("pids.events").split()[-1])
print("limit", read("pids.max").strip(), "peak", peak, "refused", refused)
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
    # The bomb's own complaints ("fork: retry: ...") share the output; the summary is last.
    _, seen_limit, _, peak, _, refused = outcome.output.splitlines()[-1].split()
    limit = h.scheduler.settings.pids_limit
    assert int(seen_limit) == limit, "the session runs under the configured pids limit"
    assert int(peak) > limit * 0.8, f"the bomb should fill its {limit} pids"
    assert int(refused) > 0, "forks past the limit were refused"
    after = await run_code(http, url, token, "print('calm')")
    assert after.output.strip() == "calm", "the bombed session itself recovers"
    await h.scheduler.launch(h.order("F3", session_image))
    assert len(h.of(PodReady)) == 3, "the node still starts sessions"


def write(ready: PodReady, mib: int) -> None:
    """Write `mib` MiB into the session's home, as the session's own user."""
    podman(
        ready.node,
        "exec",
        f"{INSTANCE}-{ready.session}",
        "dd",
        "if=/dev/zero",
        "of=/home/jovyan/written",
        "bs=1M",
        f"count={mib}",
    )


async def test_a_session_writing_past_its_disk_limit_is_stopped_and_says_why(
    make_scheduler: MakeScheduler, session_image: str, http: aiohttp.ClientSession
) -> None:
    h = await make_scheduler(disk_limit=50 * MiB, disk_check_interval=0.5)
    for launch in ("D1", "D2"):
        await h.scheduler.launch(h.order(launch, session_image))
    hog, calm = h.of(PodReady)
    async with h.loops("disk"):
        write(calm, 10)
        write(hog, 100)
        await eventually(lambda: h.of(PodStopped), within=60, every=0.1, what="the hog stopped")

    [stopped] = h.of(PodStopped)
    assert (stopped.launch_id, stopped.session, stopped.reason) == ("D1", hog.session, "disk")
    assert stopped.reason is StopReason.DISK
    assert [s.name for s in await h.runtime.list_sessions()] == [calm.session]
    assert hog.session not in h.scheduler.cluster.seats, "its seat is free again"
    # The session under the limit runs on, and another pass leaves it alone.
    assert await h.scheduler.check_disk() == []
    url, token = address(h, calm)
    ran = await run_code(http, url, token, "print(open('/home/jovyan/written','rb').read(3))")
    assert ran.output.strip() == "b'\\x00\\x00\\x00'"
    await h.scheduler.launch(h.order("D3", session_image))
    assert len(h.of(PodReady)) == 3, "the node still starts sessions"
