"""Podman runtime: each node is a podman API service (Docker-compatible API v1.41).

In: session specs to start, names to stop. Out: containers labelled for Bindery, published on
127.0.0.1 only (a node in a container of its own: on the one address its URL's `?publish=`
names, see PodmanNode), limited in memory, CPU and pids, as uid 1000 with every capability
dropped, the operator's CA bundle bind-mounted read-only (bindery.sessionnetwork).

Disk: podman caps a container's writable layer only on XFS with project quotas (`StorageOpt
size`); on this host's ext4 the API refuses it ("--storage-opt is supported only for overlay
over xfs with 'pquota' mount option") and the remote CLI ignores it silently. So sessions start
without one and `disk_usage` measures what each wrote (`SizeRw`); the scheduler stops those over
`Limits.disk`. /dev/shm is podman's default 64 MB tmpfs, charged to the memory limit; /tmp is
the writable layer, measured like the rest.

Container names: `<instance>-<key>` for a session started or claimed by a launch (key = the
launch's session name, so a redelivered launch finds its container on whichever node it runs),
`<instance>-warm-<name>` for a warm session nobody has claimed yet. Claiming renames it.

Exits: each node's libpod event stream (`died` events of this instance's containers), read
from the time `exits` began and, after an error, again from the last event seen (podman keeps
its events in a file, so nothing in between is lost; repeats are harmless).

A node that does not answer (its socket gone, its service dead or hung) fails only what is
asked of it: `survey` covers the nodes that answer and names the others (`list_sessions` and
`list_warm`, which promise every session, fail instead), `get` and `stop` look on the others,
and its event stream is read again until it is back.

Time bounds: podman answers a lookup (ping, memory, a listing, an inspect, whether it has an
image) in milliseconds, so lookups get `NODE_LOOKUP_SECONDS` and a ping `NODE_PING_SECONDS`: a
hung node (its service stopped: connections accepted, never answered) costs a caller that
long, not the slow calls' bound. What asks several nodes asks them all at once. A lookup that
times out raises `NodeTimedOut` (the answer is unknown; the node may only be busy), a ping that
times out `NodeUnreachable` (down): only the ping, which podman answers without its storage
lock, tells a hung node from a busy one.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Collection
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import structlog

from bindery.runtimes.base import (
    JUPYTER_PORT,
    LABEL_INSTANCE,
    LABEL_LAUNCH,
    LABEL_SESSION,
    LABEL_WARM,
    DiskUsage,
    Exit,
    NodeCheck,
    NodeTimedOut,
    NodeUnreachable,
    RuntimeError_,
    Session,
    SessionSpec,
    Survey,
    describe,
    description,
    jupyter_command,
    session_environment,
)
from bindery.sessionnetwork import CA_PATH

API = "/v1.41"
LIBPOD_API = "/v4.0.0/libpod"
"""Podman's own API, for what the Docker-compatible one lacks: event filters by label."""
UNREACHABLE = (aiohttp.ClientConnectionError, OSError)
"""How a node that cannot be reached fails a request: its socket gone, nobody listening on it.
A node that answers with an error is not among them, nor one that answers late (`NodeTimedOut`;
TimeoutError is an OSError: it is told apart first)."""
NODE_PING_SECONDS = 5.0
"""Bound on a node's ping (`/_ping`), past which it is down. Podman answers it without taking
its storage lock: about 1 ms idle, and still within milliseconds while a multi-GB pull or a
build's commit keeps that lock busy, so a node that misses 5 s is hung or gone, not busy."""
NODE_LOOKUP_SECONDS = 10.0
"""Bound on a lookup (memory, container listings and inspects, whether it has an image): a
few ms idle; those that take the storage lock wait seconds behind a big pull or a build's commit
on the same storage. 10 s is met by a healthy node under that load and is what a hung node
costs a launch at most, once: by then its pings have failed and it is skipped."""
NODE_SLOW_CALL_SECONDS = 120.0
"""Bound on what really takes a node time: a pull, a container's creation, start, rename, stop
or removal, a listing with disk sizes (a walk of every session's files)."""
EVENTS_RECONNECT_DELAY = 1.0
"""Pause before reading a node's events again after the stream broke (node restarting)."""

log = structlog.get_logger("bindery.runtimes.podman")


