"""Keeps the builder host's podman storage from growing without bound.

In: podman's list of local images (names, age, size, containers using them) and a PrunePolicy.
Out: `podman rmi` of the images the policy lets go, a `build.pruned` log event and metrics with
how many went and how much disk that freed.

What goes, once older than ``prune_after`` and used by no container (stopped ones included):
dangling images (superseded tags, the last layer of a failed build), and local copies of the
builder's per-commit images (``<prefix><repo>:<commit>``, pushed to the registry when built).
Environment images (``<prefix>env:<key>``) are the layer cache that makes builds fast: the
``keep_env_images`` newest stay whatever their age, older ones go like per-commit images.

What never goes: an image with any name outside the builder's prefix (the base image, the
rootfs, whatever else shares the storage), the configured base image, images used by any
container -- session containers share this storage when the node runs on the builder's host --
and images younger than ``prune_after``, which a build running now may be about to use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum

import structlog

from bindery.builder import metrics
from bindery.builder.sandbox import Sandbox

log = structlog.get_logger("bindery.builder")

#: Shared images built by scripts/base-image.sh: no policy may ever remove them.
PROTECTED_PREFIXES = ("localhost/bindery-base", "localhost/bindery-rootfs")


class Kind(StrEnum):
    DANGLING = "dangling"
    COMMIT = "commit"
    ENV = "env"


@dataclass(frozen=True)
class LocalImage:
    id: str
    names: tuple[str, ...]
    created: float
    """Seconds since the epoch; the builder pushes an image right after building it, so this is
    also (within a build's push) when its registry copy appeared."""
    size: int
    containers: int
    dangling: bool


@dataclass(frozen=True)
class PrunePolicy:
    prefix: str
    """``<registry>/<image_prefix>``: only images all of whose names start with it are the
    builder's to remove."""
    env_repository: str
    keep_env_images: int
    prune_after: float

    def kind(self, image: LocalImage) -> Kind | None:
        """What the image is to the builder; None: not the builder's, never removed."""
        if image.dangling and not image.names:
            return Kind.DANGLING
        if not image.names or any(self._foreign(name) for name in image.names):
            return None
        if any(name.startswith(f"{self.env_repository}:") for name in image.names):
            return Kind.ENV
        return Kind.COMMIT

    def _foreign(self, name: str) -> bool:
        return not name.startswith(self.prefix) or name.startswith(PROTECTED_PREFIXES)


@dataclass(frozen=True)
class PruneResult:
    removed: dict[Kind, int]
    bytes_freed: int
    failed: int
    """Chosen but refused by podman: a container started using it since the listing."""


def choose(
    images: Sequence[LocalImage], policy: PrunePolicy, now: float
) -> list[tuple[LocalImage, Kind]]:
    """The images the policy removes, with what each is to the builder."""
    kinds = {image.id: policy.kind(image) for image in images}
    envs = sorted(
        (image for image in images if kinds[image.id] is Kind.ENV),
        key=lambda image: image.created,
        reverse=True,
    )
    cache = {image.id for image in envs[: policy.keep_env_images]}
    chosen = []
    for image in images:
        kind = kinds[image.id]
        if (
            kind is None
            or image.id in cache
            or image.containers > 0
            or now - image.created < policy.prune_after
        ):
            continue
        chosen.append((image, kind))
    return chosen


Run = Callable[[Sequence[str]], Awaitable[tuple[int, str]]]


def sandboxed(sandbox: Sandbox) -> Run:
    """A Run of podman in the build sandbox, whose image store builds fill."""

    async def podman(args: Sequence[str]) -> tuple[int, str]:
        """``podman <args>``: its exit status and its output (stderr when it failed)."""
        proc = await asyncio.create_subprocess_exec(
            *sandbox.podman(*args),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        code = proc.returncode or 0
        return code, (out if code == 0 else err).decode(errors="replace")

    return podman


async def local_images(run: Run) -> list[LocalImage]:
    # Without --all: intermediate layers (untagged, with children) go with the image above them.
    code, out = await run(["images", "--format", "json"])
    if code != 0:
        raise RuntimeError(f"podman images failed: {out.strip()}")
    return [
        LocalImage(
            id=entry["Id"],
            names=tuple(entry.get("Names") or ()),
            created=float(entry.get("Created") or 0),
            size=int(entry.get("Size") or 0),
            containers=int(entry.get("Containers") or 0),
            dangling=bool(entry.get("Dangling")),
        )
        for entry in json.loads(out or "[]")
    ]


async def storage_root(run: Run) -> str:
    code, out = await run(["info", "--format", "{{.Store.GraphRoot}}"])
    return out.strip() if code == 0 else ""


class Pruner:
    def __init__(
        self,
        policy: PrunePolicy,
        sandbox: Sandbox,
        *,
        run: Run | None = None,
        list_images: Callable[[], Awaitable[list[LocalImage]]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._policy = policy
        self._sandbox = sandbox
        self._run = run = run or sandboxed(sandbox)
        self._list = list_images or (lambda: local_images(run))
        self._clock = clock
        self._lock = asyncio.Lock()

    async def prune(self) -> PruneResult:
        """One pass of the policy; passes never overlap, and none runs beside a build (it
        would remove what the build has just found present); then the pass is skipped."""
        async with self._lock:
            with self._sandbox.pruning() as alone:
                if not alone:
                    log.info("build.prune_skipped_builds_running")
                    return PruneResult(dict.fromkeys(Kind, 0), 0, 0)
                return await self._prune()

    async def _prune(self) -> PruneResult:
        root = await storage_root(self._run)
        used_before = _disk_used(root)
        removed = dict.fromkeys(Kind, 0)
        failed = 0
        for image, kind in choose(await self._list(), self._policy, self._clock()):
            # By name, so an image never loses a name the listing did not show; a dangling
            # one has only its id.
            code, out = await self._run(["rmi", *(image.names or (image.id,))])
            if code == 0:
                removed[kind] += 1
            else:
                failed += 1
                log.info("build.prune_skipped", image=image.id[:12], error=out.strip()[-300:])
        # What the disk got back, not the images' sizes: most of each image's size is layers
        # it shares with the base image and the images kept.
        freed = max(0, used_before - _disk_used(root))
        result = PruneResult(removed, freed, failed)
        metrics.observe_prune(result.removed.items(), result.bytes_freed)
        log.info(
            "build.pruned",
            dangling=removed[Kind.DANGLING],
            commit_images=removed[Kind.COMMIT],
            env_images=removed[Kind.ENV],
            failed=failed,
            bytes_freed=freed,
        )
        return result


def _disk_used(path: str) -> int:
    if not path:
        return 0
    with contextlib.suppress(OSError):
        return shutil.disk_usage(path).used
    return 0
