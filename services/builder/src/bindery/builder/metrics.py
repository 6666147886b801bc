"""The builder's Prometheus metrics, with BinderHub's meanings under Bindery's names:
`bindery_build_duration_seconds` is BinderHub's `binderhub_build_time_seconds` (one build, from
its start to its image pushed or its failure, by status, BinderHub's buckets).
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import Counter, Gauge, Histogram

from bindery.builder.buildprocess import BuildResult
from bindery.metrics import BUILD_BUCKETS, tracks

BUILD_SECONDS = Histogram(
    "bindery_build_duration_seconds",
    "Time one build took, from its start to its image pushed or its failure, by status",
    ["status"],
    buckets=BUILD_BUCKETS,
)
BUILDS = Counter(
    "bindery_builds",
    "Builds ended, by status (success, failure) and failure reason",
    ["status", "reason"],
)
BUILDS_IN_PROGRESS = Gauge(
    "bindery_builds_in_progress", "Builds running or waiting for a build slot in this replica"
)

PRUNED_IMAGES = Counter(
    "bindery_builder_pruned_images",
    "Local images the prune policy removed, by kind (dangling, commit, env)",
    ["kind"],
)
PRUNED_BYTES = Counter(
    "bindery_builder_pruned_bytes", "Disk space the prune policy gave back to podman's storage"
)

#: Decorator for the coroutine that runs one build.
in_progress = tracks(BUILDS_IN_PROGRESS)


def observe(result: BuildResult) -> None:
    status = "success" if result.ok else "failure"
    BUILD_SECONDS.labels(status).observe(result.seconds)
    BUILDS.labels(status, str(result.reason or "")).inc()


def observe_prune(removed: Iterable[tuple[str, int]], bytes_freed: int) -> None:
    for kind, count in removed:
        PRUNED_IMAGES.labels(kind).inc(count)
    PRUNED_BYTES.inc(bytes_freed)