class PodmanNode:
    """One podman API endpoint (unix socket) with its own image store.

    Sessions' ports are published where the services reach them: the node's loopback, for a
    node on the services' own machine; for a node in a container of its own (compose.yaml's
    `node`), the address its URL names with `?publish=HOST` (an address, or a name resolved when
    a session starts: the node's address on the network it shares with the gateway), which is
    then the only one of the node's addresses the session listens on."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        parts = urlsplit(url)
        if parts.scheme != "unix":
            raise ValueError(f"node {name}: only unix:// podman sockets are supported, got {url}")
        query = parse_qs(parts.query)
        unknown = set(query) - {"publish"}
        if unknown:
            raise ValueError(f"node {name}: unknown options {sorted(unknown)} in {url}")
        self.publish = query.get("publish", ["127.0.0.1"])[-1]
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=parts.path),
            timeout=aiohttp.ClientTimeout(total=NODE_SLOW_CALL_SECONDS),
        )

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        ok: tuple[int, ...] = (200,),
        within: float = NODE_SLOW_CALL_SECONDS,
    ) -> Any:
        url = f"http://node{API}{path}"
        bound = aiohttp.ClientTimeout(total=within)
        try:
            async with self._session.request(method, url, json=body, timeout=bound) as resp:
                text = await resp.text()
        except TimeoutError as exc:
            raise NodeTimedOut(self.name, within) from exc
        except UNREACHABLE as exc:
            raise NodeUnreachable(self.name, exc) from exc
        if resp.status not in ok:
            raise RuntimeError_(f"{self.name}: {method} {path} -> {resp.status}: {text[:500]}")
        return json.loads(text) if text.strip().startswith(("{", "[")) else None

    async def lookup(self, path: str, *, ok: tuple[int, ...] = (200,)) -> Any:
        """A GET that podman answers in milliseconds, within `NODE_LOOKUP_SECONDS`."""
        return await self.request("GET", path, ok=ok, within=NODE_LOOKUP_SECONDS)

    def raw(self, method: str, path: str) -> Any:
        return self._session.request(method, f"http://node{API}{path}")

    def stream(self, path: str) -> Any:
        """A libpod GET answered for as long as podman has more to say (an event stream)."""
        endless = aiohttp.ClientTimeout(total=None, sock_connect=10)
        return self._session.request("GET", f"http://node{LIBPOD_API}{path}", timeout=endless)

    async def ping(self) -> bool:
        """True, or `NodeUnreachable`: a node that does not answer its ping in time is down."""
        try:
            await self.request("GET", "/_ping", within=NODE_PING_SECONDS)
        except NodeTimedOut as exc:
            raise NodeUnreachable(self.name, exc) from exc
        return True

    async def publish_address(self) -> str:
        """The address a session's port is bound to: `publish`, resolved if it is a name."""
        found = await asyncio.get_running_loop().getaddrinfo(
            self.publish, None, family=socket.AF_INET, type=socket.SOCK_STREAM
        )
        return str(found[0][4][0])

    async def close(self) -> None:
        await self._session.close()


