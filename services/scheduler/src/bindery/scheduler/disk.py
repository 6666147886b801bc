"""Disk limits: which sessions wrote more than they may.

In: what the runtime saw on each node (`DiskUsage`: bytes in each session's writable layer, or
an eviction for disk by the kubelet) and `BINDERY_DISK_LIMIT`. Out: the sessions to stop with
reason `disk`. Pure, so the decision is tested without a runtime.

Podman on this host cannot cap a container's writable layer (overlay over ext4 has no project
quotas), so the limit holds after the fact: the scheduler measures every
`BINDERY_DISK_CHECK_INTERVAL` and stops what is over. On Kubernetes the kubelet enforces the
pod's `ephemeral-storage` limit itself; the scheduler only removes what it evicted.
"""

from __future__ import annotations

from collections.abc import Iterable

from bindery.runtimes.base import DiskUsage


def over_limit(usages: Iterable[DiskUsage], limit: int) -> list[DiskUsage]:
    """The sessions that wrote more than `limit` bytes, or were evicted for their disk, heaviest
    first; each once, even if two nodes answered for it. Unmeasured ones are not over (yet)."""
    over: dict[str, tuple[int, DiskUsage]] = {}
    for usage in usages:
        written = usage.written or 0
        if usage.evicted or written > limit:
            known = over.get(usage.name)
            if known is None or written > known[0]:
                over[usage.name] = (written, usage)
    ranked = sorted(over.values(), key=lambda pair: (-pair[0], pair[1].name))
    return [usage for _, usage in ranked]
