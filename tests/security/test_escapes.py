"""Hostile repositories against the started stack: each tries to reach the host from its build
(the known buildah escapes, the classes around them, the host's services, its files, other
repositories' caches), and each either fails with a reason a person can act on or builds
harmlessly, with the host's canary untouched and nothing of the host in what the launch said.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.canary import Canary, planted_canary
from tests.support.gitrepo import git, make_repo
from tests.support.stack import Stack, build_path, launch

STACK_REGISTRY = "127.0.0.1:5000"
BUILDER_HEALTH_PORT = 8592


@pytest.fixture
def canary() -> Iterator[Canary]:
    with planted_canary() as planted:
        yield planted


def told(events: list[dict[str, Any]]) -> str:
    """Everything the launch's events said, as one text."""
    return "\n".join(json.dumps(event) for event in events)


def hostile_repo(repos: Path, files: dict[str, str], links: dict[str, str] | None = None) -> str:
    """A repository of ``files`` and symbolic ``links`` (name -> target); its file:// URL."""
    path = repos / f"hostile-{uuid.uuid4().hex[:10]}"
    make_repo(path, files)
    for name, target in (links or {}).items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, path / name)
    if links:
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", "links")
    return f"file://{path}"


async def launched(http: aiohttp.ClientSession, stack: Stack, url: str) -> list[dict[str, Any]]:
    events = await launch(http, stack.gateway, build_path(url, "main"))
    assert events[-1]["phase"] in ("ready", "failed"), told(events)
    return events


async def refused(
    http: aiohttp.ClientSession, stack: Stack, canary: Canary, url: str, *words: str
) -> str:
    """Launch ``url``: it must fail with ``words`` in its message, the canary untouched."""
    events = await launched(http, stack, url)
    text = told(events)
    canary.assert_untouched(text)
    assert events[-1]["phase"] == "failed", text[-3000:]
    message = str(events[-1].get("message", ""))
    for word in words:
        assert word in message, message
    return message


def dockerfile(*lines: str) -> dict[str, str]:
    return {"Dockerfile": "\n".join(["FROM scratch", *lines]) + "\n"}


# --- Dockerfile escapes: refused before anything builds, naming the feature and the line -----


HOSTROOT = {"hostroot": "/"}


@pytest.mark.parametrize(
    ("line", "links", "words"),
    [
        # CVE-2024-9675: a cache id climbing out of buildah's cache directory, onto the host.
        (
            "RUN --mount=type=cache,id=../../../../..,target=/host cat /host{readable}",
            {},
            ["type=cache", "CVE-2024-9675"],
        ),
        # CVE-2024-1753: a bind mount of a committed symlink to the host's root. The checkout
        # check refuses the link itself, before the Dockerfile is read.
        (
            "RUN --mount=type=bind,source=hostroot,target=/host cat /host{readable}",
            HOSTROOT,
            ["'hostroot'", "absolute"],
        ),
        (
            "RUN --mount=type=bind,source=.,target=/host touch /host/x",
            {},
            ["type=bind", "CVE-2024-1753"],
        ),
        # The default mount type is bind.
        ("RUN --mount=source=.,target=/host touch /host{forbidden}", {}, ["without type=", "bind"]),
        ("RUN --mount=type=ssh cat /run/buildkit/ssh_agent.0", {}, ["type=ssh"]),
        # The builder's own build secrets are not the repository's to read.
        ("RUN --mount=type=secret,id=pipca cat /run/secrets/pipca", {}, ["type=secret"]),
        ("RUN --network=host curl -s http://127.0.0.1:{port}/", {}, ["--network=host"]),
        ("RUN --security=insecure cat {readable}", {}, ["--security=insecure"]),
        ("COPY /..{readable} /tmp/x", {}, ["COPY source", "inside the repository"]),
        ("ADD ../../..{readable} /tmp/x", {}, ["ADD source", "inside the repository"]),
        ("ONBUILD RUN --mount=type=bind,source=.,target=/host true", {}, ["type=bind"]),
        ("ADD git@example.org:someone/repo.git /src", {}, ["ADD of"]),
    ],
)
async def test_a_dockerfile_reaching_for_the_host_is_refused_naming_the_feature_and_line(
    http: aiohttp.ClientSession,
    stack: Stack,
    repos: Path,
    canary: Canary,
    line: str,
    links: dict[str, str],
    words: list[str],
) -> None:
    step = line.format(readable=canary.readable, forbidden=canary.forbidden, port=canary.port)
    url = hostile_repo(repos, dockerfile(step), links=links)
    expected = [word.format(readable=canary.readable) for word in words]
    if not links:
        expected.append("line 2")
    await refused(http, stack, canary, url, *expected)


