"""Events of the builder: a build started, its log lines, and the image that came out.

Build logs are high volume: `BuildLog` travels on the logs exchange, never beside domain events.
"""

from __future__ import annotations

from pydantic import Field

from bindery.events.base import Event, register


@register
class BuildStarted(Event):
    type = "build-started"

    image: str
    builder: str = Field(description="the builder replica running the build")


@register
class BuildLog(Event):
    """One or a few lines of build output; `phase` uses BinderHub's names (building, pushing)."""

    type = "build-log"

    image: str
    phase: str = "building"
    message: str = Field(max_length=65_536)


@register
class ImageBuilt(Event):
    type = "image-built"

    image: str
    repo_url: str
    resolved_ref: str
    duration_seconds: float = Field(ge=0)
    build_only: bool = False
