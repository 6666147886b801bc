"""Abuse limits that match capacity (issue 12), through the started stack: one IPv6 /64 is one
client however many addresses it sends from, and a client holding its cap of sessions gets a
launch that fails at once, saying so, on the launch page too.

The gateway sees IPv6 sources two ways. Through its real socket: a network namespace made here,
joined to this host by a veth pair, holds several addresses of two documentation /64s, and
curl in it connects from each to the host's end of the veth (the gateway listens on every
address for this module, as `BINDERY_HOST=` asks: loopback alone would not reach the namespace;
sessions still cannot reach host ports, scripts/isolation.sh). Only routes into the veth lead
to those addresses, which is checked first, so no packet leaves the machine.
Through a trusted proxy: the tests on 127.0.0.1 send `X-Forwarded-For`, which the gateway
believes from a trusted proxy's address only, as behind a real reverse proxy.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import expect

from tests.e2e.test_ended_sessions import cull, until_not_routed
from tests.support.browser import chromium, screenshot_path
from tests.support.gitrepo import make_repo
from tests.support.stack import GATEWAY_PORT, Stack, build_path, launch

CAP = 2
BURST = 3
HOST_SIDE = "2001:db8:b1d::1"
SPREAD = [f"2001:db8:b1d::{n}" for n in (101, 102, 103, 104)]
"""Addresses of one /64, the namespace's: one client."""
OTHER = "2001:db8:b1d:1::5"
"""An address of the next /64: another client."""


@dataclass(frozen=True)
class Limits:
    repo_url: str
    address_log: Path


@pytest.fixture(scope="module")
def limits(stack: Stack, repos: Path) -> Iterator[Limits]:
    """The stack's gateway with small limits (a trusted proxy on loopback; the rate so slow
    that a spent burst stays spent), listening on every address, and a repository to launch."""
    repo = repos / f"limits-{uuid.uuid4().hex[:8]}"
    make_repo(repo, {"requirements.txt": "", "README.md": "client limits\n"})
    address_log = stack.log_dir / f"client-addresses-{uuid.uuid4().hex[:8]}"
    with stack.settings(
        "gateway",
        BINDERY_HOST="",
        BINDERY_TRUSTED_PROXIES="127.0.0.1/32",
        BINDERY_MAX_LAUNCHES_PER_CLIENT=str(CAP),
        BINDERY_LAUNCH_RATE_BURST=str(BURST),
        BINDERY_LAUNCH_RATE_PER_MINUTE="0.001",
        BINDERY_CLIENT_LOG_DIR=str(address_log),
    ):
        yield Limits(f"file://{repo}", address_log)


def ip(*args: str) -> str:
    return subprocess.run(["ip", *args], check=True, capture_output=True, text=True).stdout


@pytest.fixture
def namespace() -> Iterator[str]:
    """A namespace holding SPREAD and OTHER, reached from this host over a veth pair."""
    tag = os.getpid() % 100_000
    name, host, inner = f"bindery-v6-{os.getpid()}", f"bv6h{tag}", f"bv6n{tag}"
    ip("netns", "add", name)
    try:
        ip("link", "add", host, "type", "veth", "peer", "name", inner)
        ip("link", "set", inner, "netns", name)
        for address in (HOST_SIDE, "2001:db8:b1d:1::1"):
            ip("-6", "addr", "add", f"{address}/64", "dev", host, "nodad")
        for address in (*SPREAD, OTHER):
            ip("-n", name, "-6", "addr", "add", f"{address}/64", "dev", inner, "nodad")
        ip("link", "set", host, "up")
        ip("-n", name, "link", "set", inner, "up")
        for address in (*SPREAD, OTHER):
            assert f" dev {host} " in ip("-6", "route", "get", address), "not into the veth"
        yield name
    finally:
        subprocess.run(["ip", "link", "delete", host], capture_output=True, check=False)
        ip("netns", "delete", name)


