"""Whether every stage of a launch has a live consumer: a resolver, a builder and a scheduler
each consuming its queue. A launch whose next stage has none waits in that queue until one comes
back, which `/health` reports (degraded, naming the stage) and a new launch's page says.

In: a way to ask the broker how many consumers each queue has (`Bus.consumer_counts`). Out:
`Stages` (stage -> consumers), at most `max_age` seconds old: `/health` is polled often (every
few seconds by each load balancer and probe) and every launch asks too, so one answer serves
them all, and callers arriving while it is asked for share that one request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import structlog

from bindery.bus import topology

log = structlog.get_logger("bindery.gateway.stages")

#: The stages a launch goes through, by the queue each one's service consumes.
STAGE_QUEUES: dict[str, str] = {
    stage: name
    for stage, spec in (
        ("resolver", topology.RESOLVER),
        ("builder", topology.BUILDER),
        ("scheduler", topology.SCHEDULER),
    )
    if (name := spec.name) is not None  # shared queues are named
}

ConsumerCounts = Callable[[Iterable[str]], Awaitable[dict[str, int]]]


@dataclass(frozen=True)
class Stages:
    consumers: dict[str, int]
    """Stage -> live consumers of its queue."""

    @property
    def stalled(self) -> list[str]:
        """The stages nobody consumes: launches reaching them wait."""
        return [stage for stage, count in self.consumers.items() if count == 0]


def waiting_message(stalled: list[str]) -> str:
    """What a person starting a launch is told while `stalled` have no consumer."""
    names = " and ".join(stalled)
    verb = "is" if len(stalled) == 1 else "are"
    return (
        f"Bindery's {names} {verb} not running right now. Your launch "
        "keeps its place in the queue and goes on as soon as it is back (crashed services are "
        "restarted by themselves); if nothing changes for minutes, tell the operators.\n"
    )


class StageCheck:
    """The broker's consumer counts of the stages' queues, cached for `max_age` seconds."""

    def __init__(self, counts: ConsumerCounts, max_age: float) -> None:
        self._counts = counts
        self._max_age = max_age
        self._answer: Stages | None = None
        self._asked_at = -float("inf")
        self._asking: asyncio.Task[Stages | None] | None = None

    async def __call__(self) -> Stages | None:
        """The stages' consumers; None when the broker cannot say (it is down: /health says
        so already)."""
        if time.monotonic() - self._asked_at < self._max_age:
            return self._answer
        if self._asking is None:
            self._asking = asyncio.create_task(self._ask())
        asking = self._asking
        # Shielded: a caller that goes away (a closed /health request) must not cancel the
        # answer the others wait for.
        return await asyncio.shield(asking)

    async def _ask(self) -> Stages | None:
        try:
            counts = await self._counts(STAGE_QUEUES.values())
        except Exception as exc:
            log.warning("stages.check_failed", error=str(exc))
            answer = None
        else:
            answer = Stages({stage: counts[queue] for stage, queue in STAGE_QUEUES.items()})
        self._answer, self._asked_at, self._asking = answer, time.monotonic(), None
        return answer
