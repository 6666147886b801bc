"""Each node's start line: how many sessions a node starts at once, and who goes next.

In: starts asking for a turn on a node (a launch's, with the time it was requested, or a warm
session's), turns given back. Out: the turn, once fewer than `concurrency` starts run on that
node; meanwhile, to a launch, its place in the line, re-reported whenever it changes.

Starting Jupyter is CPU-bound: twenty at once on a two-core node all finish together, as late
as the last one would have alone. A line lets the first ones finish early and the last one no
later. Launches go before warm-pool starts, and among themselves in the order they were
requested (not the order they reached the scheduler: concurrent resolutions finish in any
order), then in arrival order.

A turn is given back however its holder ends (done, failed, cancelled, abandoned): `Turn` is a
context manager whose exit leaves the line or frees the slot. Its holder bounds the start
itself (the runtime's request timeout, `startup_timeout`), so a hung start frees its slot too.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from types import TracebackType

NotifyPosition = Callable[[int], Awaitable[None]]


class Priority(IntEnum):
    """Lower goes first."""

    LAUNCH = 0
    """Someone waits for it."""
    WARM = 1
    """A warm-pool session: nobody waits for it yet."""


@dataclass(eq=False)
class Turn:
    """One start's place in its node's line; use it as a context manager, wait in it."""

    line: StartLine
    node: str
    key: tuple[int, float, int]
    """(priority, requested, arrival): the line's sort order."""
    granted: bool = False
    left: bool = False
    position: int = 0
    """Among the launches waiting on this node, 1 is next; 0 while not waiting."""
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait(self, notify: NotifyPosition | None = None) -> None:
        """Until this turn is granted, calling `notify(position)` whenever the position changes.
        Safe to cancel: the context manager's exit cleans up either way."""
        reported = 0
        while True:
            self.changed.clear()
            if self.granted:
                return
            if notify is not None and self.position != reported:
                reported = self.position
                await notify(reported)
                continue
            await self.changed.wait()

    def __enter__(self) -> Turn:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.line.leave(self)


@dataclass
class StartLine:
    concurrency: int
    """Starts each node runs at once."""
    running: defaultdict[str, int] = field(default_factory=lambda: defaultdict(int))
    waiting: defaultdict[str, list[Turn]] = field(default_factory=lambda: defaultdict(list))
    """Per node, in the order they go."""
    _arrivals: itertools.count[int] = field(default_factory=itertools.count)

    def join(self, node: str, priority: Priority, requested_at: datetime | None = None) -> Turn:
        """A place in `node`'s line, granted at once when the node has a free slot and nobody
        waits ahead. A start without a request time counts as requested now."""
        requested = requested_at.timestamp() if requested_at is not None else time.time()
        turn = Turn(self, node, (priority, requested, next(self._arrivals)))
        bisect.insort(self.waiting[node], turn, key=lambda t: t.key)
        self._advance(node)
        return turn

    def leave(self, turn: Turn) -> None:
        """Give the turn back: its slot, if it was granted, else its place in the line."""
        if turn.left:
            return
        turn.left = True
        if turn.granted:
            self.running[turn.node] -= 1
        else:
            self.waiting[turn.node].remove(turn)
        self._advance(turn.node)

    def _advance(self, node: str) -> None:
        """Grant free slots front to back; renumber the launches still waiting."""
        line = self.waiting[node]
        while line and self.running[node] < self.concurrency:
            turn = line.pop(0)
            turn.granted, turn.position = True, 0
            self.running[node] += 1
            turn.changed.set()
        launches = (turn for turn in line if turn.key[0] == Priority.LAUNCH)
        for position, turn in enumerate(launches, start=1):
            if turn.position != position:
                turn.position = position
                turn.changed.set()
        if not line:
            del self.waiting[node]
        if not self.running[node]:
            del self.running[node]
