"""Hostile launch links (issue 4) through the whole started stack, gateway first: each ends in a
4xx or a failed launch with a reason. The full table, against the resolver alone with recorders
for git and connections, is tests/integration/resolver/test_hostile_links.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from yarl import URL

from tests.support.fakeproviders import BINDERHUB_PROVIDERS
from tests.support.stack import Stack

# --- The same kinds of links through the started stack (gateway -> resolver) ---

THROUGH_THE_STACK = [
    ("/build/svn/x/main", None),
    ("/build/git/" + "a" * 5000 + "/main", None),
    ("/build/git/https%3A%2F%2Fexample.org%2Fr/main%0Aevil", None),
    ("/build/gh/onlyowner", None),
    ("/build/git/https%3A%2F%2Fexample.org%2Fr.git/--upload-pack=touch%20x", "invalid_spec"),
    ("/build/git/ext%3A%3Ash%20-c%20touch%2520x/main", "invalid_spec"),
    ("/build/gh/owner/repo/..%2F..%2Fadmin", "invalid_spec"),
    ("/build/git/http%3A%2F%2F169.254.169.254%2Flatest/main", "invalid_spec"),
    ("/build/git/http%3A%2F%2F10.0.0.1%2Fr.git/main", "invalid_spec"),
    ("/build/zenodo/10.5281%2F..%2F..%2Fadmin", "invalid_spec"),
]


async def outcome(http: aiohttp.ClientSession, gateway: str, path: str) -> tuple[int, Any]:
    async with http.get(
        URL(gateway + path, encoded=True), headers={"Accept": "text/event-stream"}
    ) as resp:
        if resp.status != 200:
            return resp.status, await resp.text()
        async for raw in resp.content:
            line = raw.decode().strip()
            if line.startswith("data:"):
                event = json.loads(line[5:])
                if event.get("phase") in {"ready", "failed"}:
                    return resp.status, event
    return resp.status, None


@pytest.mark.parametrize(("path", "reason"), THROUGH_THE_STACK)
async def test_hostile_link_through_the_stack(
    stack: Stack, http: aiohttp.ClientSession, path: str, reason: str | None
) -> None:
    status, result = await asyncio.wait_for(outcome(http, stack.gateway, path), 60)
    if reason is None:
        assert 400 <= status < 500, result
        assert "message" in json.loads(result)
    else:
        assert status == 200
        assert result["phase"] == "failed" and result["reason"] == reason, result


async def test_repoproviders_lists_the_catalogue_the_gateway_checks_against(
    stack: Stack, http: aiohttp.ClientSession
) -> None:
    async with http.get(f"{stack.gateway}/api/repoproviders") as resp:
        assert resp.status == 200
        providers = await resp.json()
    assert {p["id"] for p in providers} == BINDERHUB_PROVIDERS
    github = next(p for p in providers if p["id"] == "gh")
    assert github["displayName"] == "GitHub" and github["ref"]["enabled"] is True
    assert github["spec"]["validateRegex"] and github["detect"]["regex"].startswith(
        "^https://github"
    )
