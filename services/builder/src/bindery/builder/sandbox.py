"""Where builds run: rootless podman as an unprivileged host user.

In: podman arguments (from the engine, the pruner, the builder's start-up check, scripts).
Out: command lines that run them as the sandbox user, with a fresh environment of its own, and
directories handed to that user.

As root, buildah 1.28 lets a Dockerfile read and write the host (CVE-2024-9675's cache ids,
CVE-2024-1753's symlinked bind sources). As the sandbox user the same step has an unprivileged
user's rights on the host, inside a user namespace, with its own image store on a disk of its own
(scripts/install.sh makes the user and its disk). None of the builder's environment reaches it:
no ``BINDERY_*`` setting, no broker credentials. Rootless podman ignores resource limits on
cgroup v1, so limits come from the cgroup each build runs in (bindery.builder.cgroups).

``bindery-sandbox-podman ARGS...`` runs podman in the sandbox for scripts and operators, e.g.
``.venv/bin/bindery-sandbox-podman images``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pwd
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

DEFAULT_USER = "bindery-build"
# Where pushes and pulls run (cgroup v2, mounted at /sys/fs/cgroup/unified on hybrid hosts):
# scripts/isolation.sh lets this group alone of the sandbox user's processes reach the local
# registry. A build step never runs here, so `ADD http://127.0.0.1:5000/...` stays refused.
REGISTRY_CGROUP = "bindery-registry"
_CGROUP2_MOUNTS = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup"))


@dataclass(frozen=True)
class Sandbox:
    user: str = DEFAULT_USER
    lock_name: str = ""
    """Names the lock builds and prune passes share (default: the user's); tests that prune
    beside other builds on the same store take one of their own."""

    @cached_property
    def account(self) -> pwd.struct_passwd:
        try:
            return pwd.getpwnam(self.user)
        except KeyError:
            raise SystemExit(
                f"the build sandbox user {self.user!r} does not exist: run scripts/install.sh"
            ) from None

    @property
    def home(self) -> Path:
        return Path(self.account.pw_dir)

    @property
    def tmp(self) -> Path:
        """Build contexts and podman's temporary files: on the sandbox's own disk."""
        return self.home / "tmp"

    @property
    def runtime_dir(self) -> Path:
        # No login session creates /run/user/<uid> for a system user; podman needs one.
        return Path("/run") / self.user

    def environment(self) -> dict[str, str]:
        return {
            "HOME": str(self.home),
            "USER": self.user,
            "LOGNAME": self.user,
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "TMPDIR": str(self.tmp),
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
            "LC_ALL": "C.UTF-8",
        }

    def prepare(self) -> None:
        """Make the directories podman needs as the sandbox user (idempotent, as root)."""
        uid, gid = self.account.pw_uid, self.account.pw_gid
        for directory in (self.runtime_dir, self.tmp):
            directory.mkdir(mode=0o700, exist_ok=True)
            os.chown(directory, uid, gid)

    def command(self, *args: str) -> list[str]:
        """``args`` (a program and its arguments) run as the sandbox user."""
        return [
            "setpriv",
            f"--reuid={self.account.pw_uid}",
            f"--regid={self.account.pw_gid}",
            "--clear-groups",
            "--",
            "env",
            "-i",
            f"--chdir={self.home}",
            *(f"{name}={value}" for name, value in self.environment().items()),
            *args,
        ]

    def podman(self, *args: str) -> list[str]:
        return self.command("podman", *args)

    def hand_over(self, path: Path) -> None:
        """Make ``path`` (everything under it, and the directories leading to it from the
        sandbox's tmp) the sandbox user's; links are never followed. Podman reads build contexts
        and Dockerfiles as that user, and nothing outside its tmp is ever handed over."""
        path = Path(os.path.abspath(path))
        if not path.is_relative_to(self.tmp):
            raise ValueError(f"{path} is not in the build sandbox's {self.tmp}")
        uid, gid = self.account.pw_uid, self.account.pw_gid
        for parent in path.parents:
            if parent == self.tmp:
                break
            os.lchown(parent, uid, gid)
        os.lchown(path, uid, gid)
        for root, dirs, files in os.walk(path):
            for name in (*dirs, *files):
                os.lchown(os.path.join(root, name), uid, gid)

    @contextlib.asynccontextmanager
    async def building(self) -> AsyncIterator[None]:
        """Held (shared) for the whole of a build: the pruner takes it exclusively, so it never
        removes an image that a build about to use it has just checked for (podman has no such
        lock of its own). Waits, off the event loop, while a prune pass runs."""
        fd = self._open_lock()
        try:
            await asyncio.to_thread(fcntl.flock, fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def pruning(self) -> Iterator[bool]:
        """Exclusive use of the image store: True, or False at once while builds run."""
        fd = self._open_lock()
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
            else:
                yield True
        finally:
            os.close(fd)

    def _open_lock(self) -> int:
        # In /run: root's alone, out of the sandbox user's reach.
        path = Path("/run") / f"{self.lock_name or self.user}.builds.lock"
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o600)


def join_registry_cgroup() -> None:
    """Move the calling process into REGISTRY_CGROUP (a ``preexec_fn`` for push and pull).

    Without cgroup v2 or the group (scripts/isolation.sh not run) nothing moves, and the
    registry is as reachable as the rest of the sandbox's network rules let it be.
    """
    for mount in _CGROUP2_MOUNTS:
        if (mount / "cgroup.procs").exists():
            group = mount / REGISTRY_CGROUP
            with contextlib.suppress(OSError):
                group.mkdir(exist_ok=True)
                (group / "cgroup.procs").write_text(f"{os.getpid()}\n")
            return


def main() -> None:
    """``bindery-sandbox-podman ARGS...``: podman in the build sandbox."""
    sandbox = Sandbox(os.environ.get("BINDERY_BUILD_USER", DEFAULT_USER))
    sandbox.prepare()
    cmd = sandbox.podman(*sys.argv[1:])
    os.execvp(cmd[0], cmd)  # noqa: S606 -- the operator's own arguments, no shell
