"""Events of a launch's front half: the request, the resolved ref, and the terminal failure.

Producers: gateway (launch-requested), resolver (ref-resolved), any service (launch-failed).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from bindery.events.base import Event, register


@register
class LaunchRequested(Event):
    """Someone asked for a session of `provider`/`spec` (BinderHub's /build/<provider>/<spec>)."""

    type = "launch-requested"

    provider: str = Field(min_length=1, max_length=32)
    spec: str = Field(min_length=1, max_length=4096)
    build_only: bool = False


@register
class RefResolved(Event):
    """The spec names one immutable commit; `image` is the deterministic image for it."""

    type = "ref-resolved"

    provider: str
    spec: str
    repo_url: str
    ref: str
    resolved_ref: str
    repo_key: str = Field(description="stable per-repository key for quotas and sticky builds")
    image: str
    image_exists: bool
    build_only: bool = False


class FailureReason(StrEnum):
    """Why a launch ended without a session; a person can act on each one differently."""

    INVALID_SPEC = "invalid_spec"
    BANNED = "banned"
    REF_NOT_FOUND = "ref_not_found"
    REPO_UNREACHABLE = "repo_unreachable"
    STEP_FAILED = "step_failed"
    CLONE_FAILED = "clone_failed"
    TIMEOUT = "timeout"
    OOM = "oom"
    TOO_LARGE = "too_large"
    NO_CAPACITY = "no_capacity"
    START_FAILED = "start_failed"
    INTERNAL = "internal"


@register
class LaunchFailed(Event):
    """Terminal: the launch ended without a session. `message` is meant for the person waiting."""

    type = "launch-failed"

    service: str
    reason: FailureReason
    message: str = Field(max_length=20_000)
