"""The runtime interface: where sessions run. Podman nodes here; Kubernetes in production.

The runtime is the source of truth for which sessions exist: every session carries labels
(instance, session, launch id, image, start time) from which any service rebuilds its view.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

LABEL_INSTANCE = "bindery.instance"
LABEL_SESSION = "bindery.session"
LABEL_LAUNCH = "bindery.launch-id"
LABEL_IMAGE = "bindery.image"
LABEL_REPO = "bindery.repo"
LABEL_STARTED = "bindery.started"

JUPYTER_PORT = 8888


class RuntimeError_(Exception):
    """The runtime refused or failed an operation; `message` is safe to show to users."""


@dataclass(frozen=True)
class Limits:
    memory_limit: int
    memory_reservation: int
    cpus: float
    pids: int


@dataclass(frozen=True)
class SessionSpec:
    name: str
    image: str
    launch_id: str
    token: str = field(repr=False)
    repo: str
    limits: Limits


@dataclass(frozen=True)
class Session:
    name: str
    node: str
    launch_id: str
    image: str
    repo: str
    started: datetime
    target: str
    """Base URL (scheme, host, port) at which the gateway reaches the session's Jupyter."""
    running: bool


class Runtime(Protocol):
    async def list_sessions(self) -> list[Session]: ...

    async def has_image(self, node: str, image: str) -> bool: ...

    async def pull(self, node: str, image: str) -> None: ...

    async def start(self, node: str, spec: SessionSpec) -> Session: ...

    async def stop(self, name: str) -> bool: ...

    async def close(self) -> None: ...
