"""The event envelope every Bindery message shares, and the registry that turns bytes back
into events.

In: raw message bodies (JSON bytes). Out: frozen, validated event models, or `InvalidEvent`
naming what was wrong so the bus can dead-letter the message instead of crashing a consumer.

An event's routing key is its type, or `<type>.<next step>` for an event that says what must
happen next (`NextStep`): the queues bound to that key are the ones that do it
(bindery.bus.topology), so no consumer takes an event only to discard it.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class InvalidEvent(ValueError):
    """A message that no consumer can ever handle: wrong JSON, unknown type or bad fields."""


def _new_event_id() -> str:
    return uuid.uuid4().hex


def _now() -> datetime:
    return datetime.now(UTC)


class NextStep(StrEnum):
    """What a launch needs next, as decided by the event's producer: the last word of its
    routing key."""

    BUILD = "build"
    """Its image does not exist yet: a builder builds it."""
    LAUNCH = "launch"
    """Its image exists: the scheduler starts its session."""
    DONE = "done"
    """Its image exists and it asked for nothing more (build only): nobody starts anything."""


def routing_key(event_type: str, step: NextStep | None = None) -> str:
    """The routing key of events of `event_type` going to `step` (None: events without one)."""
    return event_type if step is None else f"{event_type}.{step.value}"


class Event(BaseModel):
    """Envelope fields: type and schema version are class-level, the rest travel per message."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    type: ClassVar[str]
    version: ClassVar[int] = 1
    steps: ClassVar[tuple[NextStep, ...]] = ()
    """The next steps its `route` may name; empty for events that name none."""

    event_id: str = Field(default_factory=_new_event_id, min_length=1, max_length=64)
    launch_id: str = Field(min_length=1, max_length=64)
    time: datetime = Field(default_factory=_now)

    @property
    def route(self) -> NextStep | None:
        """The next step this event sends its launch to (one of `steps`), if it names one."""
        return None

    @property
    def routing_key(self) -> str:
        return routing_key(self.type, self.route)

    @classmethod
    def routing_keys(cls) -> tuple[str, ...]:
        """Every routing key events of this class are published with."""
        return tuple(routing_key(cls.type, step) for step in cls.steps) or (cls.type,)

    def to_json(self) -> bytes:
        body = {"type": self.type, "version": self.version, **self.model_dump(mode="json")}
        return json.dumps(body, separators=(",", ":")).encode()


E = TypeVar("E", bound=type[Event])

_REGISTRY: dict[str, type[Event]] = {}


def register(cls: E) -> E:
    """Class decorator: make an event type parseable by `parse_event`."""
    if cls.type in _REGISTRY:
        raise RuntimeError(f"event type {cls.type!r} registered twice")
    _REGISTRY[cls.type] = cls
    return cls


def event_types() -> dict[str, type[Event]]:
    return dict(_REGISTRY)


def parse_event(body: bytes | str) -> Event:
    """Decode and validate one message body; raise InvalidEvent with the reason otherwise."""
    try:
        data: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidEvent(f"body is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidEvent("body is not a JSON object")
    event_type = data.pop("type", None)
    version = data.pop("version", None)
    cls = _REGISTRY.get(event_type) if isinstance(event_type, str) else None
    if cls is None:
        raise InvalidEvent(f"unknown event type {event_type!r}")
    if version != cls.version:
        raise InvalidEvent(f"{event_type} version {version!r} is not {cls.version}")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        raise InvalidEvent(f"invalid {event_type}: {exc.errors(include_url=False)}") from exc
