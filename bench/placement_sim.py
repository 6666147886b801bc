"""Placement at mybinder.org scale: the scheduler's own code over a simulated cluster.

In: a `Workload` (nodes, repositories, Zipf popularity, image sizes, pull bandwidths, session
lifetimes, node churn, a seed) and a placement policy: Bindery's `Cluster` as it is, or a
`Cluster` whose `choose` scores nodes like kube-scheduler's default profile. Out: one `Outcome`
per launch (did it pull, how long until ready, did it fail) and the bytes each node pulled.

What runs is the real `Scheduler` (admission and quotas, `Cluster.choose`, pulls deduplicated
per node, its `maintain`, `prepull` and `exits` loops as `app.loops` declares them, exits ending
seats), on an event loop whose clock is virtual and is the scheduler's clock too: a sleep
advances time instead of waiting, so hours of launches take seconds and every run with the same
seed is the same. The runtime is simulated: a pull takes size / the node's bandwidth, queued
behind that node's earlier pulls (one link per node; a pull cancelled, as a pre-pull is when a
launch needs the link, frees it at once); a start takes a fixed floor; a node that leaves loses
its sessions (reported as exits) and its images, and a fresh node with an empty image store
joins in its place.

The scheduler learns its nodes' memory once, at start (`Scheduler.create`); nothing in it
follows nodes joining or leaving. The simulation does what a node watch would do: it adds and
removes the node in `Cluster.capacity` (the scheduler still remembers which images the departed
node held: that is how it knows an image lost its holders).

Each launch that pulled is given why (`Outcome.why`), from the simulated nodes' truth at the
pull: `first_launch` (its repository was never launched before: no placement avoids that pull),
`churn` (every node that had pulled its image has left), `full` (nodes holding it exist, none
with a free seat), `in_flight` (launched before, but no pull of it had finished anywhere yet).
"""

from __future__ import annotations

import asyncio
import bisect
import heapq
import itertools
import random
import selectors
from collections.abc import AsyncGenerator, Callable, Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from bindery import service
from bindery.events import (
    Event,
    IdleDetected,
    ImagePulling,
    LaunchContext,
    LaunchFailed,
    PodReady,
    StopReason,
)
from bindery.runtimes import RuntimeError_, Session, SessionSpec
from bindery.runtimes.base import DiskUsage, Exit
from bindery.scheduler import app
from bindery.scheduler.cluster import Choice, Cluster
from bindery.scheduler.launch import LaunchOrder, Scheduler
from bindery.scheduler.settings import SchedulerSettings

GiB = 1024**3
MiB = 1024**2
GB = 1000**3


@dataclass(frozen=True)
class Workload:
    nodes: int = 100
    node_memory: int = 32 * GiB
    """32 one-GiB reservations a node (mybinder.org: 1 GiB guaranteed a session)."""
    repos: int = 10_000
    zipf: float = 1.1
    """Popularity of the repository ranked k is proportional to 1 / k**zipf."""
    launches: int = 60_000
    arrival_rate: float = 1.8
    """Launches a second (Poisson); with the lifetimes below (mean 25 min), about 83 % of the
    seats busy."""
    session_median: float = 15 * 60.0
    session_sigma: float = 1.0
    """Session lifetimes are lognormal (median 15 min), cut at the 12 h maximum age."""
    image_median: float = 2.0 * GB
    image_sigma: float = 0.5
    image_min: float = 1.0 * GB
    image_max: float = 5.0 * GB
    bandwidth_min: float = 50e6
    bandwidth_max: float = 150e6
    """Bytes a second each node pulls at, drawn once per node."""
    start_floor: float = 1.4
    """A container start until Jupyter answers (podman run 0.15 s + Jupyter 1.25 s here)."""
    node_lifetime: float = 6 * 3600.0
    """Mean time a node lives before it leaves (exponential); a fresh one joins after
    `node_rejoin`."""
    node_rejoin: float = 60.0
    warmup: float = 0.2
    """Share of the first launches left out of the statistics: the cluster starts cold."""
    seed: int = 1


@dataclass
class Outcome:
    arrival: float
    image: str
    session: str = ""
    pulled: bool = False
    why: str = ""
    """Why it pulled (see the module's docstring); empty if it did not."""
    ready: float | None = None
    failed: str = ""


# --- a clock that jumps: the loop's selector advances time instead of waiting ----------------


class _JumpingSelector(selectors.DefaultSelector):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if not ready and timeout is not None and timeout > 0:
            self.now += timeout
        return ready


class VirtualLoop(asyncio.SelectorEventLoop):
    """An event loop whose time is virtual: nothing waits, timers fire in order."""

    def __init__(self) -> None:
        self._jumping = _JumpingSelector()
        super().__init__(self._jumping)

    def time(self) -> float:
        return self._jumping.now


