"""The runtime interface: where sessions run. Podman nodes here; Kubernetes in production.

The runtime is the source of truth for which sessions exist: every session carries labels
(instance, session, launch id, image, start time, BinderHub variables) from which any service
rebuilds its view.

Warm sessions are started before anyone asks for them, under a name of their own, so their
Jupyter already serves `/user/<name>/` with the token derived from that name. A launch claims
one by giving it its launch's key (the name the launch would have used); from then on it is an
ordinary session, found by that key if the launch is redelivered and by its name everywhere else.
A process's environment is fixed when it starts, so a warm session is started with the BinderHub
variables of its image's latest launch and claimed only by a launch whose variables are the same.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol, TypedDict

from bindery.origins import NOBODY, AllowedOrigins
from bindery.sessionnetwork import SessionNetwork

LABEL_INSTANCE = "bindery.instance"
LABEL_SESSION = "bindery.session"
LABEL_LAUNCH = "bindery.launch-id"
LABEL_IMAGE = "bindery.image"
LABEL_REPO = "bindery.repo"
LABEL_STARTED = "bindery.started"
LABEL_WARM = "bindery.warm"
"""Present on sessions started for the warm pool (claimed or not)."""
LABEL_ENV = "bindery.binder-env"
"""The session's BinderHub variables (JSON): a warm session goes only to a launch with the same."""

JUPYTER_PORT = 8888


class RuntimeError_(Exception):
    """The runtime refused or failed an operation; `message` is safe to show to users."""


class NodeUnreachable(RuntimeError_):
    """A node is down: it could not be reached at all (its socket gone, its service dead), or
    did not answer its ping in time (its service hung), as opposed to answering with an error."""

    def __init__(self, node: str, error: BaseException) -> None:
        super().__init__(f"{node} does not answer: {str(error) or type(error).__name__}")
        self.node = node


class NodeTimedOut(RuntimeError_):
    """A node took a request but did not answer it within its bound. Busy (podman answers what
    takes its storage lock late while a big pull or a build's commit holds it) or hung: what
    it would have said is unknown, and whether it is down only its ping tells."""

    def __init__(self, node: str, seconds: float) -> None:
        super().__init__(f"{node} did not answer within {seconds:g} s")
        self.node = node


@dataclass(frozen=True)
class Limits:
    memory_limit: int
    memory_reservation: int
    cpus: float
    pids: int
    disk: int
    """Bytes a session may write beyond its image. Kubernetes enforces it (the pod's
    `ephemeral-storage` limit: the kubelet evicts); podman cannot here (overlay on ext4 has no
    per-container quota), so the scheduler measures and stops sessions over it."""


@dataclass(frozen=True)
class SessionSpec:
    name: str
    image: str
    launch_id: str
    token: str = field(repr=False)
    repo: str
    limits: Limits
    warm: bool = False
    """Start unclaimed, for the warm pool: invisible to `list_sessions` until claimed."""
    origins: AllowedOrigins = NOBODY
    """Other sites whose pages may call the session's Jupyter (settings.allowed_origins)."""
    env: Mapping[str, str] = field(default_factory=dict)
    """BinderHub's variables (`bindery.providers.binder_env`), set in the session's environment."""
    network: SessionNetwork = field(default_factory=SessionNetwork)
    """The operator's CA bundle (mounted read-only) and package index, as its environment."""


@dataclass(frozen=True)
class Exit:
    """How a session's server ended, as its runtime saw it."""

    name: str
    node: str
    code: int | None = None
    """Its exit status; None when the runtime no longer knew (the session was removed first)."""
    oom_killed: bool = False
    """The runtime says the kernel's OOM killer ended it. Kubernetes says so reliably; podman
    only where its runtime and cgroups report it (not on this host's runc over cgroup v1, where
    an OOM-killed server looks like any other SIGKILLed one)."""
    disk_evicted: bool = False
    """The kubelet evicted it for writing more than its `ephemeral-storage` limit."""


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
    memory_reservation: int = 0
    warm: bool = False
    """Waiting in the warm pool, not yet claimed by a launch."""
    exit: Exit | None = None
    """How its server ended, once it has."""
    env: Mapping[str, str] = field(default_factory=dict)
    """The BinderHub variables it was started with."""


@dataclass(frozen=True)
class DiskUsage:
    """What one session has written beyond its image, as its runtime saw it."""

    name: str
    launch_id: str
    written: int | None
    """Bytes in the session's writable layer: home, /tmp, packages installed at run time. Files
    count by their apparent size, so a sparse file counts whole. None: not measurable this time
    (files kept vanishing under podman's walk)."""
    evicted: bool = False
    """The runtime already ended the session for its disk (the kubelet's eviction); `written`
    is then the limit it went over, a lower bound."""


# Kernel culling inside a session, as mybinder.org configures its sessions: a kernel idle for 10
# minutes is shut down even while a tab holds it open (cull_connected), never while it runs code
# (cull_busy stays off); checked every minute. A session's kernels share its memory limit, so
# this frees what a person left behind in notebooks they no longer use while they work in
# another; the culler stops whole sessions idle that long anyway. A culled kernel is no activity
# to Bindery's culler, so it does not lengthen the session.
KERNEL_CULLING = (
    "--MappingKernelManager.cull_idle_timeout=600",
    "--MappingKernelManager.cull_interval=60",
    "--MappingKernelManager.cull_connected=True",
)


def limits_environment(limits: Limits) -> dict[str, str]:
    """The session's limits as JupyterHub's spawners tell single-user servers (bytes and CPUs,
    each only when set): jupyter-resource-usage shows memory against MEM_LIMIT, and code in the
    session can size its work to them."""
    values = {
        "MEM_LIMIT": str(limits.memory_limit),
        "MEM_GUARANTEE": str(limits.memory_reservation),
        "CPU_LIMIT": f"{limits.cpus:g}",
    }
    return {name: value for name, value in values.items() if float(value)}


