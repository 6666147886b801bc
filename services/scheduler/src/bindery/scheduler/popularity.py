"""Which images are launched most: the warm pool and the pre-pulls follow them.

In: each launch's image (and repository, to name warm sessions readably, and BinderHub variables,
which its warm sessions are started with). Out: images ranked by
launches within a sliding window, the popular ones, how many warm sessions the pool's memory
budget allows and how many of them each image deserves.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass
class Popularity:
    window: float
    launches: dict[str, deque[float]] = field(default_factory=dict)
    repos: dict[str, str] = field(default_factory=dict)
    """image -> repository URL it was built from."""
    envs: dict[str, Mapping[str, str]] = field(default_factory=dict)
    """image -> BinderHub variables of its latest launch, which its warm sessions get."""

    def record(
        self, image: str, repo_url: str, env: Mapping[str, str], now: float | None = None
    ) -> None:
        self.launches.setdefault(image, deque()).append(time.monotonic() if now is None else now)
        self.repos[image] = repo_url
        self.envs[image] = env

    def counts(self, now: float | None = None) -> Counter[str]:
        horizon = (time.monotonic() if now is None else now) - self.window
        counts: Counter[str] = Counter()
        for image, times in list(self.launches.items()):
            while times and times[0] < horizon:
                times.popleft()
            if times:
                counts[image] = len(times)
            else:
                del self.launches[image]
        return counts

    def popular(self, threshold: int, now: float | None = None) -> list[str]:
        return [image for image, n in self.counts(now).most_common() if n >= threshold]


def warm_pool_sessions(capacity: int, share: float, session_memory: int) -> int:
    """How many warm sessions fit the pool's memory budget: each counted at `session_memory`
    (what an unclaimed one holds), together at most `share` of `capacity`."""
    return int(share * capacity) // session_memory


def warm_targets(counts: Counter[str], pool_size: int) -> Counter[str]:
    """Deal the pool's sessions to the most launched images, one each in turn, none more than
    its launches in the window: demand sizes the pool, `pool_size` bounds it.

    With one popular image it gets every slot its demand asks for; with more images than slots,
    the top ones get one. Ties rank by name so the plan does not flap between equally popular
    images.
    """
    ranked = sorted(counts, key=lambda image: (-counts[image], image))
    targets: Counter[str] = Counter()
    dealt = 0
    while dealt < pool_size:
        wanting = [image for image in ranked if targets[image] < counts[image]]
        if not wanting:
            break
        for image in wanting[: pool_size - dealt]:
            targets[image] += 1
            dealt += 1
    return targets
