"""The archiver's domain: the events of one launch fold into one line of the launch archive.

In: launch-requested, ref-resolved, launch-queued, build-started, image-built, pod-scheduled,
pod-ready, launch-failed, launch-abandoned. Out: when a launch ends (pod-ready, launch-failed,
launch-abandoned, or the ref-resolved or image-built that routes a build-only launch to its end,
`NextStep.DONE`), one JSON line appended to
`<dir>/events-<YYYY-MM-DD>.jsonl` (the UTC day it ended), and the launch counters and histogram.

Each line holds BinderHub's launch event, schema `binderhub.jupyter.org/launch` version 6
(provider, spec, ref, status, build_token, origin, request_origin) in mybinder.org's archive
layout (timestamp, schema, version beside the fields), plus Bindery's own: launch id, outcome,
failure reason and service, the id of the build it followed (its one log stays at the
gateway's `/api/builds/<id>/log`, however many launches joined that build; null without a
build), and the duration of each stage. Unlike mybinder.org's archive it records failed
launches too, and launches abandoned by everyone watching them (outcome `abandoned`, status
`failure`, reason `abandoned`: no session was given). It never holds an IP address: no event
carries one. What the launch was (provider, spec, ref) comes from the launch context that
ref-resolved, image-built and pod-ready carry, so a launch whose earlier events the archiver
missed is still recorded whole.

Redelivered events are harmless: a launch already written (this run, or found in today's and
yesterday's files at start) is not written or counted again.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog

from bindery.archiver import metrics
from bindery.events import (
    BuildStarted,
    Event,
    ImageBuilt,
    LaunchAbandoned,
    LaunchContext,
    LaunchFailed,
    LaunchQueued,
    LaunchRequested,
    NextStep,
    PodReady,
    PodScheduled,
    RefResolved,
)

log = structlog.get_logger("bindery.archiver")

#: Every step of a launch the archive records, up to its end: what its queue must carry.
STEPS: tuple[type[Event], ...] = (
    LaunchRequested,
    RefResolved,
    LaunchQueued,
    BuildStarted,
    ImageBuilt,
    PodScheduled,
    PodReady,
    LaunchFailed,
    LaunchAbandoned,
)

SCHEMA = "binderhub.jupyter.org/launch"
SCHEMA_VERSION = 6
#: BinderHub's provider names (its schema's enum) for Bindery's provider prefixes.
BINDERHUB_PROVIDERS = {
    "gh": "GitHub",
    "gist": "Gist",
    "gl": "GitLab",
    "git": "Git",
    "zenodo": "Zenodo",
    "figshare": "Figshare",
    "hydroshare": "Hydroshare",
    "dataverse": "Dataverse",
    "ckan": "CKAN",
    "swhid": "SWHID",
}


def archive_file(directory: Path, day: datetime) -> Path:
    return directory / f"events-{day.astimezone(UTC):%Y-%m-%d}.jsonl"


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return round(max((end - start).total_seconds(), 0.0), 3)


def outcome(terminal: Event) -> str:
    """How a launch ended, by the event that ended it."""
    match terminal:
        case LaunchFailed():
            return "failed"
        case LaunchAbandoned():
            return "abandoned"
        case RefResolved() | ImageBuilt():
            return "built"  # a build-only launch, whose image exists
    return "ready"


@dataclass
class _Launch:
    """What the archive needs of one launch's events, as they arrive."""

    requested: LaunchRequested | None = None
    context: LaunchContext | None = None
    resolved: datetime | None = None
    queued: bool = False
    build_started: datetime | None = None
    build_id: str = ""
    built: ImageBuilt | None = None
    scheduled: datetime | None = None
    first_seen: datetime = field(default_factory=lambda: datetime.now(UTC))