class PodmanRuntime:
    def __init__(self, instance: str, nodes: dict[str, str]) -> None:
        self._instance = instance
        self.nodes = {name: PodmanNode(name, url) for name, url in nodes.items()}

    def _container_name(self, key: str) -> str:
        return f"{self._instance}-{key}"

    def _warm_name(self, name: str) -> str:
        return f"{self._instance}-warm-{name}"

    def node_names(self) -> list[str]:
        return list(self.nodes)

    def node_checks(self) -> dict[str, NodeCheck]:
        return {name: node.ping for name, node in self.nodes.items()}

    async def node_memory(self, node: str) -> int:
        info = await self.nodes[node].lookup("/info")
        return int(info["MemTotal"])

    async def close(self) -> None:
        for node in self.nodes.values():
            await node.close()

    @property
    def _instance_label(self) -> str:
        return f"{LABEL_INSTANCE}={self._instance}"

    def _filters(self, *labels: str) -> str:
        return quote(json.dumps({"label": [self._instance_label, *labels]}))

    async def _find(self, *labels: str, skip: Collection[str] = ()) -> _Found:
        """Inspect every container of this instance carrying all `labels`, on every node but
        those in `skip`, all asked at once; and the nodes that did not answer, with why. One
        dead or hung node hides only its own."""
        nodes = [node for node in self.nodes.values() if node.name not in skip]
        filters = self._filters(*labels)
        answers = await asyncio.gather(
            *(self._inspect_all(node, filters) for node in nodes), return_exceptions=True
        )
        found = _Found()
        for node, answer in zip(nodes, answers, strict=True):
            if isinstance(answer, NodeUnreachable):
                found.unreachable[node.name] = str(answer)
            elif isinstance(answer, NodeTimedOut):
                found.unanswered[node.name] = str(answer)
            elif isinstance(answer, BaseException):
                raise answer
            else:
                found.containers += ((node, detail) for detail in answer)
        return found

    async def _inspect_all(self, node: PodmanNode, filters: str) -> list[dict[str, Any]]:
        listed = await node.lookup(f"/containers/json?all=true&filters={filters}")
        details = []
        for item in listed:
            try:
                details.append(await node.lookup(f"/containers/{item['Id']}/json"))
            except RuntimeError_ as exc:
                # Removed since the listing: podman answers 500 "no such container".
                if NO_SUCH_CONTAINER not in str(exc):
                    raise
        return details

    async def survey(self) -> Survey:
        found = await self._find()
        sessions = [
            _session_from_inspect(node.name, detail, self._warm_name)
            for node, detail in found.containers
        ]
        return Survey(sessions, found.unreachable, found.unanswered)

    async def _all(self) -> list[Session]:
        survey = await self.survey()
        if survey.unreachable or survey.unanswered:
            missing = {**survey.unreachable, **survey.unanswered}
            raise RuntimeError_(f"nodes not answering: {missing}")
        return survey.sessions

    async def list_sessions(self) -> list[Session]:
        return [session for session in await self._all() if not session.warm]

    async def list_warm(self) -> list[Session]:
        return [session for session in await self._all() if session.warm]

    async def get(self, key: str, skip: Collection[str] = ()) -> Session | None:
        path = f"/containers/{quote(self._container_name(key))}/json"
        nodes = [node for node in self.nodes.values() if node.name not in skip]
        answers = await asyncio.gather(
            *(node.lookup(path, ok=(200, 404)) for node in nodes), return_exceptions=True
        )
        late = None
        for node, answer in zip(nodes, answers, strict=True):
            if isinstance(answer, NodeUnreachable):
                log.warning("node.unreachable", node=node.name, error=str(answer))
            elif isinstance(answer, NodeTimedOut):
                late = late or answer
            elif isinstance(answer, BaseException):
                raise answer
            elif answer and "Id" in answer:
                return _session_from_inspect(node.name, answer, self._warm_name)
        if late is not None:
            raise late
        return None

    async def has_image(self, node: str, image: str) -> bool:
        result = await self.nodes[node].lookup(
            f"/images/{quote(image, safe='')}/json", ok=(200, 404)
        )
        return result is not None and "Id" in result

    async def pull(self, node: str, image: str) -> None:
        """Pull from the registry onto `node`; the compat API reports failures inside a 200 body."""
        repository, _, tag = image.rpartition(":")
        path = f"/images/create?fromImage={quote(repository, safe='')}&tag={quote(tag, safe='')}"
        target = self.nodes[node]
        try:
            async with target.raw("POST", path) as resp:
                text = await resp.text()
        except UNREACHABLE as exc:
            raise NodeUnreachable(node, exc) from exc
        if resp.status != 200 or '"error"' in text:
            raise RuntimeError_(f"{node}: pulling {image} failed: {text[-500:]}")

    async def start(self, node: str, spec: SessionSpec) -> Session:
        target = self.nodes[node]
        labels = {LABEL_INSTANCE: self._instance, LABEL_SESSION: spec.name, **describe(spec)}
        if spec.warm:
            labels[LABEL_WARM] = "true"
        body = {
            "Image": spec.image,
            "Cmd": jupyter_command(spec),
            "Env": [f"{k}={v}" for k, v in session_environment(spec).items()],
            "User": "1000",
            "Labels": labels,
            "ExposedPorts": {f"{JUPYTER_PORT}/tcp": {}},
            "HostConfig": {
                "Memory": spec.limits.memory_limit,
                "MemoryReservation": spec.limits.memory_reservation,
                # No swap on top: over the limit the kernel is killed instead of thrashing.
                "MemorySwap": spec.limits.memory_limit,
                "NanoCpus": int(spec.limits.cpus * 1e9),
                "PidsLimit": spec.limits.pids,
                "CapDrop": ["ALL"],
                "SecurityOpt": ["no-new-privileges"],
                "PortBindings": {
                    f"{JUPYTER_PORT}/tcp": [
                        {"HostIp": await target.publish_address(), "HostPort": ""}
                    ]
                },
                # Nodes are local sockets (PodmanNode), so the scheduler's path is the node's.
                "Binds": (
                    [f"{spec.network.ca_bundle}:{CA_PATH}:ro"] if spec.network.ca_bundle else []
                ),
            },
        }
        name = quote(self._warm_name(spec.name) if spec.warm else self._container_name(spec.name))
        # 409: a redelivered launch already created this container; starting it again is harmless.
        await target.request("POST", f"/containers/create?name={name}", body=body, ok=(201, 409))
        await target.request("POST", f"/containers/{name}/start", ok=(204, 304))
        detail = await target.request("GET", f"/containers/{name}/json")
        return _session_from_inspect(node, detail, self._warm_name)

    async def claim(self, warm: Session, key: str) -> Session:
        """Rename the warm container to the launch's key: one step, so it is claimed once."""
        node = self.nodes[warm.node]
        old, new = quote(self._warm_name(warm.name)), quote(self._container_name(key))
        await node.request("POST", f"/containers/{old}/rename?name={new}", ok=(204,))
        return replace(warm, warm=False)

    async def disk_usage(self, node: str) -> list[DiskUsage]:
        """One listing with sizes for all running sessions of the node. Podman walks each
        container's files for it, image included (0.17-0.35 s a session for a 28,000-file
        Jupyter image on this 2-core host), so callers keep it off the launch path.

        A file that vanishes mid-walk fails the whole listing (Python renaming a fresh .pyc
        does it: 1 listing in 24 while 5 Jupyters start), and so does a container removed
        mid-listing; then each session is measured on its own, so a busy one hides no other,
        and one that still races is unmeasured this time."""
        target = self.nodes[node]
        try:
            found = await target.request(
                "GET", f"/containers/json?all=false&size=true&filters={self._filters()}"
            )
        except RuntimeError_:
            return await self._disk_usage_one_by_one(target)
        return [
            _disk_usage(item.get("Labels") or {}, item.get("SizeRw") or 0)
            for item in found
            if LABEL_SESSION in (item.get("Labels") or {})
        ]

    async def _disk_usage_one_by_one(self, target: PodmanNode) -> list[DiskUsage]:
        listed = await target.request(
            "GET", f"/containers/json?all=false&filters={self._filters()}"
        )
        usages = []
        for item in listed:
            labels = item.get("Labels") or {}
            if LABEL_SESSION not in labels:
                continue
            try:
                written = await _size_rw(target, item["Id"])
            except _Gone:
                continue
            usages.append(_disk_usage(labels, written))
        return usages

    async def exits(self) -> AsyncGenerator[Exit, None]:
        found: asyncio.Queue[Exit] = asyncio.Queue()
        since = int(time.time())
        readers = [
            asyncio.create_task(self._read_exits(node, since, found.put))
            for node in self.nodes.values()
        ]
        try:
            while True:
                yield await found.get()
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)

    async def _read_exits(
        self, node: PodmanNode, since: int, found: Callable[[Exit], Awaitable[None]]
    ) -> None:
        """Follow `node`'s died events from `since` on, for good: a broken stream is read again
        from the second of the last event it gave. Said once per outage, not once a second."""
        filters = {"type": ["container"], "event": ["died"], "label": [self._instance_label]}
        query = f"stream=true&filters={quote(json.dumps(filters))}"
        broken = False
        while True:
            try:
                async with node.stream(f"/events?{query}&since={since}") as resp:
                    if resp.status != 200:
                        raise RuntimeError_(f"{node.name}: events -> {resp.status}")
                    if broken:
                        log.info("node.events_back", node=node.name)
                        broken = False
                    async for line in resp.content:
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        since = int(event.get("time") or since)
                        ended = await self._exit_of(node, event)
                        if ended is not None:
                            await found(ended)
            except (aiohttp.ClientError, OSError, RuntimeError_, ValueError) as exc:
                if not broken:
                    log.warning("node.events_broken", node=node.name, error=str(exc))
                broken = True
            await asyncio.sleep(EVENTS_RECONNECT_DELAY)

    async def _exit_of(self, node: PodmanNode, event: dict[str, Any]) -> Exit | None:
        """The session a died event is about and its exit status; whether the OOM killer ended
        it is only in the container's state, read while it still exists."""
        attributes = (event.get("Actor") or {}).get("Attributes") or {}
        name = attributes.get(LABEL_SESSION)
        if not name:
            return None
        code = attributes.get("containerExitCode")
        try:
            detail = await node.lookup(f"/containers/{event['id']}/json", ok=(200, 404))
        except RuntimeError_:
            detail = None  # removed since it died (podman answers 500 "no such container")
        state = (detail or {}).get("State") or {}
        return Exit(
            name,
            node.name,
            int(code) if code is not None else None,
            oom_killed=bool(state.get("OOMKilled")),
        )

    async def stop(self, name: str, skip: Collection[str] = ()) -> bool:
        """Stop and remove the session's container wherever it runs; False if none existed.
        A node that cannot be reached keeps its copy: the scheduler stops it once it is back."""
        found = await self._find(f"{LABEL_SESSION}={name}", skip=skip)
        if found.unanswered:
            raise NodeTimedOut(next(iter(found.unanswered)), NODE_LOOKUP_SECONDS)
        for node, detail in found.containers:
            container = detail["Id"]
            try:
                await node.request("POST", f"/containers/{container}/stop?t=2", ok=(204, 304, 404))
                await node.request(
                    "DELETE", f"/containers/{container}?force=true", ok=(200, 204, 404)
                )
            except RuntimeError_ as exc:
                # Removed since it was listed (another replica, the culler, its own --rm):
                # podman answers 500 "no such container", not 404. Stopped all the same.
                if NO_SUCH_CONTAINER not in str(exc):
                    raise
        return bool(found.containers)


