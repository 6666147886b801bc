"""The proxy's fair shares (fairness.py): what a session, a client and the whole gateway may hold,
who is refused when one is exhausted, and that nobody else is."""

from __future__ import annotations

import asyncio

import pytest

from bindery.gateway.fairness import Fairness, Held, Limits, Refused

SESSION = Limits(requests=4, websockets=2, connections=2)
CLIENT = Limits(requests=6, websockets=3, connections=4)


def fairness(gateway_connections: int = 100, wait: float = 5.0) -> Fairness:
    return Fairness(
        session=SESSION, client=CLIENT, gateway_connections=gateway_connections, wait=wait
    )


async def connected(fair: Fairness, session: str, client: str | None = "a") -> Held:
    held = fair.request(session, client)
    await held.connect()
    return held


async def blocked(held: Held) -> asyncio.Task[None]:
    """`held.connect()` started and found waiting (it had every chance to run)."""
    task = asyncio.create_task(held.connect())
    for _ in range(5):
        await asyncio.sleep(0)
    assert not task.done()
    return task


def test_a_session_over_its_requests_is_refused_at_once_and_others_are_not() -> None:
    fair = fairness()
    for _ in range(SESSION.requests):
        fair.request("hog", "a")
    with pytest.raises(Refused) as refused:
        fair.request("hog", "a")
    assert "This session has 4 requests in progress" in refused.value.message
    fair.request("victim", "a")  # the same client, another session: served


def test_a_client_over_its_requests_is_refused_in_every_session_others_are_not() -> None:
    fair = fairness()
    for i in range(CLIENT.requests):
        fair.request(f"s{i}", "hog")  # one request per session: no session share is full
    with pytest.raises(Refused) as refused:
        fair.request("s-new", "hog")
    assert "Your network (hog) has 6 requests in progress" in refused.value.message
    fair.request("s-new", "victim")


def test_websockets_are_capped_per_session_and_per_client() -> None:
    fair = fairness()
    fair.websocket("s1", "a")
    fair.websocket("s1", "a")
    with pytest.raises(Refused) as per_session:
        fair.websocket("s1", "a")
    assert "This session has 2 websockets open" in per_session.value.message
    fair.websocket("s2", "a")
    with pytest.raises(Refused) as per_client:
        fair.websocket("s3", "a")
    assert "Your network (a) has 3 websockets open" in per_client.value.message
    fair.websocket("s3", "b")
    fair.request("s1", "a")  # websockets and requests are counted apart


async def test_a_request_waits_for_a_connection_of_its_session_and_gets_one_back() -> None:
    fair = fairness()
    first = await connected(fair, "s1")
    await connected(fair, "s1")
    waiting = await blocked(fair.request("s1", "a"))
    await connected(fair, "s2")  # another session never waits behind s1
    first.release()
    await asyncio.wait_for(waiting, 5)


async def test_websockets_hold_their_session_s_connections_too() -> None:
    fair = fairness()
    for _ in range(SESSION.connections):
        await fair.websocket("s1", "a").connect()
    waiting = await blocked(fair.request("s1", "a"))
    waiting.cancel()


async def test_a_wait_is_bounded_then_refused_with_what_to_do() -> None:
    fair = fairness(wait=0.05)
    for _ in range(SESSION.connections):
        await connected(fair, "s1")
    with pytest.raises(Refused) as refused:
        await asyncio.wait_for(fair.request("s1", "a").connect(), 5)
    assert "This session holds 2 connections to sessions" in refused.value.message
    assert "within 0.05 s" in refused.value.message


async def test_the_gateway_s_connections_are_shared_by_all() -> None:
    fair = fairness(gateway_connections=2, wait=0.05)
    await connected(fair, "s1", "a")
    await connected(fair, "s2", "b")
    with pytest.raises(Refused) as refused:
        await fair.request("s3", "c").connect()
    assert "This Bindery is carrying as many connections" in refused.value.message


async def test_a_client_s_connections_are_capped_across_its_sessions() -> None:
    fair = fairness(wait=0.05)
    for i in range(CLIENT.connections):
        await connected(fair, f"s{i}", "hog")
    with pytest.raises(Refused) as refused:
        await fair.request("s-new", "hog").connect()
    assert "Your network (hog) holds 4 connections" in refused.value.message
    await connected(fair, "s-new", "victim")


async def test_a_waiter_that_leaves_passes_its_turn_on() -> None:
    fair = fairness()
    first = await connected(fair, "s1")
    await connected(fair, "s1")
    leaving = await blocked(fair.request("s1", "a"))
    staying = await blocked(fair.request("s1", "a"))
    leaving.cancel()
    first.release()
    await asyncio.wait_for(staying, 5)


async def test_everything_comes_back_when_released_refused_or_not() -> None:
    fair = fairness(wait=0.05)
    for _ in range(3):  # rounds: nothing leaks from one to the next
        held = [await connected(fair, "s1") for _ in range(SESSION.connections)]
        refused = fair.request("s1", "a")
        with pytest.raises(Refused):
            await refused.connect()
        refused.release()
        sockets = [fair.websocket("s1", "a") for _ in range(SESSION.websockets)]
        for one in held + sockets:
            one.release()
            one.release()  # once only, however often it is called


async def test_a_request_without_a_client_address_counts_by_its_session() -> None:
    fair = fairness()
    for _ in range(SESSION.requests):
        fair.request("s1", None)
    with pytest.raises(Refused):
        fair.request("s1", None)
    fair.request("s2", None)
