"""The scheduler's view of the nodes: what each holds, what is reserved on it, which seats exist.

In: node capacities (from the runtime or settings), sessions adopted at start, launches placed,
sessions stopped, images seen on nodes, which nodes answered the runtime's last survey. Out:
placement choices (never on a node that did not answer), nodes down for longer than a grace.
Pure and synchronous, so a decision and the reservation it makes can never be split by another
launch's await.

A seat is one session's claim on a node: a running session, a launch starting, or a warm session
waiting in the pool. Quotas count seats that belong to a repository; capacity counts them all.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from bindery.runtimes import Session


@dataclass
class Seat:
    name: str
    node: str
    image: str
    reservation: int
    repo_key: str = ""
    pool: bool = False
    """Held for the warm pool: counts for capacity, not for quotas, until a launch claims it."""
    warm: Session | None = None
    """The pool's session once it answers; only then can a launch claim it."""
    launch_id: str = ""
    """The launch it serves (a warm seat nobody claimed: its pool id), for its pod-stopped."""


@dataclass(frozen=True)
class Choice:
    node: str
    holds_image: bool


@dataclass
class Cluster:
    capacity: dict[str, int]
    """Bytes of memory reservations each node accepts."""

    seats: dict[str, Seat] = field(default_factory=dict)
    holders: dict[str, set[str]] = field(default_factory=dict)
    """image -> nodes known to hold it (learned from the runtime, pulls and starts)."""
    _reserved: Counter[str] = field(default_factory=Counter, repr=False)
    down_since: dict[str, float] = field(default_factory=dict)
    """Nodes down (unreachable in a survey, or their ping failed) -> since when (a monotonic
    clock's time): no new seat goes there."""
    _sessions: Counter[str] = field(default_factory=Counter, repr=False)
    """Per node, kept by `occupy` and `release`: every choice asks each node for them, and a
    sum over all seats each time costs O(nodes x seats) per launch (0.1 s at 100 nodes with
    64 sessions each)."""
    _repo_seats: Counter[str] = field(default_factory=Counter, repr=False)
    """Launched seats per repository, kept the same way: admission asks for every launch in
    the queue each time a seat frees."""
    _pool: dict[str, Seat] = field(default_factory=dict, repr=False)
    """The warm pool's seats by name."""

    def reserved(self, node: str) -> int:
        return self._reserved[node]

    def free(self, node: str) -> int:
        return self.capacity[node] - self.reserved(node)

    def sessions_on(self, node: str) -> int:
        return self._sessions[node]

    def observe(
        self, unreachable: Iterable[str], now: float, unanswered: Iterable[str] = ()
    ) -> tuple[list[str], list[str]]:
        """Record which nodes could not be reached by a survey begun at `now` (down), and which
        did not answer it in time (busy or hung: no change, their pings decide); return the
        nodes gone down and those come back since. A node marked down after the survey began
        (`mark_down`) is not back by its answer, which may predate its fall."""
        unreachable, unknown = set(unreachable), set(unanswered)
        down = sorted(unreachable - set(self.down_since))
        back = sorted(
            node
            for node, since in self.down_since.items()
            if node not in unreachable | unknown and since <= now
        )
        for node in down:
            self.down_since[node] = now
        for node in back:
            del self.down_since[node]
        return down, back

    def mark_down(self, node: str, now: float) -> bool:
        """`node` could not be reached, or failed its ping, at `now`: no new seat goes there
        until a survey begun later finds it answering. True if it was up until now."""
        if node in self.down_since:
            return False
        self.down_since[node] = now
        return True

    def lost(self, now: float, grace: float) -> list[str]:
        """Nodes that have not answered for longer than `grace` seconds."""
        return sorted(node for node, since in self.down_since.items() if now - since > grace)

    def learn_image(self, node: str, image: str, present: bool = True) -> None:
        nodes = self.holders.setdefault(image, set())
        if present:
            nodes.add(node)
        else:
            nodes.discard(node)

    def holding(self, image: str) -> set[str]:
        return set(self.holders.get(image, ()))

    def choose(self, image: str, reservation: int) -> Choice | None:
        """A node with room, preferring those holding the image; ties go to the emptiest node.

        Most free memory first spreads sessions (and their pressure) over the nodes; equal free
        memory falls back to fewer sessions, then the name, so the choice is reproducible.
        """
        fitting = [
            node
            for node in self.capacity
            if node not in self.down_since and self.free(node) >= reservation
        ]
        if not fitting:
            return None
        holders = self.holding(image)
        candidates = [node for node in fitting if node in holders] or fitting
        best = min(candidates, key=lambda n: (-self.free(n), self.sessions_on(n), n))
        return Choice(best, best in holders)

    def occupy(self, seat: Seat) -> None:
        self.release(seat.name)
        self.seats[seat.name] = seat
        self._reserved[seat.node] += seat.reservation
        self._sessions[seat.node] += 1
        if seat.pool:
            self._pool[seat.name] = seat
        else:
            self._repo_seats[seat.repo_key] += 1

    def release(self, name: str) -> Seat | None:
        seat = self.seats.pop(name, None)
        if seat is not None:
            self._reserved[seat.node] -= seat.reservation
            self._sessions[seat.node] -= 1
            if seat.pool:
                del self._pool[seat.name]
            else:
                self._repo_seats[seat.repo_key] -= 1
                if not self._repo_seats[seat.repo_key]:
                    del self._repo_seats[seat.repo_key]
        return seat

    def repo_sessions(self, repo_key: str) -> int:
        return self._repo_seats[repo_key]

    def launched_sessions(self) -> int:
        return len(self.seats) - len(self._pool)

    def pool_seats(self) -> list[Seat]:
        return list(self._pool.values())

    def pool_by_image(self) -> Counter[str]:
        """Warm sessions per image, counting those still starting."""
        return Counter(seat.image for seat in self.pool_seats())

    def take_warm(self, image: str, env: Mapping[str, str]) -> Seat | None:
        """A ready warm seat for `image` started with the BinderHub variables `env`, on the node
        with the most free memory (not one on a node that does not answer: it cannot be claimed)."""
        seats = [
            seat
            for seat in self.pool_seats()
            if seat.image == image
            and seat.warm
            and seat.warm.env == env
            and seat.node not in self.down_since
        ]
        return max(seats, key=lambda s: (self.free(s.node), s.name), default=None)

    def evictable_warm(self, reservation: int, keep: str) -> Seat | None:
        """A ready warm seat of another image whose removal makes room for `reservation`."""
        for seat in sorted(self.pool_seats(), key=lambda s: s.name):
            if (
                seat.warm is not None
                and seat.node not in self.down_since
                and seat.image != keep
                and self.free(seat.node) + seat.reservation >= reservation
            ):
                return seat
        return None