NO_SUCH_CONTAINER = "no such container"
"""How podman fails a request about a container removed since it was listed (status 500)."""

VANISHED = "no such file or directory"
"""How podman fails a size when a file disappears between its walk and its lstat."""
SIZE_ATTEMPTS = 3


@dataclass
class _Found:
    """What `_find` saw: containers by node, and the nodes that did not answer, with why (as
    `Survey.unreachable` and `Survey.unanswered`)."""

    containers: list[tuple[PodmanNode, dict[str, Any]]] = field(default_factory=list)
    unreachable: dict[str, str] = field(default_factory=dict)
    unanswered: dict[str, str] = field(default_factory=dict)


class _Gone(Exception):
    """The container was removed since it was listed."""


async def _size_rw(target: PodmanNode, container: str) -> int | None:
    """The container's `SizeRw`; None if files vanished under every attempt's walk."""
    for _ in range(SIZE_ATTEMPTS):
        try:
            detail = await target.request(
                "GET", f"/containers/{container}/json?size=true", ok=(200, 404)
            )
        except RuntimeError_ as exc:
            if NO_SUCH_CONTAINER in str(exc):
                raise _Gone from exc
            if VANISHED not in str(exc):
                raise
            continue
        if not detail or "Id" not in detail:
            raise _Gone
        return int(detail.get("SizeRw") or 0)
    return None