# --- the simulated runtime -------------------------------------------------------------------


@dataclass
class SimNode:
    name: str
    bandwidth: float
    images: set[str] = field(default_factory=set)
    link_free_at: float = 0.0
    """When the last pull queued on the node's link ends."""
    alive: bool = True


@dataclass
class SimRuntime:
    """The scheduler's `Runtime`, over simulated nodes (see the module's docstring)."""

    sizes: dict[str, float]
    memory: int
    start_floor: float
    nodes: dict[str, SimNode] = field(default_factory=dict)
    sessions: dict[str, Session] = field(default_factory=dict)
    exited: asyncio.Queue[Exit] = field(default_factory=asyncio.Queue)
    completed: dict[tuple[str, str], float] = field(default_factory=dict)
    """Bytes of each finished pull, by (node, image): node names are never reused."""
    landed: set[str] = field(default_factory=set)
    """Images some pull finished on (on nodes since gone too)."""

    def node_names(self) -> list[str]:
        return list(self.nodes)

    async def node_memory(self, node: str) -> int:
        return self.memory

    async def list_sessions(self) -> list[Session]:
        return list(self.sessions.values())

    async def list_warm(self) -> list[Session]:
        return []

    async def get(self, key: str, skip: Collection[str] = ()) -> Session | None:
        return self.sessions.get(key)

    def _node(self, name: str) -> SimNode:
        node = self.nodes.get(name)
        if node is None:
            raise RuntimeError_(f"node {name} is gone")
        return node

    async def has_image(self, node: str, image: str) -> bool:
        return image in self._node(node).images

    async def pull(self, node: str, image: str) -> None:
        sim = self._node(node)
        if image in sim.images:
            return
        loop = asyncio.get_running_loop()
        start = max(loop.time(), sim.link_free_at)
        end = sim.link_free_at = start + self.sizes[image] / sim.bandwidth
        try:
            await asyncio.sleep(end - loop.time())
        except asyncio.CancelledError:
            if sim.link_free_at == end:  # last in line: the link is free from its start on
                sim.link_free_at = max(start, loop.time())
            raise
        if not sim.alive:
            raise RuntimeError_(f"node {node} left during the pull")
        sim.images.add(image)
        self.completed[(node, image)] = self.sizes[image]
        self.landed.add(image)

    async def start(self, node: str, spec: SessionSpec) -> Session:
        sim = self._node(node)
        if spec.image not in sim.images:
            raise RuntimeError_(f"{spec.image} is not on {node}")
        await asyncio.sleep(self.start_floor)
        if not sim.alive:
            raise RuntimeError_(f"node {node} left during the start")
        session = Session(
            name=spec.name,
            node=node,
            launch_id=spec.launch_id,
            image=spec.image,
            repo=spec.repo,
            started=datetime.fromtimestamp(0, UTC),
            target="sim://" + node,
            running=True,
            memory_reservation=spec.limits.memory_reservation,
        )
        self.sessions[spec.name] = session
        return session

    async def claim(self, warm: Session, key: str) -> Session:
        raise RuntimeError_("the simulation runs without a warm pool")

    async def stop(self, name: str, skip: Collection[str] = ()) -> bool:
        return self.sessions.pop(name, None) is not None

    async def exits(self) -> AsyncGenerator[Exit, None]:
        while True:
            yield await self.exited.get()

    async def disk_usage(self, node: str) -> list[DiskUsage]:
        return []

    async def close(self) -> None:
        pass

    def leave(self, name: str) -> None:
        """The node goes, with its image store; its sessions' servers are gone with it."""
        sim = self.nodes.pop(name)
        sim.alive = False
        for session in [s for s in self.sessions.values() if s.node == name]:
            del self.sessions[session.name]
            self.exited.put_nowait(Exit(session.name, name, None))


class _Answer:
    status = 200

    async def __aenter__(self) -> _Answer:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        return None


class ReadyHttp:
    """Every session's Jupyter answers at once: the start floor already holds its start-up."""

    def get(self, url: str, **_: Any) -> _Answer:
        return _Answer()


# --- the baseline: kube-scheduler's default scoring ------------------------------------------

MAX_NODE_SCORE = 100
IMAGE_MIN = 23 * MiB
IMAGE_MAX = 1000 * MiB
"""ImageLocality's bounds (pkg/scheduler/framework/plugins/imagelocality)."""


