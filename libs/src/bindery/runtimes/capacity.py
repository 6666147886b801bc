"""How many sessions the deployment runs at once, from its nodes' memory.

In: a runtime and `CapacitySettings`. Out: the memory each node accepts for reservations (what
the scheduler places within) and the number of sessions that fits in all, at most the total
quota. The scheduler admits by the first; the gateway sizes per-client limits by the second.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import aiohttp
import structlog

from bindery.runtimes.base import Runtime, RuntimeError_
from bindery.settings import CapacitySettings

log = structlog.get_logger("bindery.runtimes")


async def node_memories(
    runtime: Runtime, node_memory: int, nodes: Iterable[str] | None = None
) -> dict[str, int]:
    """Bytes of reservations each node (all, or `nodes`) accepts: `node_memory` if set, else
    what it reports, all nodes asked at once (a hung one costs its lookup's bound, once)."""

    async def memory(node: str) -> int:
        try:
            return node_memory or await runtime.node_memory(node)
        except (RuntimeError_, aiohttp.ClientError, OSError) as exc:
            # A node that is down or late gets no sessions until it is asked again (the
            # scheduler does as soon as it answers its ping).
            log.error("node.unreachable", node=node, error=str(exc))
            return 0

    names = list(runtime.node_names() if nodes is None else nodes)
    return dict(zip(names, await asyncio.gather(*map(memory, names)), strict=True))


def sessions_fitting(memories: dict[str, int], settings: CapacitySettings) -> int:
    """Sessions the scheduler admits at once: whole reservations per node, within the quota."""
    fitting = sum(memory // settings.memory_reservation for memory in memories.values())
    return min(settings.total_quota, fitting)