class Archive:
    def __init__(self, directory: Path, *, origin: str, max_open: int = 10_000) -> None:
        self._directory = directory
        self._origin = origin
        self._max_open = max_open
        self._open: OrderedDict[str, _Launch] = OrderedDict()
        self._written: set[str] = set()
        metrics.LAUNCHES_OPEN.set_function(lambda: len(self._open))

    def load(self, now: datetime | None = None) -> None:
        """Remember the launches today's and yesterday's files already hold."""
        self._directory.mkdir(parents=True, exist_ok=True)
        now = now or datetime.now(UTC)
        for day in (now - timedelta(days=1), now):
            path = archive_file(self._directory, day)
            if not path.exists():
                continue
            for line in path.read_text().splitlines():
                try:
                    self._written.add(json.loads(line)["launch_id"])
                except (ValueError, KeyError, TypeError):
                    log.warning("archive.bad_line", file=str(path))

    def observe(self, event: Event) -> dict[str, Any] | None:
        """Fold one event in; returns the record written when it ended its launch."""
        if event.launch_id in self._written:
            return None
        launch = self._open.get(event.launch_id)
        if launch is None:
            launch = self._open[event.launch_id] = _Launch()
            if len(self._open) > self._max_open:
                dropped, _ = self._open.popitem(last=False)
                log.warning("archive.launch_dropped", dropped=dropped)
        match event:
            case LaunchRequested():
                launch.requested = event
            case RefResolved():
                launch.context = event.context
                launch.resolved = launch.resolved or event.time
                if event.route == NextStep.DONE:
                    return self._end(event, launch)
            case LaunchQueued():
                if not launch.queued:
                    metrics.LAUNCHES_QUEUED.labels(event.limit).inc()
                launch.queued = True
            case BuildStarted():
                launch.build_started = launch.build_started or event.time
                launch.build_id = launch.build_id or event.build_id
            case ImageBuilt():
                launch.context = event.context
                launch.built = event
                if event.route == NextStep.DONE:
                    return self._end(event, launch)
            case PodScheduled():
                launch.scheduled = launch.scheduled or event.time
            case PodReady():
                launch.context = event.context
                return self._end(event, launch)
            case LaunchFailed() | LaunchAbandoned():
                return self._end(event, launch)
        return None

    def _end(self, terminal: Event, launch: _Launch) -> dict[str, Any]:
        record = self.record(terminal, launch)
        path = archive_file(self._directory, terminal.time)
        with path.open("a") as file:
            file.write(json.dumps(record, separators=(",", ":")) + "\n")
        del self._open[terminal.launch_id]
        self._written.add(terminal.launch_id)
        total = record["duration_seconds"]["total"]
        metrics.LAUNCHES.labels(
            record["status"], record["failure_reason"] or "", record["provider"]
        ).inc()
        if total is not None:
            metrics.LAUNCH_TOTAL_SECONDS.labels(record["status"]).observe(total)
        log.info("archive.written", outcome=record["outcome"], file=path.name)
        return record

    def record(self, terminal: Event, launch: _Launch) -> dict[str, Any]:
        requested, context, built = launch.requested, launch.context, launch.built
        failed = terminal if isinstance(terminal, LaunchFailed) else None
        abandoned = isinstance(terminal, LaunchAbandoned)
        provider = context.provider if context else (requested.provider if requested else "")
        spec = context.spec if context else (requested.spec if requested else "")
        image_ready = built.time if built else launch.resolved
        requested_at = context.requested_at if context else (requested.time if requested else None)
        return {
            "timestamp": terminal.time.astimezone(UTC).isoformat(),
            "schema": SCHEMA,
            "version": SCHEMA_VERSION,
            "provider": BINDERHUB_PROVIDERS.get(provider, provider),
            "spec": spec,
            "ref": context.resolved_ref if context else "",
            "status": "failure" if failed or abandoned else "success",
            "build_token": False,
            "origin": self._origin,
            # BinderHub's Origin header of the request: the gateway does not pass it on.
            "request_origin": "",
            "launch_id": terminal.launch_id,
            "outcome": outcome(terminal),
            "failure_reason": failed.reason.value
            if failed
            else ("abandoned" if abandoned else None),
            "failed_service": failed.service if failed else ("gateway" if abandoned else None),
            "built": launch.build_started is not None,
            "build_id": launch.build_id or None,
            "queued": launch.queued,
            "duration_seconds": {
                "total": _seconds(requested_at, terminal.time),
                "resolve": _seconds(requested_at, launch.resolved),
                "build": round(built.duration_seconds, 3) if built else None,
                "launch": _seconds(image_ready, terminal.time)
                if isinstance(terminal, PodReady)
                else None,
            },
        }
