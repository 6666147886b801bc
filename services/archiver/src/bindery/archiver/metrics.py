"""The archiver's Prometheus metrics: launches counted once each, at their end, across every
replica of every other service (the archiver alone sees each launch whole).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from bindery.metrics import BUILD_BUCKETS, LAUNCH_BUCKETS

LAUNCHES = Counter(
    "bindery_launches",
    "Launches ended, by status (success, failure), Bindery's failure reason and provider",
    ["status", "reason", "provider"],
)
LAUNCH_TOTAL_SECONDS = Histogram(
    "bindery_launch_total_duration_seconds",
    "From the launch request to its end, any build included: what the person waited",
    ["status"],
    # BinderHub's launch and build buckets together: a build may be part of the wait.
    buckets=sorted({*LAUNCH_BUCKETS[:-1], *BUILD_BUCKETS}),
)
LAUNCHES_QUEUED = Counter(
    "bindery_launches_queued",
    "Launches that waited for quota, by the quota that was full (repository, total)",
    ["limit"],
)
LAUNCHES_OPEN = Gauge("bindery_launches_open", "Launches requested that have not ended yet")
