"""The route table (routes.py): where a session is, routes back from the runtime after a
restart, and why a session that is gone ended."""

from __future__ import annotations

import asyncio

from bindery.events import StopReason
from bindery.gateway.routes import RouteTable, rebuild_routes
from bindery.runtimes import Session
from tests.unit.gateway.fakes import listed_session


async def test_routes_rebuilt_from_running_sessions() -> None:
    class Runtime:
        async def list_sessions(self) -> list[Session]:
            return [listed_session("up"), listed_session("down", running=False)]

    routes = RouteTable()
    assert await rebuild_routes(Runtime(), routes) == 1
    assert "up" in routes and "down" not in routes


def test_a_route_parses_its_target_once() -> None:
    plain = RouteTable().add("s1", "http://10.0.0.5:8888/", "a" * 32)
    assert (plain.address, plain.prefix, plain.target) == (
        ("10.0.0.5", 8888, False),
        "",
        plain.target,
    )
    behind = RouteTable().add("s2", "https://node.example/jupyter/", "b" * 32)
    assert behind.address == ("node.example", 443, True)
    assert behind.prefix == "/jupyter"


async def test_an_unknown_session_waits_for_the_rebuild_only_until_it_is_done() -> None:
    routes = RouteTable()
    finding = asyncio.create_task(routes.find("s1", wait=10.0))
    await asyncio.sleep(0)
    routes.add("s1", "http://127.0.0.1:7", "a" * 32)
    routes.rebuilt.set()
    found = await finding
    assert found is not None and found.session == "s1"
    assert await routes.find("nobody", wait=10.0) is None  # rebuilt: no wait


def test_a_stopped_session_is_remembered_with_why_it_ended() -> None:
    routes = RouteTable()
    routes.add("s1", "http://127.0.0.1:7", "a" * 32, relaunch="/v2/gh/o/r/main")
    assert routes.remove("s1", StopReason.IDLE, idle_seconds=600.0)
    assert "s1" not in routes
    ended = routes.ended("s1")
    assert ended is not None
    assert (ended.reason, ended.relaunch, ended.idle_seconds) == (
        StopReason.IDLE,
        "/v2/gh/o/r/main",
        600.0,
    )
    assert routes.ended("s2") is None