def _disk_usage(labels: dict[str, str], size_rw: int | None) -> DiskUsage:
    return DiskUsage(
        name=labels[LABEL_SESSION],
        launch_id=labels.get(LABEL_LAUNCH, ""),
        written=None if size_rw is None else int(size_rw),
    )


def _session_from_inspect(
    node: str, detail: dict[str, Any], warm_name: Callable[[str], str]
) -> Session:
    labels = detail.get("Config", {}).get("Labels") or {}
    name = labels.get(LABEL_SESSION, "")
    ports = (detail.get("NetworkSettings") or {}).get("Ports") or {}
    bindings = ports.get(f"{JUPYTER_PORT}/tcp") or []
    target = ""
    if bindings:
        host = bindings[0].get("HostIp") or "127.0.0.1"
        target = f"http://{host}:{bindings[0]['HostPort']}"
    unclaimed = LABEL_WARM in labels and detail.get("Name", "").lstrip("/") == warm_name(name)
    state = detail.get("State") or {}
    # Podman says "stopped" from the process's end until its cleanup has run, then "exited".
    exited = state.get("Status") in ("stopped", "exited")
    return Session(
        name=name,
        node=node,
        **description(labels),
        target=target,
        running=bool(state.get("Running")),
        memory_reservation=int((detail.get("HostConfig") or {}).get("MemoryReservation") or 0),
        warm=unclaimed,
        exit=Exit(name, node, state.get("ExitCode"), bool(state.get("OOMKilled")))
        if exited
        else None,
    )
