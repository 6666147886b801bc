"""Per-client launch limits: a client is an IPv4 address or an IPv6 /64; what it holds (sessions,
launches in progress) is capped, its new launches rate-limited, both sized by capacity."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from ipaddress import ip_address, ip_network

import pytest
from yarl import URL

from bindery.events import (
    Event,
    FailureReason,
    LaunchAbandoned,
    LaunchFailed,
    LaunchRequested,
    PodStopped,
    StopReason,
)
from bindery.gateway.abuse import ClientLaunches, client_burst, client_cap, client_key
from bindery.gateway.deps import Gateway
from tests.support.fakebus import FakeBus
from tests.support.launches import image_built, pod_ready, ref_resolved
from tests.unit.gateway.fakes import GIT_SPEC, Harness, make_harness, parse_sse, settings

BUILD = f"/build/git/{GIT_SPEC}"


def session_of(launch_id: str) -> str:
    return f"s-{launch_id[:8]}"


def ready_at_once(h: Harness) -> Callable[[Event], Awaitable[None]]:
    """Every launch becomes a running session of its own as soon as it is published."""

    async def answer(event: Event) -> None:
        if isinstance(event, LaunchRequested):
            await h.handlers.on_event(event)
            await h.handlers.on_event(
                pod_ready(
                    event.launch_id,
                    session=session_of(event.launch_id),
                    node="n",
                    image="img",
                    target="http://127.0.0.1:1",
                )
            )

    return answer


@pytest.fixture
async def capped() -> AsyncIterator[Harness]:
    """Two launches per client; the test client speaks for others through a trusted proxy."""
    async for h in make_harness(
        trusted_proxies="127.0.0.1/32", max_launches_per_client=2, launch_rate_per_minute=0
    ):
        h.bus.on_publish = ready_at_once(h)
        yield h


def via(address: str, **headers: str) -> dict[str, str]:
    return {"X-Forwarded-For": address, **headers}


async def launch_from(h: Harness, address: str) -> dict[str, object]:
    """The last event of a launch asked for as an event stream from `address`."""
    resp = await h.client.get(BUILD, headers=via(address, Accept="text/event-stream"))
    assert resp.status == 200
    return parse_sse(await resp.text())[-1][1]


def test_a_client_is_an_ipv4_address_or_an_ipv6_network() -> None:
    assert client_key(ip_address("192.0.2.7")) == ip_network("192.0.2.7/32")
    a, b = ip_address("2001:db8:1:2::1"), ip_address("2001:db8:1:2:ffff:ffff:ffff:ffff")
    assert client_key(a) == client_key(b) == ip_network("2001:db8:1:2::/64")
    assert client_key(ip_address("2001:db8:1:3::1")) != client_key(a)
    assert client_key(ip_address("2001:db8:1:3::1"), 56) == client_key(a, 56)


def test_the_defaults_follow_capacity_with_a_floor() -> None:
    assert client_cap(24) == 3, "this machine's 24 sessions: the floor"
    assert client_cap(1000) == 100
    assert client_cap(0) == 3, "capacity unknown: the floor"
    assert client_burst(client_cap(24)) == 6 < 24


def test_the_gateway_sizes_its_limits_by_max_sessions_or_the_nodes() -> None:
    def cap_of(capacity: int = 0, **kw: object) -> int:
        gateway = Gateway.create(settings(**kw), FakeBus(), capacity=capacity)
        assert gateway.abuse is not None
        return gateway.abuse.cap

    assert cap_of(max_sessions=500) == 50
    assert cap_of(capacity=300) == 30, "found from the nodes when max_sessions is not set"
    assert cap_of(capacity=300, max_sessions=40) == 4, "the operator's word wins"
    assert cap_of(capacity=300, max_launches_per_client=7) == 7


def test_launches_count_until_they_fail_or_their_session_stops() -> None:
    client = client_key(ip_address("192.0.2.1"))
    held = ClientLaunches()
    for launch_id in ("a1", "b2", "c3", "d4"):
        held.start(client, launch_id)
    assert held.held(client) == (0, 4)
    held.observe(pod_ready("a1", session="sa", node="n", image="i", target="t"))
    held.observe(pod_ready("b2", session="sb", node="n", image="i", target="t"))
    assert held.held(client) == (2, 2)
    held.observe(
        LaunchFailed(launch_id="c3", service="builder", reason=FailureReason.OOM, message="m")
    )
    held.observe(LaunchAbandoned(launch_id="d4"))
    assert held.held(client) == (2, 0)
    # A session stops: found by its name (pod-stopped of a claimed warm session names the pool).
    held.observe(PodStopped(launch_id="pool-1", session="sa", reason=StopReason.IDLE))
    assert held.held(client) == (1, 0)
    # Redeliveries and other replicas' launches change nothing.
    held.observe(PodStopped(launch_id="a1", session="sa", reason=StopReason.IDLE))
    held.observe(LaunchFailed(launch_id="zz", service="s", reason=FailureReason.OOM, message="m"))
    assert held.held(client) == (1, 0)
    held.observe(PodStopped(launch_id="b2", session="sb", reason=StopReason.SHUT_DOWN))
    assert held.held(client) == (0, 0) and len(held) == 0


def test_a_build_only_launch_ends_when_its_image_is_ready() -> None:
    client = client_key(ip_address("192.0.2.1"))
    held = ClientLaunches()
    held.start(client, "cached")
    held.start(client, "built")
    held.observe(ref_resolved("cached", image_exists=True, build_only=True))
    held.observe(image_built("built", build_only=True))
    assert held.held(client) == (0, 0)


def test_what_is_held_stays_bounded() -> None:
    held = ClientLaunches(max_held=3)
    for n in range(10):
        held.start(client_key(ip_address(f"192.0.2.{n}")), f"l{n}")
    assert len(held) == 3
    assert held.held(client_key(ip_address("192.0.2.0"))) == (0, 0), "the oldest went first"
    assert held.held(client_key(ip_address("192.0.2.9"))) == (0, 1)


async def test_a_launch_over_the_cap_fails_at_once_saying_what_the_client_holds(
    capped: Harness,
) -> None:
    # Two addresses of one IPv6 /64 are one client: its third launch is refused...
    for address in ("2001:db8:1:2::1", "2001:db8:1:2::2"):
        assert (await launch_from(capped, address))["phase"] == "ready"
    refused = await launch_from(capped, "2001:db8:1:2::3")
    assert refused["phase"] == "failed" and refused["reason"] == "too_many_launches"
    assert "2 sessions running" in str(refused["message"])
    assert "limit of 2" in str(refused["message"])
    assert len(capped.bus.published) == 2, "nothing was started for it"

    # ... as plain JSON too, and over the launch page's websocket.
    resp = await capped.client.get(BUILD, headers=via("2001:db8:1:2::4"))
    assert resp.status == 429 and (await resp.json())["reason"] == "too_many_launches"
    ws = await capped.client.ws_connect(URL(BUILD, encoded=True), headers=via("2001:db8:1:2::5"))
    message = await ws.receive_json()
    assert message["phase"] == "failed" and message["reason"] == "too_many_launches"
    await ws.close()

    # Another /64 and an IPv4 address are other clients.
    assert (await launch_from(capped, "2001:db8:1:3::1"))["phase"] == "ready"
    assert (await launch_from(capped, "192.0.2.1"))["phase"] == "ready"

    # One of the client's sessions stops: it may launch again.
    first = capped.bus.published[0]
    await capped.handlers.on_event(
        PodStopped(
            launch_id=first.launch_id, session=session_of(first.launch_id), reason=StopReason.IDLE
        )
    )
    assert (await launch_from(capped, "2001:db8:1:2::6"))["phase"] == "ready"


async def test_launches_that_failed_hold_nothing(capped: Harness) -> None:
    async def fail_at_once(event: Event) -> None:
        if isinstance(event, LaunchRequested):
            await capped.handlers.on_event(event)
            await capped.handlers.on_event(
                LaunchFailed(
                    launch_id=event.launch_id,
                    service="resolver",
                    reason=FailureReason.REF_NOT_FOUND,
                    message="no such ref\n",
                )
            )

    capped.bus.on_publish = fail_at_once
    for _ in range(3):
        assert (await launch_from(capped, "192.0.2.1"))["reason"] == "ref_not_found"
    capped.bus.fail = True  # the broker is down: the launch fails in the gateway itself
    for _ in range(3):
        assert (await launch_from(capped, "192.0.2.1"))["reason"] == "internal"


async def test_the_rate_limit_counts_an_ipv6_network_once() -> None:
    async for h in make_harness(
        trusted_proxies="127.0.0.1/32", launch_rate_per_minute=0.001, launch_rate_burst=2
    ):
        for n in (1, 2):  # launches that stay in progress: each holds a place
            resp = await h.client.get(BUILD, headers=via(f"2001:db8:5:6::{n}"))
            assert resp.status == 200
            resp.close()
        resp = await h.client.get(BUILD, headers=via("2001:db8:5:6:abcd::99"))
        assert resp.status == 429
        body = await resp.json()
        assert body["reason"] == "rate_limited" and int(resp.headers["Retry-After"]) > 60
        resp = await h.client.get(BUILD, headers=via("2001:db8:5:7::1"))
        assert resp.status == 200, "the next /64 is another client"
        resp.close()


async def test_an_ipv4_client_on_a_dual_stack_socket_is_its_ipv4_address() -> None:
    async for h in make_harness(trusted_proxies="127.0.0.1/32", banned_networks="192.0.2.0/24"):
        resp = await h.client.get("/", headers=via("::ffff:192.0.2.1"))
        assert resp.status == 403, "an IPv4-mapped address is the IPv4 client it maps"
