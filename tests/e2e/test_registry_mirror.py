"""A Dockerfile `FROM` a Docker Hub image (issue 17, part 5): pulled through the registry mirror
the builder is given (BINDERY_REGISTRY_MIRROR), and refused at once, naming Docker Hub and the
setting, without one.

The mirror is the local registry (127.0.0.1:5000), under a path of this run's own: the test
pushes the base image there as `<mirror>/bindery-mirror-probe/base:<token>`, which is where a
mirror keeps Docker Hub's `bindery-mirror-probe/base:<token>`. The token makes the name new to
every store, so nothing is found locally by chance; the pulled image is removed afterwards.
"""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from bindery.builder.baseimage import base_image_name
from bindery.builder.pythons import DEFAULT_PYTHON
from bindery.builder.sandbox import Sandbox
from tests.e2e.test_builder_configs import launch_failure
from tests.support.gitrepo import make_repo
from tests.support.sandbox import push, sandbox_podman
from tests.support.stack import SLOT, Stack, launch_and_probe

REGISTRY = "127.0.0.1:5000"
MIRROR_PATH = f"bindery-test-{SLOT}-mirror"


@pytest.fixture
def hub_image() -> Iterator[str]:
    """A Docker Hub name no store holds; the mirror has it. Yields the name as FROM gives it."""
    name = f"bindery-mirror-probe/base:{secrets.token_hex(6)}"
    in_mirror = f"{REGISTRY}/{MIRROR_PATH}/{name}"
    # The base images are in the build sandbox's store (scripts/base-image.sh), not root's.
    base = base_image_name(DEFAULT_PYTHON)
    subprocess.run(sandbox_podman("tag", base, in_mirror), check=True)
    try:
        push(in_mirror)
    finally:
        subprocess.run(sandbox_podman("untag", base, in_mirror), check=False)
    yield name
    sandbox = Sandbox()
    subprocess.run(sandbox.podman("rmi", "-f", f"docker.io/{name}"), capture_output=True)


def dockerfile_repo(repos: Path, image: str) -> Path:
    repo = repos / f"mirror-{secrets.token_hex(4)}"
    make_repo(
        repo,
        {
            "Dockerfile": f"FROM {image}\n"
            "RUN echo through-the-mirror > /home/jovyan/.mirror-marker\n"
        },
    )
    return repo


async def test_without_a_mirror_a_docker_hub_image_is_refused_naming_the_setting(
    stack: Stack, http: aiohttp.ClientSession, repos: Path, hub_image: str
) -> None:
    failed = await launch_failure(http, stack, dockerfile_repo(repos, hub_image))
    message = failed.get("message", "")
    assert "docker.io" in message and "BINDERY_REGISTRY_MIRROR" in message, failed
    assert hub_image in message, failed


async def test_a_docker_hub_image_is_pulled_through_the_mirror(
    stack: Stack, http: aiohttp.ClientSession, repos: Path, hub_image: str
) -> None:
    mirror = f"http://{REGISTRY}/{MIRROR_PATH}"
    with stack.settings("builder", BINDERY_REGISTRY_MIRROR=mirror):
        session = await launch_and_probe(
            http,
            stack,
            dockerfile_repo(repos, hub_image),
            "print('marker', open('/home/jovyan/.mirror-marker').read().strip())",
        )
    assert "marker through-the-mirror" in session.output, session.output
    assert f"Pulling {hub_image} through the registry mirror" in session.log
