"""Podman runtime: each node is a podman API service (Docker-compatible API v1.41).

In: session specs to start, names to stop. Out: containers labelled for Bindery, published on
127.0.0.1 only, limited in memory, CPU and pids, as uid 1000 with every capability dropped.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp

from bindery.runtimes.base import (
    JUPYTER_PORT,
    LABEL_IMAGE,
    LABEL_INSTANCE,
    LABEL_LAUNCH,
    LABEL_REPO,
    LABEL_SESSION,
    LABEL_STARTED,
    RuntimeError_,
    Session,
    SessionSpec,
)

API = "/v1.41"


def jupyter_command(name: str) -> list[str]:
    """Jupyter under /user/<name>/; the token comes from JUPYTER_TOKEN, never the command line."""
    return [
        "jupyter",
        "lab",
        "--ip=0.0.0.0",
        f"--port={JUPYTER_PORT}",
        "--no-browser",
        f"--ServerApp.base_url=/user/{name}/",
        "--ServerApp.allow_remote_access=True",
        "--ServerApp.root_dir=/home/jovyan",
    ]


class PodmanNode:
    """One podman API endpoint (unix socket) with its own image store."""

    def __init__(self, name: str, url: str) -> None:
        self.name = name
        parts = urlsplit(url)
        if parts.scheme != "unix":
            raise ValueError(f"node {name}: only unix:// podman sockets are supported, got {url}")
        self._session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=parts.path),
            timeout=aiohttp.ClientTimeout(total=120),
        )

    async def request(
        self, method: str, path: str, *, body: Any = None, ok: tuple[int, ...] = (200,)
    ) -> Any:
        async with self._session.request(method, f"http://node{API}{path}", json=body) as resp:
            text = await resp.text()
            if resp.status not in ok:
                raise RuntimeError_(f"{self.name}: {method} {path} -> {resp.status}: {text[:500]}")
            return json.loads(text) if text.strip().startswith(("{", "[")) else None

    def raw(self, method: str, path: str) -> Any:
        return self._session.request(method, f"http://node{API}{path}")

    async def close(self) -> None:
        await self._session.close()


class PodmanRuntime:
    def __init__(self, instance: str, nodes: dict[str, str]) -> None:
        self._instance = instance
        self.nodes = {name: PodmanNode(name, url) for name, url in nodes.items()}

    def _container_name(self, session: str) -> str:
        return f"{self._instance}-{session}"

    async def close(self) -> None:
        for node in self.nodes.values():
            await node.close()

    async def list_sessions(self) -> list[Session]:
        filters = quote(json.dumps({"label": [f"{LABEL_INSTANCE}={self._instance}"]}))
        sessions: list[Session] = []
        for node in self.nodes.values():
            for item in await node.request("GET", f"/containers/json?all=true&filters={filters}"):
                detail = await node.request("GET", f"/containers/{item['Id']}/json")
                sessions.append(_session_from_inspect(node.name, detail))
        return sessions

    async def has_image(self, node: str, image: str) -> bool:
        result = await self.nodes[node].request(
            "GET", f"/images/{quote(image, safe='')}/json", ok=(200, 404)
        )
        return result is not None and "Id" in result

    async def pull(self, node: str, image: str) -> None:
        """Pull from the registry onto `node`; the compat API reports failures inside a 200 body."""
        repository, _, tag = image.rpartition(":")
        path = f"/images/create?fromImage={quote(repository, safe='')}&tag={quote(tag, safe='')}"
        target = self.nodes[node]
        async with target.raw("POST", path) as resp:
            text = await resp.text()
        if resp.status != 200 or '"error"' in text:
            raise RuntimeError_(f"{node}: pulling {image} failed: {text[-500:]}")

    async def start(self, node: str, spec: SessionSpec) -> Session:
        target = self.nodes[node]
        labels = {
            LABEL_INSTANCE: self._instance,
            LABEL_SESSION: spec.name,
            LABEL_LAUNCH: spec.launch_id,
            LABEL_IMAGE: spec.image,
            LABEL_REPO: spec.repo,
            LABEL_STARTED: datetime.now(UTC).isoformat(),
        }
        body = {
            "Image": spec.image,
            "Cmd": jupyter_command(spec.name),
            "Env": [f"JUPYTER_TOKEN={spec.token}"],
            "User": "1000",
            "Labels": labels,
            "ExposedPorts": {f"{JUPYTER_PORT}/tcp": {}},
            "HostConfig": {
                "Memory": spec.limits.memory_limit,
                "MemoryReservation": spec.limits.memory_reservation,
                "NanoCpus": int(spec.limits.cpus * 1e9),
                "PidsLimit": spec.limits.pids,
                "CapDrop": ["ALL"],
                "SecurityOpt": ["no-new-privileges"],
                "PortBindings": {f"{JUPYTER_PORT}/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]},
            },
        }
        name = quote(self._container_name(spec.name))
        # 409: a redelivered launch already created this container; starting it again is harmless.
        await target.request("POST", f"/containers/create?name={name}", body=body, ok=(201, 409))
        await target.request("POST", f"/containers/{name}/start", ok=(204, 304))
        detail = await target.request("GET", f"/containers/{name}/json")
        return _session_from_inspect(node, detail)

    async def stop(self, name: str) -> bool:
        """Stop and remove the session's container wherever it runs; False if none existed."""
        container = quote(self._container_name(name))
        for node in self.nodes.values():
            found = await node.request("GET", f"/containers/{container}/json", ok=(200, 404))
            if found is None or "Id" not in found:
                continue
            await node.request("POST", f"/containers/{container}/stop?t=3", ok=(204, 304, 404))
            await node.request("DELETE", f"/containers/{container}?force=true", ok=(200, 204, 404))
            return True
        return False


def _session_from_inspect(node: str, detail: dict[str, Any]) -> Session:
    labels = detail.get("Config", {}).get("Labels") or {}
    ports = (detail.get("NetworkSettings") or {}).get("Ports") or {}
    bindings = ports.get(f"{JUPYTER_PORT}/tcp") or []
    target = ""
    if bindings:
        host = bindings[0].get("HostIp") or "127.0.0.1"
        target = f"http://{host}:{bindings[0]['HostPort']}"
    started = labels.get(LABEL_STARTED)
    return Session(
        name=labels.get(LABEL_SESSION, ""),
        node=node,
        launch_id=labels.get(LABEL_LAUNCH, ""),
        image=labels.get(LABEL_IMAGE, ""),
        repo=labels.get(LABEL_REPO, ""),
        started=datetime.fromisoformat(started) if started else datetime.now(UTC),
        target=target,
        running=bool((detail.get("State") or {}).get("Running")),
    )
