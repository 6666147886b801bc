"""The prune policy on listings made up here, and a fake podman: which images go, which stay."""

from collections.abc import Sequence

from bindery.builder.prune import Kind, LocalImage, PrunePolicy, Pruner, choose
from bindery.builder.sandbox import Sandbox

# Its lock only (no such user is needed): builds and passes of this test alone.
SANDBOX = Sandbox("bindery-test-prune", lock_name="bindery-test-prune-unit")

NOW = 1_800_000_000.0
HOUR = 3600.0
PREFIX = "reg:5000/bindery/"
POLICY = PrunePolicy(
    prefix=PREFIX,
    env_repository=f"{PREFIX}env",
    keep_env_images=2,
    prune_after=HOUR,
)


def image(
    id: str, *names: str, age: float = 2 * HOUR, containers: int = 0, size: int = 100
) -> LocalImage:
    return LocalImage(
        id=id,
        names=names,
        created=NOW - age,
        size=size,
        containers=containers,
        dangling=not names,
    )


def chosen(images: Sequence[LocalImage], policy: PrunePolicy = POLICY) -> dict[str, Kind]:
    return {img.id: kind for img, kind in choose(images, policy, NOW)}


def test_old_unused_commit_images_and_dangling_images_go() -> None:
    images = [
        image("commit", f"{PREFIX}repo-abc:{'a' * 40}"),
        image("dangling"),
    ]
    assert chosen(images) == {"commit": Kind.COMMIT, "dangling": Kind.DANGLING}


def test_images_younger_than_prune_after_stay() -> None:
    images = [
        image("commit", f"{PREFIX}repo-abc:{'a' * 40}", age=HOUR - 1),
        image("dangling", age=60),
    ]
    assert chosen(images) == {}


def test_images_used_by_a_container_stay() -> None:
    images = [
        image("session", f"{PREFIX}repo-abc:{'a' * 40}", containers=1),
        image("build-step", containers=1),
    ]
    assert chosen(images) == {}


def test_the_newest_env_images_stay_whatever_their_age() -> None:
    images = [
        image("env-new", f"{PREFIX}env:1", age=2 * HOUR),
        image("env-mid", f"{PREFIX}env:2", age=3 * HOUR),
        image("env-old", f"{PREFIX}env:3", age=4 * HOUR),
        image("env-older", f"{PREFIX}env:4", age=5 * HOUR),
    ]
    assert chosen(images) == {"env-old": Kind.ENV, "env-older": Kind.ENV}


def test_an_env_image_in_use_still_counts_among_the_kept() -> None:
    images = [
        image("env-young", f"{PREFIX}env:1", age=60),
        image("env-used", f"{PREFIX}env:2", age=3 * HOUR, containers=1),
        image("env-old", f"{PREFIX}env:3", age=4 * HOUR),
    ]
    assert chosen(images) == {"env-old": Kind.ENV}


def test_images_not_all_of_whose_names_are_the_builders_stay() -> None:
    policy = PrunePolicy(
        prefix="localhost/",
        env_repository="localhost/env",
        keep_env_images=0,
        prune_after=HOUR,
    )
    images = [
        image("base", "localhost/bindery-base:abc-py3.9"),
        image("rootfs", "localhost/bindery-rootfs:bookworm"),
        image("also-elsewhere", "localhost/repo:1", "docker.io/library/python:3.11"),
        image("ours", "localhost/repo:2"),
    ]
    assert chosen(images, policy) == {"ours": Kind.COMMIT}


class FakePodman:
    def __init__(self, refuse: set[str]) -> None:
        self.removed: list[tuple[str, ...]] = []
        self.refuse = refuse

    async def __call__(self, args: Sequence[str]) -> tuple[int, str]:
        if args[0] == "info":
            return 0, ""
        assert args[0] == "rmi"
        if args[1] in self.refuse:
            return 2, "image is in use by a container"
        self.removed.append(tuple(args[1:]))
        return 0, ""


async def test_a_pass_removes_by_name_and_counts_what_podman_refused() -> None:
    podman = FakePodman(refuse={f"{PREFIX}repo-b:2"})
    images = [
        image("two-names", f"{PREFIX}repo-a:1", f"{PREFIX}repo-a:latest"),
        image("raced", f"{PREFIX}repo-b:2"),
        image("dangling"),
        image("env-kept", f"{PREFIX}env:1"),
    ]

    async def listing() -> list[LocalImage]:
        return images

    result = await Pruner(
        POLICY, SANDBOX, run=podman, list_images=listing, clock=lambda: NOW
    ).prune()

    assert podman.removed == [(f"{PREFIX}repo-a:1", f"{PREFIX}repo-a:latest"), ("dangling",)]
    assert result.removed == {Kind.DANGLING: 1, Kind.COMMIT: 1, Kind.ENV: 0}
    assert result.failed == 1


async def test_no_pass_runs_beside_a_build() -> None:
    """A build checks that its environment image is present, then uses it: a pass in between
    would remove it under the build. The pass is skipped and nothing is removed."""
    podman = FakePodman(refuse=set())

    async def listing() -> list[LocalImage]:
        return [image("dangling")]

    pruner = Pruner(POLICY, SANDBOX, run=podman, list_images=listing, clock=lambda: NOW)
    async with SANDBOX.building():
        skipped = await pruner.prune()
    assert podman.removed == []
    assert sum(skipped.removed.values()) == 0
    await pruner.prune()
    assert podman.removed == [("dangling",)]
