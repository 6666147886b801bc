"""podman in the build sandbox, for tests: builds land in the sandbox user's image store.

`sandbox_podman(args)` lists the command; `podman_run(image, command)` runs a command in an
image of that store and returns its output; `push(image)` pushes from it to the registry the
way the builder does (from the one cgroup the sandbox's network rules let reach the registry).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

from bindery.builder.sandbox import DEFAULT_USER, Sandbox, join_registry_cgroup

SANDBOX = Sandbox(os.environ.get("BINDERY_BUILD_USER", DEFAULT_USER))


def sandbox_podman(*args: str) -> list[str]:
    SANDBOX.prepare()
    return SANDBOX.podman(*args)


def podman_run(image: str, *command: str) -> str:
    """What ``command`` prints in a throwaway container of ``image``; it must succeed."""
    out = subprocess.run(
        sandbox_podman("run", "--rm", image, *command),
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def push(image: str) -> None:
    subprocess.run(
        sandbox_podman("push", "--tls-verify=false", "-q", image),
        check=True,
        capture_output=True,
        preexec_fn=join_registry_cgroup,
    )


def remove_image(image: str) -> None:
    subprocess.run(sandbox_podman("rmi", "--force", image), capture_output=True, check=False)


@contextlib.contextmanager
def sandbox_dir() -> Iterator[Path]:
    """A directory of the sandbox user's (build contexts it reads), removed afterwards."""
    SANDBOX.prepare()
    path = Path(tempfile.mkdtemp(prefix="bindery-test-", dir=SANDBOX.tmp))
    SANDBOX.hand_over(path)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def readable_dir(prefix: str = "bindery-test-shared-") -> Iterator[Path]:
    """A directory anyone may read, removed afterwards, which pytest's own temporary
    directories (mode 0700) are not: what an operator hands build steps (a CRAN mirror, a Nix
    channel or cache) must be readable by the sandbox user, and local repositories by the
    services' user (the resolver reads them)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
