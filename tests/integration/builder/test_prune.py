"""The prune policy on real podman storage: tiny images under a prefix of this test's own, dated
with `podman build --timestamp`, one used by a container; the pass removes exactly what the
policy lets go. The storage is shared with every other test and service, so the pruner sees
only this test's images (its listing is filtered; the removals are podman's own)."""

import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bindery.builder.prune import (
    Kind,
    LocalImage,
    PrunePolicy,
    Pruner,
    local_images,
    sandboxed,
)
from bindery.builder.sandbox import Sandbox
from tests.support.sandbox import SANDBOX, sandbox_dir, sandbox_podman

HOUR = 3600
SHA = "0123456789abcdef0123456789abcdef01234567"


def podman(*args: str) -> str:
    out = subprocess.run([*sandbox_podman(), *args], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def exists(name: str) -> bool:
    return subprocess.run([*sandbox_podman(), "image", "exists", name], check=False).returncode == 0


class Images:
    """Builds one-file images from scratch, each distinct, remembering what it made."""

    def __init__(self, prefix: str, context: Path) -> None:
        self.prefix = prefix
        self.context = context
        self.ids: set[str] = set()
        self.containers: list[str] = []

    def build(self, name: str, *, age: float) -> str:
        (self.context / "f").write_text(uuid.uuid4().hex)
        (self.context / "Containerfile").write_text("FROM scratch\nCOPY f /f\n")
        podman(
            "build",
            "--quiet",
            f"--timestamp={int(time.time() - age)}",
            f"--tag={self.prefix}{name}",
            str(self.context),
        )
        image_id = podman("image", "inspect", "--format", "{{.Id}}", f"{self.prefix}{name}")
        self.ids.add(image_id)
        return image_id


@pytest.fixture
def images() -> Iterator[Images]:
    with sandbox_dir() as context:
        made = Images(f"127.0.0.1:5000/bindery-prune-{uuid.uuid4().hex[:10]}/", context)
        yield made
    for container in made.containers:
        subprocess.run(
            [*sandbox_podman(), "rm", "--force", container], capture_output=True, check=False
        )
    for image_id in made.ids:
        subprocess.run(
            [*sandbox_podman(), "rmi", "--force", image_id], capture_output=True, check=False
        )


async def test_a_pass_removes_old_unused_images_and_keeps_the_rest(images: Images) -> None:
    p = images.prefix
    old_commit = images.build(f"repo-old:{SHA}", age=2 * HOUR)
    images.build(f"repo-fresh:{SHA}", age=0)
    used = images.build(f"repo-used:{SHA}", age=2 * HOUR)
    images.containers.append(podman("create", f"{p}repo-used:{SHA}", "/f"))
    superseded = images.build("repo-rebuilt:1", age=2 * HOUR)
    images.build("repo-rebuilt:1", age=0)  # takes the tag: the first is now dangling
    images.build("env:newest", age=2 * HOUR)
    images.build("env:middle", age=3 * HOUR)
    oldest_env = images.build("env:oldest", age=4 * HOUR)

    async def only_this_tests_images() -> list[LocalImage]:
        listed = await local_images(sandboxed(SANDBOX))
        return [image for image in listed if image.id in images.ids]

    policy = PrunePolicy(
        prefix=p,
        env_repository=f"{p}env",
        keep_env_images=2,
        prune_after=HOUR,
    )
    # A lock of its own: a build of another stack on this store must not make the pass skip.
    sandbox = Sandbox(SANDBOX.user, lock_name="bindery-test-prune")
    result = await Pruner(policy, sandbox, list_images=only_this_tests_images).prune()

    assert result.removed == {Kind.DANGLING: 1, Kind.COMMIT: 1, Kind.ENV: 1}
    assert result.failed == 0
    for gone in (old_commit, superseded, oldest_env):
        assert not exists(gone)
    for kept in (
        f"repo-fresh:{SHA}",
        f"repo-used:{SHA}",
        "repo-rebuilt:1",
        "env:newest",
        "env:middle",
    ):
        assert exists(f"{p}{kept}"), kept
    assert exists(used)
