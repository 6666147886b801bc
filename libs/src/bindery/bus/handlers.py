"""A queue's handlers as one table: {event class: handler}, checked against what the queue
carries before it is consumed.

In: `Handlers().on(EventClass, handler)` for each event type a service takes from one queue; the
queue's spec (topology.QueueSpec.carries). Out: `check(spec)`, which refuses at start a table
that forgets an event type the queue's bindings bring, or names one they never bring (a binding
or a handler that was renamed, added or dropped on one side only); `handler_for(event)`.

A table holding `Event` itself takes every event: for the queues bound with "#".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

from bindery.bus.topology import EVERY_EVENT, QueueSpec
from bindery.events import Event

E = TypeVar("E", bound=Event)
Handler = Callable[[Event], Awaitable[None]]


class HandlersMismatch(Exception):
    """A handler table and its queue's bindings disagree: a wiring mistake, found at start."""


class Handlers:
    def __init__(self) -> None:
        self._by_class: dict[type[Event], Handler] = {}

    def on(self, event_class: type[E], handler: Callable[[E], Awaitable[None]]) -> Handlers:
        """Handle `event_class` with `handler` (typed for that class); returns the table."""
        if event_class in self._by_class:
            raise HandlersMismatch(f"two handlers for {event_class.__name__}")
        # The bus calls it only with events of that class (handler_for).
        self._by_class[event_class] = cast(Handler, handler)
        return self

    def check(self, spec: QueueSpec) -> None:
        """Raise HandlersMismatch unless this table handles exactly what `spec` carries."""
        queue = spec.name or f"the exclusive queue for {', '.join(spec.routing_keys)}"
        if spec.carries == EVERY_EVENT:
            if set(self._by_class) != {Event}:
                raise HandlersMismatch(f"{queue} carries every event: handle Event, only")
            return
        handled = {cls.type for cls in self._by_class}
        unhandled = sorted(set(spec.carries) - handled)
        never_carried = sorted(handled - set(spec.carries))
        if unhandled or never_carried:
            raise HandlersMismatch(
                f"{queue}: no handler for {unhandled or 'none'}; "
                f"handlers for events it never carries: {never_carried or 'none'}"
            )

    def handler_for(self, event: Event) -> Handler | None:
        return self._by_class.get(type(event)) or self._by_class.get(Event)
