"""The one fake bus for tests that run a service without a broker.

In: the events a service publishes (`publish(event, headers)`, the part of bindery.bus.Bus the
gateway's `Publisher` protocol names). Out: `published`, every event in order; an optional
`on_publish` hook that answers an event the way the rest of Bindery would; `fail` makes publishing
raise as a lost broker does, `connected` is what the service's health reads.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bindery.events import Event


@dataclass
class FakeBus:
    connected: bool = True
    published: list[Event] = field(default_factory=list)
    on_publish: Callable[[Event], Awaitable[None]] | None = None
    fail: bool = False

    async def publish(self, event: Event, headers: dict[str, str] | None = None) -> None:
        if self.fail:
            raise ConnectionError("broker down")
        self.published.append(event)
        if self.on_publish is not None:
            await self.on_publish(event)
