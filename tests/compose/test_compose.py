"""compose.yaml runs here (issue 14, item 4): Debian's podman-compose brings the whole system up
from images built on this machine, a repository is launched end to end, and the session answers.

In: scripts/compose-images.sh's images (built once, then found by their content hash),
scripts/compose-network.sh's network, compose.yaml under a project name and gateway port of this
test's own (so it runs beside `make up`'s stack on :8585 and the test stack), with two builder
and two scheduler processes (BINDERY_BUILDERS, BINDERY_SCHEDULERS: podman-compose 1.0.3 ignores
`--scale`), a second compose file that mounts a repository made here into the resolver and the
builder at the path its file:// URL names (no git host is reachable from here), and the builder's
base images limited to the Python the repository uses. Out: the session's Jupyter answers
through the gateway's published port. Everything the project created (containers, the sessions
in its node, volumes, network) is removed at the end.

Slow: the builder builds its base image at its first start on a fresh build disk (minutes).
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.eventually import eventually
from tests.support.gitrepo import make_repo, notebook
from tests.support.stack import build_path, launch

REPO = Path(__file__).resolve().parents[2]
PROJECT = f"bindery-compose-test{os.environ.get('BINDERY_TEST_SLOT', '0')}"
SECRET = "compose-test-secret-0123456789abcdef"
PROBE = "print('answer', 6 * 7)"
REPLICAS = 2


def settings_from(script: str, *args: str) -> dict[str, str]:
    """The KEY=VALUE lines a scripts/compose-*.sh prints."""
    out = subprocess.run(
        [str(REPO / "scripts" / script), *args], check=True, capture_output=True, text=True
    ).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def project_containers() -> list[str]:
    return subprocess.run(
        ["podman", "ps", "-aq", "--filter", f"label=io.podman.compose.project={PROJECT}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()


def project_volumes() -> list[str]:
    return subprocess.run(
        ["podman", "volume", "ls", "-q", "--filter", f"label=io.podman.compose.project={PROJECT}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()


class Compose:
    def __init__(self, env: dict[str, str], files: list[Path]) -> None:
        self.env = env
        self.files = files
        self.gateway = f"http://127.0.0.1:{env['BINDERY_COMPOSE_PORT']}"

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        command = ["podman-compose", "-p", PROJECT]
        for file in self.files:
            command += ["-f", str(file)]
        return subprocess.run(
            [*command, *args], cwd=REPO, env=self.env, capture_output=True, text=True, check=False
        )


@pytest.fixture(scope="module")
def sample_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("compose-repos") / "sample"
    make_repo(path, {"index.ipynb": notebook(PROBE), "runtime.txt": "python-3.11\n"})
    return path


@pytest.fixture(scope="module")
def compose(sample_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compose]:
    network = f"{PROJECT}-net"
    env = {
        **os.environ,
        **settings_from("compose-images.sh"),
        **settings_from("compose-network.sh", network),
        "BINDERY_SESSION_SECRET": SECRET,
        "BINDERY_COMPOSE_PORT": str(free_port()),
        "BINDERY_PROFILE": "local",  # the repository is a file:// URL on this machine
        "BINDERY_BUILDERS": str(REPLICAS),
        "BINDERY_SCHEDULERS": str(REPLICAS),
    }
    repos = sample_repo.parent
    local = tmp_path_factory.mktemp("compose") / "local.yaml"
    local.write_text(
        "services:\n"
        "  resolver:\n"
        f'    volumes: ["{repos}:{repos}:ro"]\n'
        "  builder:\n"
        f'    volumes: ["{repos}:{repos}:ro"]\n'
        "    environment:\n"
        "      BINDERY_PYTHON_VERSIONS: '[\"3.11\"]'\n"
    )
    stack = Compose(env, [REPO / "compose.yaml", local])
    try:
        # The flag podman-compose 1.0.3 accepts and ignores, as an operator would pass it.
        up = stack("up", "-d", "--scale", f"builder={REPLICAS}", "--scale", "scheduler=2")
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        yield stack
    finally:
        for service in ("builder", "node", "scheduler", "gateway"):
            logs = stack("logs", "--tail", "40", service)
            print(f"--- {service}\n{logs.stdout[-4000:]}{logs.stderr[-2000:]}")
        stack("down", "-v", "-t", "10")
        subprocess.run(["podman", "network", "rm", network], check=False, capture_output=True)
    assert project_containers() == [], "podman-compose down left containers"
    assert project_volumes() == [], "podman-compose down -v left volumes"


async def test_a_repository_launches_end_to_end_on_compose(
    compose: Compose, http: aiohttp.ClientSession, sample_repo: Path
) -> None:
    async def health() -> dict[str, Any] | None:
        async with http.get(f"{compose.gateway}/health") as resp:
            body: dict[str, Any] = await resp.json()
            return body if body.get("ok") else None

    # The builder's first start builds its base image on the fresh build disk: minutes.
    ready = await eventually(
        health, within=1200, every=5, what="every stage consumed", ignoring=(aiohttp.ClientError,)
    )
    assert ready["stages"]["builder"] == REPLICAS, ready  # both builder processes consume
    assert ready["nodes"] == {"node-1": True}

    events = await launch(http, compose.gateway, build_path(f"file://{sample_repo}", "main"))
    assert events[-1]["phase"] == "ready", events[-3:]
    url, token = events[-1]["url"], events[-1]["token"]
    assert url.startswith(compose.gateway), "the session is reached through the gateway"
    async with http.get(f"{url}api/status", headers={"Authorization": f"token {token}"}) as resp:
        assert resp.status == 200
        assert "started" in await resp.json()
    async with http.get(
        f"{url}api/contents/index.ipynb", headers={"Authorization": f"token {token}"}
    ) as resp:
        assert resp.status == 200, "the repository's files are in the session"
