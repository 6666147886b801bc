"""Events of the builder: a build started, its log lines, and the image that came out.

Build logs are high volume: `BuildLog` travels on the logs exchange, never beside domain events.
Each build has a `build_id` that starts with its start time, so its kept log (the build-log stream)
is found without reading the stream from its beginning.
"""

from __future__ import annotations

import re
import secrets
import time
from datetime import UTC, datetime

from pydantic import Field

from bindery.events.base import Event, NextStep, register
from bindery.events.launch import LaunchContext

_BUILD_ID = re.compile(r"(?P<millis>[0-9a-f]{12})[0-9a-f]{8}")


def new_build_id() -> str:
    """20 hex digits: milliseconds since the epoch, then randomness."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(4)}"


def build_started_at(build_id: str) -> datetime | None:
    """When the build with this id started; None if it is no build id."""
    match = _BUILD_ID.fullmatch(build_id)
    if match is None:
        return None
    try:
        return datetime.fromtimestamp(int(match["millis"], 16) / 1000, UTC)
    except ValueError:  # 12 hex digits of milliseconds reach past the year 9999
        return None


@register
class BuildStarted(Event):
    type = "build-started"

    image: str
    builder: str = Field(description="the builder replica running the build")
    build_id: str = Field(default="", description="`new_build_id()`; names the kept log")


@register
class BuildLog(Event):
    """One or a few lines of build output; `phase` uses BinderHub's names (building, pushing).

    Published once per build: `launch_id` is the launch that started the build. Every launch
    following it (the first, and those that joined) has a build-started with its `build_id`,
    which is how the gateway shows each of them the lines. `seq` numbers a build's lines from
    0, so a gateway that missed some (started mid-build, or its queue gone with a lost
    connection) sees the gap and reads them back from the build-log stream."""

    type = "build-log"
    version = 2

    image: str
    phase: str = "building"
    message: str = Field(max_length=65_536)
    build_id: str = ""
    seq: int = Field(default=0, ge=0, description="the line's number in its build, from 0")
    final: bool = Field(default=False, description="the build's last line: its log ends here")


@register
class ImageBuilt(Event):
    """The launch's image is in the registry now: `image-built.launch` to the scheduler, or
    `image-built.done` for a build-only launch, which ends here."""

    type = "image-built"
    version = 2
    steps = (NextStep.LAUNCH, NextStep.DONE)

    context: LaunchContext
    image: str
    duration_seconds: float = Field(ge=0)

    @property
    def route(self) -> NextStep:
        return NextStep.DONE if self.context.build_only else NextStep.LAUNCH