@dataclass
class KubeDefaultCluster(Cluster):
    """`Cluster` choosing as kube-scheduler's default profile does for a pod requesting only
    memory: NodeResourcesFit (LeastAllocated: free share after placing, 0-100) plus
    ImageLocality (image size x share of nodes holding it, clamped to 23-1000 MiB, 0-100),
    equal weights; ties broken at random (seeded), as kube-scheduler does."""

    sizes: dict[str, float] = field(default_factory=dict)
    rng: random.Random = field(default_factory=lambda: random.Random(0))

    def choose(self, image: str, reservation: int) -> Choice | None:
        fitting = [node for node in self.capacity if self.free(node) >= reservation]
        if not fitting:
            return None
        holders = self.holding(image) & set(self.capacity)
        spread = len(holders) / len(self.capacity)
        scaled = min(max(self.sizes[image] * spread, IMAGE_MIN), IMAGE_MAX)
        locality = MAX_NODE_SCORE * (scaled - IMAGE_MIN) / (IMAGE_MAX - IMAGE_MIN)

        def score(node: str) -> float:
            fit = (self.free(node) - reservation) * MAX_NODE_SCORE / self.capacity[node]
            return fit + (locality if node in holders else 0.0)

        scores = {node: score(node) for node in fitting}
        top = max(scores.values())
        best = self.rng.choice(sorted(node for node, s in scores.items() if s == top))
        return Choice(best, best in holders)


# --- the run -----------------------------------------------------------------------------------

Policy = Callable[[dict[str, int], dict[str, float]], Cluster]


def bindery_policy(capacity: dict[str, int], sizes: dict[str, float]) -> Cluster:
    return Cluster(capacity)


def kube_default_policy(capacity: dict[str, int], sizes: dict[str, float]) -> Cluster:
    return KubeDefaultCluster(capacity, sizes=sizes)


@dataclass
class Result:
    outcomes: list[Outcome]
    pulled_bytes: float
    launch_pulled_bytes: float
    nodes_replaced: int


def _launch_id(n: int) -> str:
    """Unique in the 10 characters session names keep of it."""
    return f"{n:010d}-sim"


def _images(work: Workload, rng: random.Random) -> dict[str, float]:
    sizes = {}
    for rank in range(work.repos):
        size = rng.lognormvariate(0, work.image_sigma) * work.image_median
        sizes[f"registry/r2d-repo{rank:05d}:c0"] = min(max(size, work.image_min), work.image_max)
    return sizes


def _zipf_picker(work: Workload, rng: random.Random) -> Callable[[], int]:
    cumulative = list(itertools.accumulate(1 / (k + 1) ** work.zipf for k in range(work.repos)))
    return lambda: bisect.bisect(cumulative, rng.random() * cumulative[-1])


