"""A queue's handlers as one table: {event class (and step): handler}, checked against what the
queue carries before it is consumed.

In: `Handlers().on(EventClass, handler)` for each event type a service takes from one queue, or
`.on(EventClass, handler, route=NextStep.X)` for the events of that class routed to step X
(bindery.events.NextStep); the queue's spec (topology.QueueSpec.carries). Out: `check(spec)`,
which refuses at start a table that forgets a routing key the queue's bindings bring, or names
one they never bring (a binding or a handler that was renamed, added or dropped on one side
only); `handler_for(event)`.

A table holding `Event` itself takes every event: for the queues bound with "#".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

from bindery.bus.topology import EVERY_EVENT, QueueSpec, carried
from bindery.events import Event, NextStep

E = TypeVar("E", bound=Event)
Handler = Callable[[Event], Awaitable[None]]


class HandlersMismatch(Exception):
    """A handler table and its queue's bindings disagree: a wiring mistake, found at start."""


class Handlers:
    def __init__(self) -> None:
        self._by_route: dict[tuple[type[Event], NextStep | None], Handler] = {}

    def on(
        self,
        event_class: type[E],
        handler: Callable[[E], Awaitable[None]],
        *,
        route: NextStep | None = None,
    ) -> Handlers:
        """Handle `event_class` (only those routed to `route`, if given) with `handler` (typed
        for that class); returns the table."""
        if route is not None and route not in event_class.steps:
            raise HandlersMismatch(f"{event_class.__name__} is never routed to {route}")
        if (event_class, route) in self._by_route:
            raise HandlersMismatch(f"two handlers for {event_class.__name__} {route or ''}")
        # The bus calls it only with events of that class (handler_for).
        self._by_route[(event_class, route)] = cast(Handler, handler)
        return self

    def check(self, spec: QueueSpec) -> None:
        """Raise HandlersMismatch unless this table handles exactly what `spec` carries."""
        queue = spec.name or f"the exclusive queue for {', '.join(spec.routing_keys)}"
        if spec.carries == EVERY_EVENT:
            if set(self._by_route) != {(Event, None)}:
                raise HandlersMismatch(f"{queue} carries every event: handle Event, only")
            return
        handled = {(cls.type, route) for cls, route in self._by_route}
        brought = {carried(key) for key in spec.carries}
        unhandled = sorted(_named(brought - handled))
        never_carried = sorted(_named(handled - brought))
        if unhandled or never_carried:
            raise HandlersMismatch(
                f"{queue}: no handler for {unhandled or 'none'}; "
                f"handlers for events it never carries: {never_carried or 'none'}"
            )

    def handler_for(self, event: Event) -> Handler | None:
        return (
            self._by_route.get((type(event), event.route))
            or self._by_route.get((type(event), None))
            or self._by_route.get((Event, None))
        )


def _named(keys: set[tuple[str, NextStep | None]]) -> list[str]:
    return [event_type if step is None else f"{event_type}.{step}" for event_type, step in keys]
