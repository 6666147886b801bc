"""Which images are launched most, and which were launched lately: the warm pool and the
pre-pulls follow them.

In: each launch's image (and repository, to name warm sessions readably, and BinderHub variables,
which its warm sessions are started with), at a time on the scheduler's clock. Out: launches of
each image within a sliding window, the popular ones, the images launched within a longer keep
window, how many warm sessions the pool's memory budget allows and how many of them each image
deserves.

Counts are kept as launches arrive and leave the windows (a heap of launch times per window),
so a question costs what expired since the last one, not a walk over every image: the
scheduler asks after every launch, and a busy Binder has thousands of images in its window.
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType


@dataclass
class Popularity:
    window: float
    """Launches counted within this many seconds."""
    keep: float = 0.0
    """Images launched within this many seconds are `kept` (pre-pulls keep them on a node)."""
    clock: Callable[[], float] = time.monotonic
    """The scheduler's clock: launch times and windows are on it."""
    repos: dict[str, str] = field(default_factory=dict)
    """image -> repository URL it was built from."""
    envs: dict[str, Mapping[str, str]] = field(default_factory=dict)
    """image -> BinderHub variables of its latest launch, which its warm sessions get."""
    _counts: Counter[str] = field(default_factory=Counter)
    _in_window: list[tuple[float, int, str]] = field(default_factory=list)
    """Heap of (launch time, order, image) still counted in `_counts`."""
    _last: dict[str, float] = field(default_factory=dict)
    """image -> its latest launch, for images launched within `keep`."""
    _in_keep: list[tuple[float, int, str]] = field(default_factory=list)
    _order: itertools.count[int] = field(default_factory=itertools.count)

    def record(
        self, image: str, repo_url: str, env: Mapping[str, str], now: float | None = None
    ) -> None:
        """A launch of `image` at `now` (default: the clock's now; replayed launches come with
        their own time, older ones possibly after newer ones)."""
        at = self.clock() if now is None else now
        order = next(self._order)
        heapq.heappush(self._in_window, (at, order, image))
        self._counts[image] += 1
        if at > self._last.get(image, float("-inf")):
            self._last[image] = at
        heapq.heappush(self._in_keep, (at, order, image))
        self.repos[image] = repo_url
        self.envs[image] = env

    def _expire(self, now: float) -> None:
        horizon = now - self.window
        while self._in_window and self._in_window[0][0] < horizon:
            _, _, image = heapq.heappop(self._in_window)
            self._counts[image] -= 1
            if not self._counts[image]:
                del self._counts[image]
                self._forget_if_gone(image)
        horizon = now - self.keep
        while self._in_keep and self._in_keep[0][0] < horizon:
            at, _, image = heapq.heappop(self._in_keep)
            if self._last.get(image) == at:  # its latest launch leaves: the image does
                del self._last[image]
                self._forget_if_gone(image)

    def _forget_if_gone(self, image: str) -> None:
        """An image out of both windows no longer needs its repository or variables."""
        if image not in self._counts and image not in self._last:
            self.repos.pop(image, None)
            self.envs.pop(image, None)

    def counts(self, now: float | None = None) -> Mapping[str, int]:
        """Launches of each image within the window (a live view: read it, do not keep it)."""
        self._expire(self.clock() if now is None else now)
        return MappingProxyType(self._counts)

    def popular(self, threshold: int, now: float | None = None) -> list[str]:
        """Images launched at least `threshold` times within the window, most launched first."""
        counts = self.counts(now)
        popular = [image for image, n in counts.items() if n >= threshold]
        return sorted(popular, key=lambda image: (-counts[image], image))

    def kept(self, now: float | None = None) -> list[str]:
        """Images launched within `keep`."""
        self._expire(self.clock() if now is None else now)
        return list(self._last)


def warm_pool_sessions(capacity: int, share: float, session_memory: int) -> int:
    """How many warm sessions fit the pool's memory budget: each counted at `session_memory`
    (what an unclaimed one holds), together at most `share` of `capacity`."""
    return int(share * capacity) // session_memory


def warm_targets(counts: Mapping[str, int], pool_size: int) -> Counter[str]:
    """Deal the pool's sessions to the most launched images, one each in turn, none more than
    its launches in the window: demand sizes the pool, `pool_size` bounds it.

    With one popular image it gets every slot its demand asks for; with more images than slots,
    the top ones get one. Ties rank by name so the plan does not flap between equally popular
    images.
    """
    targets: Counter[str] = Counter()
    if pool_size <= 0:
        return targets
    ranked = sorted(counts, key=lambda image: (-counts[image], image))
    dealt = 0
    while dealt < pool_size:
        wanting = [image for image in ranked if targets[image] < counts[image]]
        if not wanting:
            break
        for image in wanting[: pool_size - dealt]:
            targets[image] += 1
            dealt += 1
    return targets
