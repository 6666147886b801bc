"""A cgroup per build: its memory and process limits, and what it ran into.

In: a build id and its limits (bytes of memory, number of processes).
Out: a cgroup the build process joins before it starts (everything it starts stays in it:
rootless podman makes no cgroups of its own), the count of OOM kills and of refused forks once it
ended, and no trace of it afterwards.

Why the builder does this itself: rootless podman ignores `--memory` and `--pids-limit` on
cgroup v1 hosts, and a build step is a stranger's code (a fork bomb, a leak). The groups live
under ``bindery-builds/`` of the memory and pids hierarchies (cgroup v1, as on this project's
machines) or of the unified hierarchy (cgroup v2).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from dataclasses import dataclass
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
PARENT = "bindery-builds"
# A build's group is ``<its replica's prefix><this>``.
NAME_SUFFIX = "[0-9a-f]{12}"


def _unified() -> bool:
    return "memory" in _read(CGROUP_ROOT / "cgroup.controllers").split()


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _counter(path: Path, key: str) -> int:
    """``key``'s value in a flat-keyed file (memory.events, memory.oom_control, pids.events)."""
    for line in _read(path).splitlines():
        name, _, value = line.partition(" ")
        if name == key and value.strip().isdigit():
            return int(value)
    return 0


@dataclass
class BuildCgroup:
    name: str
    memory_limit: int = 0
    """Bytes, swap included; 0 for none."""
    pids_limit: int = 0
    """Processes and threads; 0 for none."""

    @property
    def directories(self) -> list[Path]:
        if _unified():
            return [CGROUP_ROOT / PARENT / self.name]
        return [CGROUP_ROOT / c / PARENT / self.name for c in ("memory", "pids")]

    def create(self) -> None:
        if _unified():
            # Controllers are handed down level by level; the parent holds no process itself.
            with contextlib.suppress(OSError):
                (CGROUP_ROOT / "cgroup.subtree_control").write_text("+memory +pids")
            (CGROUP_ROOT / PARENT).mkdir(exist_ok=True)
            (CGROUP_ROOT / PARENT / "cgroup.subtree_control").write_text("+memory +pids")
        for directory in self.directories:
            directory.mkdir(parents=True, exist_ok=True)
        self._set_limits()

    def _set_limits(self) -> None:
        memory, pids = self.memory_limit, self.pids_limit
        if _unified():
            group = self.directories[0]
            if memory:
                (group / "memory.max").write_text(str(memory))
                (group / "memory.swap.max").write_text("0")
            if pids:
                (group / "pids.max").write_text(str(pids))
            return
        memory_group, pids_group = self.directories
        if memory:
            (memory_group / "memory.limit_in_bytes").write_text(str(memory))
            # Memory and swap together at the same limit: over it the build is killed, never
            # swapped (the file is missing where the kernel does not account swap).
            with contextlib.suppress(OSError):
                (memory_group / "memory.memsw.limit_in_bytes").write_text(str(memory))
        if pids:
            (pids_group / "pids.max").write_text(str(pids))

    def join(self) -> None:
        """Move the calling process in (a ``preexec_fn``: the build starts inside)."""
        for directory in self.directories:
            (directory / "cgroup.procs").write_text(f"{os.getpid()}\n")

    def processes(self) -> set[int]:
        pids: set[int] = set()
        for directory in self.directories:
            pids.update(int(p) for p in _read(directory / "cgroup.procs").split())
        return pids

    @property
    def oom_kills(self) -> int:
        group = self.directories[0]
        if _unified():
            return _counter(group / "memory.events", "oom_kill")
        return _counter(group / "memory.oom_control", "oom_kill")

    @property
    def refused_forks(self) -> int:
        """Forks refused at the pids limit."""
        return _counter(self.directories[-1] / "pids.events", "max")

    def remove(self, grace: float = 5.0) -> None:
        """Kill whatever still runs in the group, then remove it."""
        deadline = time.monotonic() + grace
        while True:
            for pid in self.processes():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            try:
                for directory in self.directories:
                    if directory.exists():
                        directory.rmdir()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)


def remove_stale(prefix: str) -> None:
    """Remove the groups named ``<prefix>...`` and kill what runs in them.

    At a builder replica's start, with its own name as the prefix: the groups of builds its
    killed predecessor left behind (their steps may still run under conmon), never those of
    another replica on the same host.
    """
    parents = (
        [CGROUP_ROOT / PARENT]
        if _unified()
        else [CGROUP_ROOT / c / PARENT for c in ("memory", "pids")]
    )
    names = {
        entry.name
        for parent in parents
        if parent.is_dir()
        for entry in parent.iterdir()
        if entry.is_dir() and re.fullmatch(re.escape(prefix) + NAME_SUFFIX, entry.name)
    }
    for name in names:
        with contextlib.suppress(OSError):
            BuildCgroup(name).remove()
