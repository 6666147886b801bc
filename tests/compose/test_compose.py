"""compose.yaml runs here (issue 14, item 4): Debian's podman-compose brings the whole system up
from images built on this machine, with no service but the builder and the session nodes
running as root; the scheduler sees both session nodes; two repositories are launched end to
end and their sessions answer.

In: scripts/compose-images.sh's images and the builder's base images (built once, then found by
their content hash; the base images limited to the Python the repositories use),
scripts/compose-network.sh's network, compose.yaml under a project name and gateway port of this
test's own (so it runs beside `make up`'s stack on :8585 and the test stack), with two builder
and two scheduler processes (BINDERY_BUILDERS, BINDERY_SCHEDULERS: podman-compose 1.0.3 ignores
`--scale`), and a second compose file that mounts the repositories made here into the resolver
and the builder at the path their file:// URLs name (no git host is reachable from here). Out:
the sessions' Jupyter answers through the gateway's published port. Everything the project
created (containers, the sessions in its nodes, its volumes, network) is removed at the end; the
base images' volume is kept for the next run, as the images are.
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
ROOT_SERVICES = {"builder", "node", "node2"}  # compose.yaml says why they run as root


def settings_from(script: str, *args: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """The KEY=VALUE lines a scripts/compose-*.sh prints."""
    out = subprocess.run(
        [str(REPO / "scripts" / script), *args],
        check=True,
        capture_output=True,
        text=True,
        env=env,
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


def service_container(service: str) -> str:
    """The id of the project's running container of a compose.yaml service."""
    ids = podman(
        "ps",
        "-q",
        "--filter",
        f"label=io.podman.compose.project={PROJECT}",
        "--filter",
        f"label=com.docker.compose.service={service}",
    ).split()
    assert len(ids) == 1, (service, ids)
    return ids[0]


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], check=True, capture_output=True, text=True).stdout


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
def repos(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Two repositories (two images), in one directory the compose file mounts."""
    parent = tmp_path_factory.mktemp("compose-repos")
    paths = []
    for name in ("sample", "other"):
        path = parent / name
        make_repo(path, {"index.ipynb": notebook(PROBE), "runtime.txt": "python-3.11\n"})
        paths.append(path)
    # The resolver reads them as `bindery`; pytest makes its directories the owner's only.
    subprocess.run(["chmod", "-R", "a+rX", str(parent)], check=True)
    return paths


@pytest.fixture(scope="module")
def compose(repos: list[Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Compose]:
    network = f"{PROJECT}-net"
    images_env = {**os.environ, "BINDERY_PYTHON_VERSIONS": '["3.11"]'}
    env = {
        **os.environ,
        **settings_from("compose-images.sh", env=images_env),
        **settings_from("compose-network.sh", network),
        "BINDERY_SESSION_SECRET": SECRET,
        "BINDERY_COMPOSE_PORT": str(free_port()),
        "BINDERY_PROFILE": "local",  # the repository is a file:// URL on this machine
        "BINDERY_BUILDERS": str(REPLICAS),
        "BINDERY_SCHEDULERS": str(REPLICAS),
    }
    parent = repos[0].parent
    local = tmp_path_factory.mktemp("compose") / "local.yaml"
    local.write_text(
        "services:\n"
        "  resolver:\n"
        f'    volumes: ["{parent}:{parent}:ro"]\n'
        "  builder:\n"
        f'    volumes: ["{parent}:{parent}:ro"]\n'
    )
    stack = Compose(env, [REPO / "compose.yaml", local])
    try:
        # The flag podman-compose 1.0.3 accepts and ignores, as an operator would pass it.
        up = stack("up", "-d", "--scale", f"builder={REPLICAS}", "--scale", "scheduler=2")
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        yield stack
    finally:
        for service in ("builder", "node", "node2", "scheduler", "gateway"):
            logs = stack("logs", "--tail", "40", service)
            print(f"--- {service}\n{logs.stdout[-4000:]}{logs.stderr[-2000:]}")
        stack("down", "-v", "-t", "10")
        subprocess.run(["podman", "network", "rm", network], check=False, capture_output=True)
    assert project_containers() == [], "podman-compose down left containers"
    assert project_volumes() == [], "podman-compose down -v left volumes"


async def test_repositories_launch_end_to_end_on_compose(
    compose: Compose, http: aiohttp.ClientSession, repos: list[Path]
) -> None:
    async def health() -> dict[str, Any] | None:
        async with http.get(f"{compose.gateway}/health") as resp:
            body: dict[str, Any] = await resp.json()
            return body if body.get("ok") else None

    # The builder starts with its base images (copied from their volume), not minutes later.
    ready = await eventually(
        health, within=600, every=5, what="every stage consumed", ignoring=(aiohttp.ClientError,)
    )
    assert ready["stages"]["builder"] == REPLICAS, ready  # both builder processes consume
    assert ready["nodes"] == {"node-1": True, "node-2": True}

    for repo in repos:
        events = await launch(http, compose.gateway, build_path(f"file://{repo}", "main"))
        assert events[-1]["phase"] == "ready", events[-3:]
        url, token = events[-1]["url"], events[-1]["token"]
        assert url.startswith(compose.gateway), "the session is reached through the gateway"
        auth = {"Authorization": f"token {token}"}
        async with http.get(f"{url}api/status", headers=auth) as resp:
            assert resp.status == 200
            assert "started" in await resp.json()
        async with http.get(f"{url}api/contents/index.ipynb", headers=auth) as resp:
            assert resp.status == 200, "the repository's files are in the session"


def test_only_the_builder_and_the_session_nodes_run_as_root(compose: Compose) -> None:
    services = ("broker", "registry", "resolver", "scheduler", "culler", "archiver", "gateway")
    users = {  # of each running container's processes (`podman top`: a heading, then one a line)
        service: set(podman("top", service_container(service), "user").split()[1:])
        for service in (*services, *ROOT_SERVICES)
    }
    as_root = {service for service, who in users.items() if "root" in who}
    assert as_root == ROOT_SERVICES, users