def launch_from(namespace: str, source: str, path: str) -> tuple[int, str]:
    """GET `path` from the gateway over its socket, from `source` in the namespace: the status
    and the body (a launch's whole event stream, or a refusal)."""
    out = subprocess.run(
        [
            *("ip", "netns", "exec", namespace, "curl", "-sS", "--noproxy", "*"),
            *("--max-time", "300", "--interface", source, "-w", "\n%{http_code}"),
            f"http://[{HOST_SIDE}]:{GATEWAY_PORT}{path}",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    body, _, status = out.rpartition("\n")
    return int(status), body


def events(body: str) -> list[dict[str, Any]]:
    return [json.loads(line[5:]) for line in body.splitlines() if line.startswith("data:")]


async def test_one_ipv6_64_is_one_client_for_the_rate_limit(limits: Limits, namespace: str) -> None:
    # Launches of a ref that does not exist: each fails at once and holds nothing, so only
    # the rate limit stands in the way.
    path = build_path(limits.repo_url, "no-such-branch")
    for source in SPREAD[:BURST]:
        status, body = launch_from(namespace, source, path)
        assert status == 200 and events(body)[-1]["reason"] == "ref_not_found", body
    status, body = launch_from(namespace, SPREAD[BURST], path)
    assert status == 429, body
    assert json.loads(body)["reason"] == "rate_limited"

    # The gateway saw each address (its address log has them all)...
    seen = [
        json.loads(line)["address"]
        for day in limits.address_log.glob("launches-*.jsonl")
        for line in day.read_text().splitlines()
    ]
    assert [address for address in seen if address in SPREAD] == SPREAD[:BURST]
    # ... and counted them as one client: the next /64 is another, with a burst of its own.
    status, body = launch_from(namespace, OTHER, path)
    assert status == 200 and events(body)[-1]["reason"] == "ref_not_found", body


async def launch_as(
    http: aiohttp.ClientSession, stack: Stack, path: str, address: str
) -> dict[str, Any]:
    """The last event of a launch that a trusted proxy on loopback forwards for `address`."""
    async with http.get(
        stack.gateway + path,
        headers={"Accept": "text/event-stream", "X-Forwarded-For": address},
    ) as resp:
        assert resp.status == 200, await resp.text()
        last: dict[str, Any] = {}
        async for raw in resp.content:
            line = raw.decode()
            if line.startswith("data:"):
                last = json.loads(line[5:])
        return last


def session_of(ready: dict[str, Any]) -> str:
    return str(ready["url"]).rstrip("/").rsplit("/", 1)[-1]


async def test_a_client_at_its_cap_of_sessions_is_refused_until_one_stops(
    limits: Limits, stack: Stack, http: aiohttp.ClientSession
) -> None:
    path = build_path(limits.repo_url, "main")
    held = [await launch_as(http, stack, path, f"2001:db8:b1d:5::{n}") for n in (1, 2)]
    assert [r["phase"] for r in held] == ["ready", "ready"], held

    refused = await launch_as(http, stack, path, "2001:db8:b1d:5::3")
    assert refused["phase"] == "failed" and refused["reason"] == "too_many_launches"
    assert f"2 sessions running on this Bindery, its limit of {CAP}" in refused["message"]
    assert "Shut Down" in refused["message"]

    other = await launch_as(http, stack, path, "2001:db8:b1d:6::1")
    assert other["phase"] == "ready", "another /64 is another client"

    # One of the client's sessions ends: it may launch again.
    await cull(stack, held[0]["launch_id"], session_of(held[0]), idle_seconds=600)
    await until_not_routed(http, held[0]["url"])
    again = await launch_as(http, stack, path, "2001:db8:b1d:5::4")
    assert again["phase"] == "ready", again

    for ready in (held[1], other, again):
        await cull(stack, ready["launch_id"], session_of(ready), idle_seconds=600)


async def test_the_launch_page_says_why_a_launch_over_the_cap_failed(
    limits: Limits, stack: Stack, http: aiohttp.ClientSession
) -> None:
    # This test's own client, 127.0.0.1 (Chromium's too), holds its cap.
    path = build_path(limits.repo_url, "main")
    held = [(await launch(http, stack.gateway, path))[-1] for _ in range(CAP)]
    assert [r["phase"] for r in held] == ["ready"] * CAP, held
    try:
        async with chromium() as browser:
            page = await browser.new_page()
            await page.goto(f"{stack.gateway}/v2/git/{path.removeprefix('/build/git/')}")
            await expect(page.locator("#failure-title")).to_have_text(
                "You have too many sessions running", timeout=60_000
            )
            await expect(page.locator("#failure-message")).to_contain_text(
                f"{CAP} sessions running on this Bindery, its limit of {CAP} at once"
            )
            await expect(page.locator("#failure-advice")).to_contain_text("Shut Down")
            await page.screenshot(path=screenshot_path("client-cap", "refused"), full_page=True)
    finally:
        for ready in held:
            await cull(stack, ready["launch_id"], session_of(ready), idle_seconds=600)
