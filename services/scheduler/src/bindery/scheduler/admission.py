"""Quotas and the waiting queue: which launch may take a seat now, and where the others stand.

In: launches asking for a seat (session name, repository key, image, BinderHub variables, and
the repository's own quota when it has one), seats released, launches withdrawn. Out: an
admitted launch's seat (a warm session of its image and variables, or a node chosen by the
cluster view), or its position in the queue, re-reported whenever it changes, until a
configurable wait runs out or it is withdrawn.

Launches wait in arrival order. Each pump walks the queue front to back and admits every launch
that fits, so a repository at its quota never holds up launches of other repositories, and a
launch blocked by the total quota or by capacity keeps its place ahead of later ones.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from bindery.events import QueueLimit
from bindery.runtimes import Session
from bindery.scheduler.cluster import Cluster, Seat


@dataclass(frozen=True)
class Admitted:
    seat: Seat
    holds_image: bool
    warm: Session | None = None
    """The warm session to claim, when the pool had one for the image."""


@dataclass
class Waiter:
    name: str
    repo_key: str
    image: str
    repo_quota: int
    """Concurrent sessions its repository may have (the launch's own, or the default)."""
    launch_id: str = ""
    env: Mapping[str, str] = field(default_factory=dict)
    """Its session's BinderHub variables: only a warm session started with the same will do."""
    admitted: Admitted | None = None
    withdrawn: bool = False
    position: int = 0
    limit: QueueLimit | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)


class QueueTimeout(Exception):
    def __init__(self, limit: QueueLimit | None, repo_quota: int) -> None:
        super().__init__(limit)
        self.limit = limit
        self.repo_quota = repo_quota
        """The repository's quota that held the launch, when `limit` is `REPOSITORY`."""


class Withdrawn(Exception):
    """The launch left the queue before it got a seat (`Admission.cancel`)."""


Notify = Callable[[int, QueueLimit], Awaitable[None]]


@dataclass
class Admission:
    cluster: Cluster
    repo_quota: int
    """For launches whose repository has no quota of its own."""
    total_quota: int
    reservation: int
    evict: Callable[[Seat], None]
    """Called with a warm seat given up to make room; the caller stops its session."""

    waiters: list[Waiter] = field(default_factory=list)

    def enqueue(
        self,
        name: str,
        repo_key: str,
        image: str,
        *,
        launch_id: str = "",
        repo_quota: int | None = None,
        env: Mapping[str, str] | None = None,
    ) -> Waiter:
        quota = self.repo_quota if repo_quota is None else repo_quota
        waiter = Waiter(name, repo_key, image, quota, launch_id, dict(env or {}))
        self.waiters.append(waiter)
        self.pump()
        return waiter

    def withdraw(self, waiter: Waiter) -> None:
        if waiter in self.waiters:
            self.waiters.remove(waiter)
            self.pump()

    def cancel(self, name: str) -> None:
        """Take the launch `name` out of the queue if it still waits: its `wait` raises
        `Withdrawn`. An admitted launch keeps its seat; its caller gives it back."""
        for waiter in self.waiters:
            if waiter.name == name:
                waiter.withdrawn = True
                waiter.changed.set()
                self.withdraw(waiter)
                return

    def release(self, name: str) -> Seat | None:
        seat = self.cluster.release(name)
        if seat is not None:
            self.pump()
        return seat

    def pump(self) -> None:
        """Admit every waiter that fits, front to back; re-rank the rest."""
        ranks: Counter[tuple[QueueLimit, str]] = Counter()
        for waiter in list(self.waiters):
            limit = self._try_admit(waiter)
            if limit is None:
                self.waiters.remove(waiter)
                waiter.changed.set()
                continue
            key = (limit, waiter.repo_key if limit == QueueLimit.REPOSITORY else "")
            ranks[key] += 1
            if (waiter.position, waiter.limit) != (ranks[key], limit):
                waiter.position, waiter.limit = ranks[key], limit
                waiter.changed.set()

    def _try_admit(self, waiter: Waiter) -> QueueLimit | None:
        """Admit `waiter` and return None, or return the limit that holds it back."""
        cluster = self.cluster
        if cluster.repo_sessions(waiter.repo_key) >= waiter.repo_quota:
            return QueueLimit.REPOSITORY
        if cluster.launched_sessions() >= self.total_quota:
            return QueueLimit.TOTAL
        warm = cluster.take_warm(waiter.image, waiter.env)
        if warm is not None and warm.warm is not None:
            seat = Seat(
                warm.name,
                warm.node,
                warm.image,
                warm.reservation,
                waiter.repo_key,
                launch_id=waiter.launch_id,
            )
            cluster.occupy(seat)
            waiter.admitted = Admitted(seat, holds_image=True, warm=warm.warm)
            return None
        choice = cluster.choose(waiter.image, self.reservation)
        if choice is None:
            victim = cluster.evictable_warm(self.reservation, keep=waiter.image)
            if victim is not None:
                cluster.release(victim.name)
                self.evict(victim)
                choice = cluster.choose(waiter.image, self.reservation)
        if choice is None:
            return QueueLimit.TOTAL
        seat = Seat(
            waiter.name,
            choice.node,
            waiter.image,
            self.reservation,
            waiter.repo_key,
            launch_id=waiter.launch_id,
        )
        cluster.occupy(seat)
        waiter.admitted = Admitted(seat, holds_image=choice.holds_image)
        return None

    async def wait(self, waiter: Waiter, patience: float, notify: Notify) -> Admitted:
        """Wait for `waiter`'s seat, calling `notify(position, limit)` on every change."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + patience
        reported: tuple[int, QueueLimit | None] = (0, None)
        try:
            while True:
                waiter.changed.clear()
                if waiter.admitted is not None:
                    return waiter.admitted
                if waiter.withdrawn:
                    raise Withdrawn
                if waiter.limit is not None and (waiter.position, waiter.limit) != reported:
                    reported = (waiter.position, waiter.limit)
                    await notify(waiter.position, waiter.limit)
                    continue
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise QueueTimeout(waiter.limit, waiter.repo_quota)
                try:
                    await asyncio.wait_for(waiter.changed.wait(), remaining)
                except TimeoutError:
                    continue
        finally:
            if waiter.admitted is None:
                self.withdraw(waiter)