async def test_add_of_a_loopback_url_cannot_reach_the_hosts_services(
    http: aiohttp.ClientSession, stack: Stack, repos: Path, canary: Canary
) -> None:
    """buildah fetches ADD <url> itself, from the host: the sandbox's network rules refuse
    loopback, whether the canary, a service's health port or the registry's catalogue."""
    for target in (
        f"http://127.0.0.1:{canary.port}/add",
        f"http://127.0.0.1:{BUILDER_HEALTH_PORT}/health",
        f"http://{STACK_REGISTRY}/v2/_catalog",
    ):
        url = hostile_repo(repos, dockerfile(f"ADD {target} /fetched"))
        events = await launched(http, stack, url)
        canary.assert_untouched(told(events))
        assert events[-1]["phase"] == "failed", told(events)[-3000:]
        assert "repositories" not in told(events)  # the registry's catalogue


async def test_a_config_file_linked_to_a_host_file_fails_naming_the_link(
    http: aiohttp.ClientSession, stack: Stack, repos: Path, canary: Canary
) -> None:
    url = hostile_repo(
        repos,
        {"requirements.txt": "\n"},
        links={"apt.txt": str(canary.readable), "binder/postBuild": str(canary.private)},
    )
    message = await refused(http, stack, canary, url, "apt.txt")
    assert "link" in message


POSTBUILD_PROBE = """#!/bin/bash
# Everything a build step might try against the host: none of it may work.
cat {readable} {private} 2>&1 | head -c 200
touch {forbidden} 2>&1
for host in 127.0.0.1 10.0.2.2 10.88.0.1 {host_addresses}; do
    python3 - "$host" <<'EOF'
import sys, urllib.request
try:
    url = f"http://{{sys.argv[1]}}:{port}/postbuild"
    print("REACHED", urllib.request.urlopen(url, timeout=3).read())
except Exception as e:
    print("refused", sys.argv[1], type(e).__name__)
EOF
done
env | grep -c '^BINDERY_' | sed 's/^/BINDERY_VARIABLES /'
env | grep -ci 'amqp://' | sed 's/^/AMQP_URLS /'
echo PROBE-DONE
"""


def host_addresses() -> list[str]:
    """This host's own IPv4 addresses (the LAN interface's among them)."""
    out = subprocess.run(["hostname", "-I"], capture_output=True, text=True, check=False)
    return [address for address in out.stdout.split() if ":" not in address]


async def test_a_postbuild_sees_no_host_file_service_or_secret(
    http: aiohttp.ClientSession, stack: Stack, repos: Path, canary: Canary
) -> None:
    probe = POSTBUILD_PROBE.format(
        readable=canary.readable,
        private=canary.private,
        forbidden=canary.forbidden,
        port=canary.port,
        host_addresses=" ".join(host_addresses()),
    )
    url = hostile_repo(repos, {"requirements.txt": "\n", "postBuild": probe})
    events = await launched(http, stack, url)
    text = told(events)
    canary.assert_untouched(text)
    assert events[-1]["phase"] == "ready", text[-3000:]
    assert "PROBE-DONE" in text
    assert "REACHED" not in text
    assert "BINDERY_VARIABLES 0" in text and "AMQP_URLS 0" in text


PLANT = """#!/bin/bash
# Plant a "package" in every cache this build can write, for the next repository to install.
mkdir -p ~/.cache/uv && echo planted > ~/.cache/uv/PLANTED-BY-ANOTHER-REPOSITORY
"""
LOOK = """#!/bin/bash
if [ -e ~/.cache/uv/PLANTED-BY-ANOTHER-REPOSITORY ]; then echo CACHE-POISONED
else echo CACHE-CLEAN; fi
"""


async def test_a_build_that_tampers_with_its_cache_cannot_change_another_repositorys(
    http: aiohttp.ClientSession, stack: Stack, repos: Path, canary: Canary
) -> None:
    planter = hostile_repo(repos, {"requirements.txt": "\n", "postBuild": PLANT})
    events = await launched(http, stack, planter)
    assert events[-1]["phase"] == "ready", told(events)[-3000:]
    victim = hostile_repo(repos, {"requirements.txt": "\n", "postBuild": LOOK})
    events = await launched(http, stack, victim)
    text = told(events)
    assert events[-1]["phase"] == "ready", text[-3000:]
    assert "CACHE-CLEAN" in text and "CACHE-POISONED" not in text
    canary.assert_untouched(text)


FORK_BOMB = """#!/usr/bin/env python3
# Forks until the kernel refuses, then waits: the limit must stop it, not the host.
import os, sys, time
children = 0
try:
    for _ in range(100_000):
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        children += 1
except OSError as e:
    print("FORKED", children, "then", e)
sys.stdout.flush()
"""


async def test_a_fork_bomb_fails_only_its_own_build(
    http: aiohttp.ClientSession, stack: Stack, repos: Path, canary: Canary
) -> None:
    """The build's process limit stops it: the build fails (or, if the bomb gave up in time,
    builds), the host keeps working, and the next repository builds as usual."""
    url = hostile_repo(repos, {"requirements.txt": "\n", "postBuild": FORK_BOMB})
    events = await launched(http, stack, url)
    canary.assert_untouched(told(events))
    after = hostile_repo(repos, {"requirements.txt": "\n", "postBuild": "#!/bin/sh\necho fine\n"})
    events = await launched(http, stack, after)
    assert events[-1]["phase"] == "ready", told(events)[-3000:]
