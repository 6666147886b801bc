"""Real builds: git repositories made in tmp, podman, the base image and the local registry."""

import os
import subprocess
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from bindery.builder.baseimage import base_images, debian_pythons
from bindery.builder.buildprocess import BuildLine
from bindery.builder.job import BuildOptions
from bindery.builder.pythons import DEFAULT_PYTHON, Pythons
from tests.support.sandbox import readable_dir, sandbox_podman

REPO = Path(__file__).resolve().parents[3]
REGISTRY = os.environ.get("BINDERY_REGISTRY", "127.0.0.1:5000")
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"


@pytest.fixture(scope="session")
def registry() -> str:
    """The registry's address; CI starts it, so it missing is a failure, not a skip."""
    try:
        with urllib.request.urlopen(f"http://{REGISTRY}/v2/", timeout=5) as resp:
            assert resp.headers["Docker-Distribution-Api-Version"] == "registry/2.0"
    except (OSError, urllib.error.URLError) as e:
        pytest.fail(f"no OCI registry at {REGISTRY} (scripts/infra.sh up starts it): {e}")
    return REGISTRY


@pytest.fixture(scope="session")
def pythons() -> Pythons:
    """Every Python's base image, built if missing; 3.11 the default."""
    out = subprocess.run(
        [str(REPO / "scripts/base-image.sh")], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return Pythons(base_images(debian_pythons()), DEFAULT_PYTHON)


@pytest.fixture(scope="session")
def options(pythons: Pythons) -> BuildOptions:
    return BuildOptions(
        timeout=600,
        pythons=pythons,
        ca_bundle=CA_BUNDLE if os.path.exists(CA_BUNDLE) else "",
        allowed_schemes=("file",),
    )


@pytest.fixture
def readable_tmp() -> Iterator[Path]:
    """tmp_path for what build steps mount: readable by the build sandbox's user."""
    with readable_dir() as path:
        yield path


@pytest.fixture
def image_name(registry: str) -> Iterator[str]:
    """A fresh image name in the registry; the local copy is removed afterwards."""
    name = f"{registry}/bindery-test/builder-{uuid.uuid4().hex[:12]}:latest"
    yield name
    subprocess.run([*sandbox_podman(), "rmi", "--force", name], capture_output=True, check=False)


class Log:
    """Collects the lines a build reports."""

    def __init__(self) -> None:
        self.lines: list[BuildLine] = []

    async def __call__(self, line: BuildLine) -> None:
        self.lines.append(line)

    def text(self) -> str:
        return "\n".join(f"[{line.phase}] {line.message}" for line in self.lines)
