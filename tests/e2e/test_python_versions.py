"""Repositories that pin a Python get it (issue 17, part 1): runtime.txt's python-3.9 and
python-3.13 and environment.yml's python=3.9 (no conda channel: the base image of that Python)
each become a session whose kernel runs that Python, with the repository's requirements
installed for it; a Python this Bindery lacks is built on the nearest, and the launch says so.
The launches run side by side on one shared stack."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.support.gitrepo import make_repo, notebook
from tests.support.stack import Stack, launch_and_probe

PROBE = """
import json, sys, tabulate
print(json.dumps({"version": list(sys.version_info[:2]), "prefix": sys.prefix,
                  "tabulate": tabulate.__file__}))
"""

REPOSITORIES: dict[str, dict[str, str]] = {
    "runtime-3.9": {"runtime.txt": "python-3.9\n", "requirements.txt": "tabulate\n"},
    "runtime-3.13": {"runtime.txt": "python-3.13\n", "requirements.txt": "tabulate\n"},
    # conda-forge is not reachable from the test stack: the PyPI route, on Python 3.9's image.
    "environment-3.9": {
        "environment.yml": "channels: [conda-forge]\ndependencies:\n  - python=3.9\n  - tabulate\n"
    },
    "runtime-3.10": {"runtime.txt": "python-3.10\n", "requirements.txt": "tabulate\n"},
}

Launched = dict[str, tuple[list[dict[str, Any]], dict[str, Any]]]
"""Per repository: its launch's events, and what the probe saw in its kernel."""


@pytest.fixture(scope="module")
async def launched(stack: Stack, http: aiohttp.ClientSession, repos: Path) -> Launched:
    async def one(name: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        repo = repos / f"python-{name}"
        make_repo(repo, {**REPOSITORIES[name], "index.ipynb": notebook("import sys")})
        session = await launch_and_probe(http, stack, repo, PROBE)
        return session.events, session.printed_json()

    results = await asyncio.gather(*(one(name) for name in REPOSITORIES))
    return dict(zip(REPOSITORIES, results, strict=True))


@pytest.mark.parametrize(
    ("name", "version"),
    [("runtime-3.9", [3, 9]), ("runtime-3.13", [3, 13]), ("environment-3.9", [3, 9])],
)
async def test_the_kernel_runs_the_python_the_repository_pins(
    launched: Launched, name: str, version: list[int]
) -> None:
    events, seen = launched[name]
    assert seen["version"] == version
    # The requirements were installed for that Python, in the session's environment.
    assert seen["prefix"] == "/srv/venv"
    assert f"/python{version[0]}.{version[1]}/site-packages/" in seen["tabulate"]
    assert not [event for event in events if event.get("warning")]


async def test_a_python_not_offered_is_the_nearest_and_the_launch_says_so(
    launched: Launched,
) -> None:
    events, seen = launched["runtime-3.10"]
    # 3.9 and 3.11 are as close to 3.10: the newer.
    assert seen["version"] == [3, 11]
    warnings = [event["message"] for event in events if event.get("warning")]
    assert len(warnings) == 1, warnings
    assert "Python 3.10" in warnings[0] and "using Python 3.11" in warnings[0]
    assert "available: 3.9, 3.11, 3.13" in warnings[0]