def session_environment(spec: SessionSpec) -> dict[str, str]:
    """The session's environment: BinderHub's variables, its limits, the operator's network
    settings and its Jupyter token; the last three are Bindery's alone to set."""
    env = {**spec.env, **limits_environment(spec.limits), **spec.network.environment()}
    env.pop("JUPYTER_TOKEN", None)  # last, so a list of variables (Kubernetes) ends with it
    return {**env, "JUPYTER_TOKEN": spec.token}


def jupyter_command(spec: SessionSpec) -> list[str]:
    """Jupyter under /user/<name>/, answering the origins allowed to embed Bindery; the token
    comes from JUPYTER_TOKEN, never the command line."""
    return [
        "jupyter",
        "lab",
        "--ip=0.0.0.0",
        f"--port={JUPYTER_PORT}",
        "--no-browser",
        f"--ServerApp.base_url=/user/{spec.name}/",
        "--ServerApp.allow_remote_access=True",
        "--ServerApp.root_dir=/home/jovyan",
        *KERNEL_CULLING,
        *spec.origins.jupyter_options(),
    ]


class Description(TypedDict):
    """What a session records about its launch, as `Session` fields."""

    launch_id: str
    image: str
    repo: str
    started: datetime
    env: dict[str, str]


def describe(spec: SessionSpec) -> dict[str, str]:
    """The launch id, image, repository, start time and BinderHub variables a runtime stores on
    a session."""
    return {
        LABEL_LAUNCH: spec.launch_id,
        LABEL_IMAGE: spec.image,
        LABEL_REPO: spec.repo,
        LABEL_STARTED: datetime.now(UTC).isoformat(),
        LABEL_ENV: json.dumps(dict(spec.env), sort_keys=True),
    }


def description(stored: Mapping[str, str]) -> Description:
    """Read back what `describe` stored (a session started by an older version may lack some)."""
    started = stored.get(LABEL_STARTED)
    return Description(
        launch_id=stored.get(LABEL_LAUNCH, ""),
        image=stored.get(LABEL_IMAGE, ""),
        repo=stored.get(LABEL_REPO, ""),
        started=datetime.fromisoformat(started) if started else datetime.now(UTC),
        env=json.loads(stored.get(LABEL_ENV) or "{}"),
    )


@dataclass(frozen=True)
class Survey:
    """Every session (warm ones included) on the nodes that answered, and those that did not."""

    sessions: list[Session]
    unreachable: dict[str, str] = field(default_factory=dict)
    """Node name -> why it could not be reached (its socket gone, its service dead): down. Its
    sessions are missing from `sessions`: unknown, not ended."""
    unanswered: dict[str, str] = field(default_factory=dict)
    """Node name -> why its listing did not come back within the lookup bound (busy or hung:
    only its ping tells which). Its sessions are missing from `sessions` too, unknown; the node
    is not down for it."""


NodeCheck = Callable[[], Awaitable[bool]]
"""Whether a node answers now (True), or why not (it raises)."""


class Runtime(Protocol):
    def node_names(self) -> list[str]: ...

    def node_checks(self) -> dict[str, NodeCheck]:
        """Each node's own liveness check, by node name, for a health page; empty where the
        nodes are not asked one by one (a Kubernetes cluster reports its nodes itself)."""
        ...

    async def node_memory(self, node: str) -> int:
        """Memory the node has for sessions, in bytes (reservations are placed within it)."""
        ...

    async def survey(self) -> Survey:
        """Every session on every node that answers, and which nodes did not answer (a
        Kubernetes cluster lists its pods in one call and evicts those of lost nodes itself)."""
        ...

    async def list_sessions(self) -> list[Session]:
        """Every session that belongs to a launch (unclaimed warm sessions excluded); raises
        if a node does not answer, for callers that need them all (the culler and the gateway
        rebuild their view from it once, at start)."""
        ...

    async def list_warm(self) -> list[Session]:
        """Warm sessions not yet claimed; raises, as `list_sessions`, if a node does not answer."""
        ...

    async def get(self, key: str, skip: Collection[str] = ()) -> Session | None:
        """The session started or claimed under `key` (a launch's session name), on any node
        that answers, all asked at once, but those in `skip` (known down). Raises `NodeTimedOut`
        when no node has it but one did not answer in time: it may be there."""
        ...

    async def has_image(self, node: str, image: str) -> bool: ...

    async def pull(self, node: str, image: str) -> None: ...

    async def start(self, node: str, spec: SessionSpec) -> Session: ...

    async def claim(self, warm: Session, key: str) -> Session:
        """Hand a warm session to the launch whose session name is `key`."""
        ...

    async def stop(self, name: str, skip: Collection[str] = ()) -> bool:
        """Stop and remove the session named `name` on the nodes that answer but those in `skip`
        (known down); False if none existed there. Raises `NodeTimedOut` if a node did not say
        in time whether it runs a copy."""
        ...

    async def disk_usage(self, node: str) -> list[DiskUsage]:
        """What the sessions on `node` have written (warm ones included), in one pass."""
        ...

    def exits(self) -> AsyncGenerator[Exit, None]:
        """Every session (warm ones included) whose server ends from now on, on any node, as
        the runtime reports it; Bindery's own stops too. Runs until closed, reconnecting after
        errors; an exit may be reported twice, and one that happens while the runtime cannot be
        reached may be lost (callers reconcile with `list_sessions` now and then)."""
        ...

    async def close(self) -> None: ...
