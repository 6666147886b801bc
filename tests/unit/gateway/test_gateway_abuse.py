"""Banned networks, the per-address launch rate limit, and the 30-day address log."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from ipaddress import ip_address
from pathlib import Path

import pytest

from bindery.gateway.abuse import AddressLog, RateLimiter, client_key, parse_networks
from tests.unit.gateway.fakes import GIT_SPEC, Harness, full_launch, make_harness, parse_sse


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[Harness]:
    async for h in make_harness(
        banned_networks="203.0.113.0/24, 2001:db8::/32",
        trusted_proxies="127.0.0.1/32",
        launch_rate_per_minute=1,
        launch_rate_burst=2,
        client_log_dir=str(tmp_path / "addresses"),
    ):
        yield h


def from_address(address: str) -> dict[str, str]:
    """The test client connects from 127.0.0.1, a trusted proxy here: it speaks for `address`."""
    return {"X-Forwarded-For": f"198.51.100.77, {address}"}


@pytest.mark.parametrize("address", ["203.0.113.9", "2001:db8::1"])
async def test_banned_network_gets_403_everywhere_but_health(
    guarded: Harness, address: str
) -> None:
    for path in ("/", f"/build/git/{GIT_SPEC}", "/user/s1/lab", "/v2/git/x/HEAD"):
        resp = await guarded.client.get(path, headers=from_address(address))
        assert resp.status == 403, path
        assert "banned" in (await resp.json())["message"]
    assert guarded.bus.published == []
    resp = await guarded.client.get("/health", headers=from_address(address))
    assert resp.status == 200


async def test_a_client_cannot_pick_its_address_without_a_trusted_proxy() -> None:
    # No trusted proxy: the socket peer (127.0.0.1) is the client, whatever the header says. A
    # banned peer stays banned behind a clean address, and a clean one is not framed by a banned
    # one: either answer flips if the gateway believed the header.
    async for h in make_harness(banned_networks="127.0.0.0/8, 203.0.113.0/24"):
        resp = await h.client.get("/", headers={"X-Forwarded-For": "198.51.100.7"})
        assert resp.status == 403
        assert "banned" in (await resp.json())["message"]
    async for h in make_harness(banned_networks="203.0.113.0/24"):
        resp = await h.client.get("/", headers={"X-Forwarded-For": "203.0.113.9"})
        assert resp.status == 200


async def test_too_many_launches_from_one_address_are_429_without_a_launch(
    guarded: Harness, tmp_path: Path
) -> None:
    guarded.bus.on_publish = full_launch(guarded)
    for _ in range(2):
        resp = await guarded.client.get(f"/build/git/{GIT_SPEC}", headers=from_address("192.0.2.1"))
        assert parse_sse(await resp.text())[-1][1]["phase"] == "ready"
    resp = await guarded.client.get(f"/build/git/{GIT_SPEC}", headers=from_address("192.0.2.1"))
    assert resp.status == 429
    assert int(resp.headers["Retry-After"]) >= 1
    body = await resp.json()
    assert body["phase"] == "failed" and body["reason"] == "rate_limited"
    assert "Too many launches" in body["message"]
    assert len(guarded.bus.published) == 2

    # Another address is not affected; resuming a launch is not a new launch.
    lid = guarded.bus.published[0].launch_id
    resp = await guarded.client.get(
        f"/build/git/{GIT_SPEC}", headers={**from_address("192.0.2.1"), "Last-Event-ID": f"{lid}:2"}
    )
    assert resp.status == 200
    resp = await guarded.client.get(f"/build/git/{GIT_SPEC}", headers=from_address("192.0.2.2"))
    assert resp.status == 200
    await resp.text()

    [day_file] = (tmp_path / "addresses").iterdir()
    records = [json.loads(line) for line in day_file.read_text().splitlines()]
    assert [r["address"] for r in records] == ["192.0.2.1", "192.0.2.1", "192.0.2.2"]
    assert records[0]["launch_id"] == lid and records[0]["provider"] == "git"


def test_rate_limiter_refills() -> None:
    limiter = RateLimiter(per_minute=60, burst=2)
    a = client_key(ip_address("192.0.2.1"))
    assert limiter.allow(a, now=0) == 0 and limiter.allow(a, now=0) == 0
    assert limiter.allow(a, now=0) == pytest.approx(1.0)
    assert limiter.allow(a, now=1.0) == 0
    assert RateLimiter(per_minute=0, burst=1).allow(a) == 0, "0 per minute: no limit"


def test_address_log_keeps_30_days_only(tmp_path: Path) -> None:
    log = AddressLog(tmp_path, retention_days=30)
    start = datetime(2026, 1, 1, 12, tzinfo=UTC)
    for day in range(40):
        log.write({"address": "192.0.2.1"}, now=start + timedelta(days=day))
    log.close()
    days = sorted(p.name for p in tmp_path.iterdir())
    assert days[0] == "launches-2026-01-10.jsonl"  # day 39 (Feb 9) minus 30 days
    assert days[-1] == "launches-2026-02-09.jsonl"
    assert len(days) == 31


def test_bad_network_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="not a network"):
        parse_networks(["10.0.0.0/8", "nonsense"])
