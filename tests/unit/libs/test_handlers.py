"""Each queue's handler table (bindery.bus.handlers): refused at start when it and the queue's
bindings disagree, events dispatched by their class; every service's tables match the topology
(issue 15: each service declared in one place)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from bindery.archiver.handlers import subscribe as archiver_subscribe
from bindery.builder.handlers import subscribe as builder_subscribe
from bindery.bus import Handlers, QueueSpec, topology
from bindery.bus.handlers import HandlersMismatch
from bindery.culler.handlers import subscribe as culler_subscribe
from bindery.events import BuildLog, Event, ImageBuilt, LaunchRequested, NextStep, RefResolved
from bindery.gateway.handlers import subscribe as gateway_subscribe
from bindery.resolver.handlers import subscribe as resolver_subscribe
from tests.support.launches import image_built, ref_resolved

LAUNCHES = QueueSpec(
    "bindery.test.launches", (topology.every_route(RefResolved), topology.every_route(ImageBuilt))
)


async def ignore(_event: Event) -> None:
    return None


def test_a_table_that_forgets_an_event_its_queue_carries_is_refused() -> None:
    with pytest.raises(HandlersMismatch, match=r"no handler for \['image-built'\]"):
        Handlers().on(RefResolved, ignore).check(LAUNCHES)


def test_a_handler_for_an_event_the_queue_never_carries_is_refused() -> None:
    table = Handlers().on(RefResolved, ignore).on(ImageBuilt, ignore).on(LaunchRequested, ignore)
    with pytest.raises(HandlersMismatch, match=r"never carries: \['launch-requested'\]"):
        table.check(LAUNCHES)


def test_a_queue_of_every_event_takes_one_handler_for_all() -> None:
    Handlers().on(Event, ignore).check(topology.GATEWAY_EVENTS)
    with pytest.raises(HandlersMismatch, match="carries every event"):
        Handlers().on(RefResolved, ignore).check(topology.GATEWAY_EVENTS)


def test_two_handlers_for_one_event_are_refused() -> None:
    with pytest.raises(HandlersMismatch, match="two handlers for RefResolved"):
        Handlers().on(RefResolved, ignore).on(RefResolved, ignore)


async def test_each_event_reaches_the_handler_of_its_class() -> None:
    got: list[str] = []

    async def on_resolved(event: RefResolved) -> None:
        got.append(f"resolved {event.launch_id}")

    async def on_built(event: ImageBuilt) -> None:
        got.append(f"built {event.launch_id}")

    table = Handlers().on(RefResolved, on_resolved).on(ImageBuilt, on_built)
    built = image_built("b")
    handler = table.handler_for(built)
    assert handler is not None
    await handler(built)
    assert got == ["built b"]
    assert table.handler_for(LaunchRequested(launch_id="l", provider="git", spec="x/y")) is None


def test_a_queue_bound_to_one_route_takes_a_handler_for_that_route() -> None:
    builds = QueueSpec("bindery.test.builds", (topology.to(RefResolved, NextStep.BUILD),))
    Handlers().on(RefResolved, ignore, route=NextStep.BUILD).check(builds)
    with pytest.raises(HandlersMismatch, match=r"no handler for \['ref-resolved.build'\]"):
        Handlers().on(RefResolved, ignore).check(builds)
    with pytest.raises(HandlersMismatch, match=r"never carries: \['ref-resolved.launch'\]"):
        Handlers().on(RefResolved, ignore, route=NextStep.LAUNCH).check(builds)
    with pytest.raises(HandlersMismatch, match="never routed to build"):
        Handlers().on(ImageBuilt, ignore, route=NextStep.BUILD)


async def test_an_event_reaches_only_the_handler_of_its_route() -> None:
    got: list[str] = []

    async def build(event: RefResolved) -> None:
        got.append(f"build {event.launch_id}")

    table = Handlers().on(RefResolved, build, route=NextStep.BUILD)
    needs_build = ref_resolved("L1", image_exists=False)
    handler = table.handler_for(needs_build)
    assert handler is not None
    await handler(needs_build)
    assert got == ["build L1"]
    assert table.handler_for(ref_resolved("L2", image_exists=True)) is None


class CheckingBus:
    """Consumes nothing: checks each table against its queue as the bus does at start."""

    def __init__(self) -> None:
        self.queues: list[str | None] = []

    async def consume(self, spec: QueueSpec, handlers: Handlers, *, prefetch: int = 8) -> str:
        handlers.check(spec)
        self.queues.append(spec.name)
        return spec.name or "exclusive"


async def test_every_services_tables_match_the_topology() -> None:
    """The scheduler's are checked in tests/unit/scheduler/test_launch.py."""
    bus: Any = CheckingBus()
    await resolver_subscribe(bus, SimpleNamespace(on_launch_requested=ignore))  # type: ignore[arg-type]
    await builder_subscribe(bus, SimpleNamespace(on_ref_resolved=ignore), "replica-1", 2)  # type: ignore[arg-type]
    await culler_subscribe(bus, SimpleNamespace())  # type: ignore[arg-type]
    await archiver_subscribe(bus, SimpleNamespace())  # type: ignore[arg-type]
    gateway = SimpleNamespace(progress=None, routes=None, abuse=None)
    await gateway_subscribe(bus, gateway)  # type: ignore[arg-type]
    assert bus.queues == [
        topology.RESOLVER.name,
        topology.builder_replica("replica-1").name,
        topology.BUILDER.name,
        topology.CULLER.name,
        topology.ARCHIVER.name,
        None,
        None,
    ]
    assert BuildLog.type in topology.GATEWAY_LOGS.carries