async def _simulate(
    work: Workload, policy: Policy, settings: SchedulerSettings, prepull: bool
) -> Result:
    rng = random.Random(work.seed)
    sizes = _images(work, rng)
    images = list(sizes)
    pick = _zipf_picker(work, rng)
    runtime = SimRuntime(sizes, work.node_memory, work.start_floor)
    serial = itertools.count()

    def join() -> str:
        name = f"node-{next(serial):04d}"
        runtime.nodes[name] = SimNode(name, rng.uniform(work.bandwidth_min, work.bandwidth_max))
        return name

    for _ in range(work.nodes):
        join()
    outcomes: dict[str, Outcome] = {}
    launch_pulls: list[tuple[str, str]] = []
    launched: set[str] = set()
    firsts: set[str] = set()
    """Launches whose repository was launched never before."""

    def why_pull(launch_id: str, image: str) -> str:
        if launch_id in firsts:
            return "first_launch"
        if any(image in node.images for node in runtime.nodes.values()):
            return "full"
        return "churn" if image in runtime.landed else "in_flight"

    async def publish(event: Event) -> None:
        outcome = outcomes[event.launch_id]
        if isinstance(event, ImagePulling):
            outcome.pulled = True
            outcome.why = why_pull(event.launch_id, event.image)
            launch_pulls.append((event.node, event.image))
        elif isinstance(event, PodReady):
            outcome.session = event.session
            outcome.ready = loop.time() - outcome.arrival
        elif isinstance(event, LaunchFailed):
            outcome.failed = event.reason.value

    loop = asyncio.get_running_loop()
    cluster = policy({name: work.node_memory for name in runtime.nodes}, sizes)
    scheduler = Scheduler(
        settings,
        runtime,  # type: ignore[arg-type]
        publish,
        ReadyHttp(),  # type: ignore[arg-type]
        cluster,
        clock=loop.time,
    )

    async def repeat(every: service.Loop) -> None:
        """As the service runner repeats a loop's step (without its supervision: an error in
        the simulation ends it)."""
        wait = 0 if every.at_start else every.interval
        while True:
            await asyncio.sleep(wait)
            wait = every.interval
            await every.step()

    names = {"maintain", "exits"} | ({"prepull"} if prepull else set())
    loops = [
        asyncio.create_task(repeat(every)) for every in app.loops(scheduler) if every.name in names
    ]
    # Every future happening, drawn up front from one generator so both policies see the same:
    # (time, order, kind, what).
    timeline: list[tuple[float, int, str, Any]] = []
    now = 0.0
    for n in range(work.launches):
        now += rng.expovariate(work.arrival_rate)
        lifetime = min(rng.lognormvariate(0, work.session_sigma) * work.session_median, 12 * 3600)
        timeline.append((now, n, "launch", (images[pick()], lifetime)))
    horizon = now
    churn = 0.0
    while True:
        churn += rng.expovariate(work.nodes / work.node_lifetime)
        if churn > horizon:
            break
        timeline.append((churn, work.launches + len(timeline), "leave", rng.random()))
    heapq.heapify(timeline)

    replaced = 0
    tasks: set[asyncio.Task[None]] = set()
    decided: list[str] = []
    """Launches ready or failed: once all are, the run is over (sessions still running and
    pulls still on their way change no launch's outcome)."""
    all_decided = asyncio.Event()

    async def launch(n: int, image: str, lifetime: float) -> None:
        launch_id = _launch_id(n)
        outcome = outcomes[launch_id] = Outcome(loop.time(), image)
        if image not in launched:
            launched.add(image)
            firsts.add(launch_id)
        repo = "https://github.com/sim/" + image.split("/")[1].split(":")[0]
        context = LaunchContext(
            provider="gh",
            spec=repo.removeprefix("https://github.com/") + "/main",
            repo_url=repo,
            ref="main",
            resolved_ref="c0",
            repo_key=repo.rsplit("/", 1)[1],
            requested_at=datetime.now(UTC),
        )
        order = LaunchOrder(launch_id, image, context)
        await scheduler.launch(order)
        decided.append(launch_id)
        if len(decided) == work.launches:
            all_decided.set()
        if outcome.ready is None:
            return
        await asyncio.sleep(lifetime)
        if outcome.session in runtime.sessions:  # else its node left with it
            stop = IdleDetected(
                launch_id=launch_id, session=outcome.session, reason=StopReason.IDLE
            )
            await scheduler.stop(stop)

    async def replace_node(which: float) -> None:
        nonlocal replaced
        gone = sorted(runtime.nodes)[int(which * len(runtime.nodes))]
        runtime.leave(gone)
        del cluster.capacity[gone]
        replaced += 1
        await asyncio.sleep(work.node_rejoin)
        cluster.capacity[join()] = work.node_memory

    while timeline:
        at, n, kind, what = heapq.heappop(timeline)
        await asyncio.sleep(at - loop.time())
        coro = launch(n, *what) if kind == "launch" else replace_node(what)
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await all_decided.wait()
    for task in loops:
        # Python 3.11's wait_for can swallow a cancel that lands as its timeout fires, which a
        # jumping clock makes likely: cancel until the loop is really gone.
        while not task.done():
            task.cancel()
            await asyncio.wait([task], timeout=1)
    # Sessions, and pre-pulls still on their way when the last launch was decided.
    leftovers = asyncio.all_tasks() - {asyncio.current_task()}
    for task in leftovers:
        task.cancel()
    await asyncio.gather(*leftovers, return_exceptions=True)
    # A pull a launch waited for counts as the launch's, even if a pre-pull had started it.
    launch_bytes = sum(runtime.completed.get(pull, 0.0) for pull in set(launch_pulls))
    ordered = [outcomes[_launch_id(n)] for n in range(work.launches)]
    return Result(ordered, sum(runtime.completed.values()), launch_bytes, replaced)


def simulate(
    work: Workload, policy: Policy, settings: SchedulerSettings, prepull: bool = True
) -> Result:
    """Run `work` through the scheduler with `policy`'s cluster view, on a virtual clock; with
    the scheduler's pre-pull loop or without it (kube-scheduler has none)."""
    loop = VirtualLoop()
    try:
        return loop.run_until_complete(_simulate(work, policy, settings, prepull))
    finally:
        loop.close()


def scheduler_settings(work: Workload) -> SchedulerSettings:
    """The scheduler's defaults, sized to the simulated cluster. The per-repository quota is
    the whole cluster: with Zipf popularity the top repository holds a few hundred sessions at
    once (mybinder.org raises such repositories' quotas), and launches queued at a quota would
    measure the quota, not placement. No warm pool: placement, not pre-started sessions, is
    what is measured."""
    seats = work.nodes * (work.node_memory // GiB)
    return SchedulerSettings(
        session_secret="simulation-secret-0123456789",
        node_memory=work.node_memory,
        total_quota=seats,
        repo_quota=seats,
        warm_pool_share=0,
    )
