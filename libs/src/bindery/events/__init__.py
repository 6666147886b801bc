"""Bindery's event contracts, the only thing services share besides libs: one module per family."""

from bindery.events.base import Event, InvalidEvent, NextStep, event_types, parse_event
from bindery.events.build import BuildLog, BuildStarted, ImageBuilt
from bindery.events.launch import (
    MAX_SPEC_LENGTH,
    FailureReason,
    LaunchAbandoned,
    LaunchContext,
    LaunchFailed,
    LaunchRequested,
    RefResolved,
    RepoConfig,
)
from bindery.events.session import (
    IdleDetected,
    ImagePulling,
    LaunchQueued,
    PodReady,
    PodScheduled,
    PodStopped,
    QueueLimit,
    SessionActivity,
    StopReason,
)

__all__ = [
    "MAX_SPEC_LENGTH",
    "BuildLog",
    "BuildStarted",
    "Event",
    "FailureReason",
    "IdleDetected",
    "ImageBuilt",
    "ImagePulling",
    "InvalidEvent",
    "LaunchAbandoned",
    "LaunchContext",
    "LaunchFailed",
    "LaunchQueued",
    "LaunchRequested",
    "NextStep",
    "PodReady",
    "PodScheduled",
    "PodStopped",
    "QueueLimit",
    "RefResolved",
    "RepoConfig",
    "SessionActivity",
    "StopReason",
    "event_types",
    "parse_event",
]
