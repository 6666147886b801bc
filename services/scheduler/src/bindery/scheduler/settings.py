"""Scheduler settings (`BINDERY_*` environment variables)."""

from __future__ import annotations

from pydantic import Field

from bindery.settings import CapacitySettings, GiB, PackageIndexSettings


class SchedulerSettings(CapacitySettings, PackageIndexSettings):
    """Placement's sizes (`memory_reservation`, `node_memory`, `total_quota`) are in
    `CapacitySettings`: the gateway reads them too. What sessions get of the CA bundle and
    package index (`ca_bundle`, `index_url`) is in `PackageIndexSettings`: builds use them
    too."""

    health_port: int = 8593
    """Where this service's /health and /metrics listen (on `health_host`): each service has a
    port of its own, so all of them run side by side on one machine."""

    memory_limit: int = 2 * GiB
    """mybinder.org's limit: above it the kernel is killed, the Jupyter server lives on."""

    cpu_limit: float = 1.0
    """One core each, so one busy session cannot starve a 2-core node."""

    pids_limit: int = 512
    """Enough for Jupyter, kernels and a build of a small package; stops fork bombs."""

    disk_limit: int = Field(default=10 * GiB, gt=0)
    """Bytes a session may write beyond its image (home, /tmp, packages it installs). 10 GiB
    holds a downloaded dataset and a stack of extra wheels several times over, yet is a few
    percent of a node's disk, so one runaway writer cannot fill it. Sessions times this limit
    is what a full node may write: keep that within its free disk. Kubernetes enforces it as
    the pod's `ephemeral-storage` limit; podman here cannot cap a writable layer, so the
    scheduler measures every `disk_check_interval` and stops sessions over it."""

    disk_check_interval: float = Field(default=30.0, gt=0)
    """How often podman sessions' disk use is measured. A session may overshoot its limit by
    what it writes in one interval (about 380 MB/s here: up to 11 GiB in 30 s). Each pass makes
    podman walk every session's files, image included: 0.17 s a session on a quiet 2-core node
    with a 28,000-file Jupyter image, 0.35 s under load (5 sessions: 0.85-2 s), so it runs on
    its own timer, off the launch path. Shorter protects the disk sooner and costs the nodes
    more."""

    startup_timeout: float = 120.0
    """How long Jupyter may take to answer /api/status before the launch fails."""

    start_concurrency: int = Field(default=2, ge=1)
    """Sessions each node starts at once; the others wait their turn, launches in the order they
    were requested, before warm-pool starts. Jupyter's start is CPU-bound: on a 2-core node two
    starts keep both cores busy, and more only make every one of them finish later (20 at once
    all became ready after about 27 s; in line, the first ones are ready in a few seconds and
    the last one no later). Raise it with the node's cores."""

    repo_quota: int = Field(default=100, ge=1)
    """Concurrent sessions per repository, mybinder.org's default per-repository limit."""

    queue_timeout: float = Field(default=600.0, ge=0)
    """How long a launch over quota or capacity waits for a seat before failing. BinderHub fails
    at once (its issue #861); ten minutes lets a class of students ride out a wave of launches."""

    launch_prefetch: int = Field(default=500, ge=1)
    """Launches this scheduler holds at once (starting or waiting in the queue). Each keeps its
    message unacknowledged, so a scheduler that dies mid-launch hands it to its successor."""

    warm_pool_share: float = Field(default=0.2, ge=0, le=1)
    """Share of the cluster's session memory (of the nodes that answer) the warm pool may hold,
    each warm session counted at `warm_session_memory`. Its sessions go to the images launched
    most within `popularity_window`, none more often than it was launched there (0: no pool).
    A fifth: on two 23.5 GiB nodes, 37 sessions; on a 64 GiB node, 51. It costs launches little
    room: a warm session's seat is lent, and a launch that finds a node full evicts a warm
    session of another image instead of waiting. What it does cost is the idle Jupyter
    servers' own memory and the CPU to start them (behind launches)."""

    warm_session_memory: int = Field(default=GiB // 4, gt=0)
    """What the pool's budget counts for each warm session: the memory an unclaimed Jupyter
    server holds, not the `memory_reservation` its seat holds in placement (that seat is lent:
    a launch evicts it). A warm numpy session holds about 80 MB here (podman stats); 256 MiB
    leaves room for bigger images' servers. Counted at the 1 GiB reservation, a fifth of two
    23.5 GiB nodes held 9 sessions: they served 25 of the warm benchmark's 40 launches, and the
    other launches set its p90 at 9 s (`bench/results/warm.json`)."""

    popularity_window: float = 3600.0
    """Launches counted for popularity (warm pool, pre-pulls) within this many seconds."""

    prepull_launches: int = Field(default=3, ge=1)
    """Launches within the popularity window that make an image popular: its holders keep free
    seats for its next launches (`prepull_lead`)."""

    prepull_lead: float = Field(default=120.0, ge=0)
    """Seconds of a popular image's launches (at its rate within the popularity window) its
    holders keep free seats for; when they fall short, it is pulled onto the emptiest nodes
    without it. Two minutes: about the time a pull onto another node takes (a 2 GB image at
    50-150 MB/s is 15-40 s, behind that node's other pulls), with room for a burst. In the
    placement simulation (`bench/results/placement.json`) this brings launches needing no pull
    to within half a point of what any placement could reach."""

    prepull_keep: float = Field(default=6 * 3600.0, ge=0)
    """An image launched within this many seconds is pulled onto another node as soon as every
    node known to hold it left or stopped answering, so its next launch does not pull. Six
    hours: a repository launched a few times a day keeps its image on some node through the
    churn of the nodes (0: no image is kept)."""

    prepull_interval: float = Field(default=30.0, gt=0)
    """How often the pre-pulls are decided (a node found down starts a round at once). Each
    round looks at every image launched within `prepull_keep`; pulls run in the background, one
    a node, never where a launch pulls or starts."""

    maintain_interval: float = 30.0
    """How often the warm pool is brought up to date (also after each launch and stop)."""

    reconcile_interval: float = Field(default=30.0, gt=0)
    """How often the seats are compared with the sessions the runtime lists, so a session whose
    end the runtime's events never reported (its node's event stream broken meanwhile) gives its
    seat back within this time. The events themselves end a session within a second; this is
    the safety net, and each pass lists (podman: inspects) every session on every node."""

    node_lost_seconds: float = Field(default=60.0, gt=0)
    """How long a podman node may go without answering before its sessions are ended as lost
    (pod-stopped `node_lost`: their routes go, their seats are freed). Until then its sessions
    keep their seats, in case it comes back (a restarted podman service keeps its containers),
    and nothing new is placed on it. It is noticed at the reconcile pass after it stops
    answering, and its sessions are ended at the first pass after the grace: in all, between
    this and this plus twice `reconcile_interval`. Kubernetes' own default is 5 minutes (a
    NotReady node's pods are evicted after their 300 s toleration); a minute here, since a
    session on a dead node is a person staring at a dead page. Kubernetes clusters evict by
    themselves: this applies to podman nodes."""
