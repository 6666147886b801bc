"""A local stand-in for the Kubernetes API: the pod, node and ConfigMap endpoints Bindery's
runtime uses.

Every pod body it receives (created, or after a patch) is validated against the Kubernetes
schemas with kubernetes-validate, strictly (unknown fields are errors). An invalid body gets the
422 a real API server answers and is kept in `invalid`, which the fixtures assert is empty.

A tiny "kubelet" gives created pods a phase, an IP and container states: session pods run (with
a pod IP from `ip_for`, where a test may serve a fake Jupyter), pull pods complete and add their
image to the node's `status.images`, unless the node's registry is marked broken. A test ends a
pod's container with `terminate` or evicts it with `evict`.

Pods can be watched (`?watch=true`): every matching pod as ADDED, then every change as it
happens (ADDED, MODIFIED, DELETED), one JSON object a line, as the API server streams them.
"""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import kubernetes_validate
from aiohttp import web

K8S_VERSION = "1.30"
"""The Kubernetes minor whose schemas requests must satisfy: an old-enough cluster to target."""


def schema_errors(resource: dict[str, Any], version: str = K8S_VERSION) -> str | None:
    """Why `resource` is not a valid Kubernetes object of that version, or None if it is."""
    try:
        kubernetes_validate.validate(resource, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{'.'.join(str(p) for p in exc.path)}: {exc.message}"
    return None


def node(
    name: str,
    *,
    memory: str = "8Gi",
    images: tuple[str, ...] = (),
    ready: bool = True,
    cordoned: bool = False,
    labels: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **(labels or {})}},
        "spec": {"unschedulable": True} if cordoned else {},
        "status": {
            "allocatable": {"cpu": "2", "memory": memory, "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "images": [{"names": [image], "sizeBytes": 1000} for image in images],
        },
    }


def _matches(labels: dict[str, str], selector: str) -> bool:
    """Equality (`k=v`) and existence (`k`) requirements, comma-separated: what Bindery sends."""
    for requirement in filter(None, selector.split(",")):
        key, has_value, value = requirement.partition("=")
        if key not in labels or (has_value and labels[key] != value):
            return False
    return True


def _status(code: int, reason: str, message: str) -> web.Response:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason}
    return web.json_response({**body, "message": message, "code": code}, status=code)


@dataclass
class FakeKubernetes:
    nodes: dict[str, dict[str, Any]]
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    config_maps: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: list[dict[str, Any]] = field(default_factory=list)
    """Every pod body accepted by a create, in order."""
    deleted: list[tuple[str, str | None]] = field(default_factory=list)
    """(pod name, gracePeriodSeconds) of every delete."""
    invalid: list[str] = field(default_factory=list)
    broken_registry: set[str] = field(default_factory=set)
    """Nodes whose image pulls fail."""
    ip_for: Callable[[int], str] = lambda n: f"10.0.0.{n}"
    url: str = ""
    _counter: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _runner: web.AppRunner | None = None
    _watchers: list[asyncio.Queue[tuple[str, dict[str, Any]] | None]] = field(default_factory=list)

    async def start(self) -> None:
        app = web.Application()
        pods = "/api/v1/namespaces/{namespace}/pods"
        app.router.add_get("/api/v1/nodes", self.list_nodes)
        app.router.add_get("/api/v1/nodes/{name}", self.read_node)
        app.router.add_get(pods, self.list_pods)
        app.router.add_post(pods, self.create_pod)
        app.router.add_get(pods + "/{name}", self.read_pod)
        app.router.add_patch(pods + "/{name}", self.patch_pod)
        app.router.add_delete(pods + "/{name}", self.delete_pod)
        app.router.add_post("/api/v1/namespaces/{namespace}/configmaps", self.create_config_map)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        for watcher in self._watchers:
            watcher.put_nowait(None)  # an open watch would hold the server's cleanup up
        if self._runner is not None:
            await self._runner.cleanup()

    def kubeconfig(self, directory: Path) -> Path:
        path = directory / "kubeconfig"
        path.write_text(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\n"
            f"clusters: [{{name: fake, cluster: {{server: '{self.url}'}}}}]\n"
            "users: [{name: bindery, user: {token: not-a-secret}}]\n"
            "contexts: [{name: fake, context: {cluster: fake, user: bindery}}]\n"
        )
        return path

    # --- nodes -----------------------------------------------------------------------------

    async def list_nodes(self, request: web.Request) -> web.Response:
        selector = request.query.get("labelSelector", "")
        items = [n for n in self.nodes.values() if _matches(n["metadata"]["labels"], selector)]
        return web.json_response({"apiVersion": "v1", "kind": "NodeList", "items": items})

    async def read_node(self, request: web.Request) -> web.Response:
        found = self.nodes.get(request.match_info["name"])
        if found is None:
            return _status(404, "NotFound", f'nodes "{request.match_info["name"]}" not found')
        return web.json_response(found)

    # --- pods ------------------------------------------------------------------------------

    async def list_pods(self, request: web.Request) -> web.StreamResponse:
        selector = request.query.get("labelSelector", "")
        fields = request.query.get("fieldSelector", "")

        def selected(pod: dict[str, Any]) -> bool:
            return _matches(pod["metadata"].get("labels", {}), selector) and _matches(
                {"spec.nodeName": pod["spec"]["nodeName"]}, fields
            )

        if request.query.get("watch", "").lower() == "true":
            return await self._watch(request, selected)
        items = [p for p in self.pods.values() if selected(p)]
        return web.json_response({"apiVersion": "v1", "kind": "PodList", "items": items})

    async def _watch(
        self, request: web.Request, selected: Callable[[dict[str, Any]], bool]
    ) -> web.StreamResponse:
        changes: asyncio.Queue[tuple[str, dict[str, Any]] | None] = asyncio.Queue()
        for pod in self.pods.values():
            changes.put_nowait(("ADDED", copy.deepcopy(pod)))
        self._watchers.append(changes)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        try:
            while (change := await changes.get()) is not None:
                kind, pod = change
                if selected(pod):
                    line = json.dumps({"type": kind, "object": pod}) + "\n"
                    await response.write(line.encode())
        finally:
            self._watchers.remove(changes)
        return response

    def _changed(self, kind: str, pod: dict[str, Any]) -> None:
        for watcher in self._watchers:
            watcher.put_nowait((kind, copy.deepcopy(pod)))

    def evict(self, name: str, message: str) -> None:
        """What the kubelet leaves of a pod it evicted: Failed, reason Evicted, its message."""
        status = self.pods[name]["status"]
        status.update(phase="Failed", reason="Evicted", message=message)
        status.pop("podIP", None)
        state = {"terminated": {"exitCode": 137, "reason": "ContainerStatusUnknown"}}
        status["containerStatuses"][0].update(ready=False, state=state)
        self._changed("MODIFIED", self.pods[name])

    def terminate(self, name: str, exit_code: int, reason: str = "") -> None:
        """The pod's container exits (restartPolicy Never: the pod is over): Succeeded for
        status 0, else Failed; `reason` as the kubelet gives it (Completed, Error, OOMKilled)."""
        status = self.pods[name]["status"]
        status["phase"] = "Succeeded" if exit_code == 0 else "Failed"
        status.pop("podIP", None)
        terminated = {
            "exitCode": exit_code,
            "reason": reason or ("Completed" if exit_code == 0 else "Error"),
        }
        status["containerStatuses"][0].update(ready=False, state={"terminated": terminated})
        self._changed("MODIFIED", self.pods[name])

    async def create_pod(self, request: web.Request) -> web.Response:
        body = await request.json()
        errors = schema_errors(body)
        if errors is not None:
            self.invalid.append(errors)
            return _status(422, "Invalid", f"Pod is invalid: {errors}")
        name = body["metadata"]["name"]
        if name in self.pods:
            return _status(409, "AlreadyExists", f'pods "{name}" already exists')
        if body["metadata"].get("namespace") not in (None, request.match_info["namespace"]):
            return _status(400, "BadRequest", "the namespace of the object does not match")
        self.created.append(copy.deepcopy(body))
        pod = copy.deepcopy(body)
        pod["metadata"]["creationTimestamp"] = datetime.now(UTC).isoformat()
        pod["metadata"]["uid"] = f"uid-{name}-{len(self.created)}"
        pod["status"] = self._kubelet(pod)
        self.pods[name] = pod
        self._changed("ADDED", pod)
        return web.json_response(pod, status=201)

    async def create_config_map(self, request: web.Request) -> web.Response:
        body = await request.json()
        errors = schema_errors(body)
        if errors is not None:
            self.invalid.append(errors)
            return _status(422, "Invalid", f"ConfigMap is invalid: {errors}")
        name = body["metadata"]["name"]
        if name in self.config_maps:
            return _status(409, "AlreadyExists", f'configmaps "{name}" already exists')
        self.config_maps[name] = copy.deepcopy(body)
        return web.json_response(body, status=201)

    def _kubelet(self, pod: dict[str, Any]) -> dict[str, Any]:
        node_name = pod["spec"]["nodeName"]
        container = pod["spec"]["containers"][0]
        image = container["image"]
        state: dict[str, Any]
        if node_name in self.broken_registry:
            state = {"waiting": {"reason": "ErrImagePull", "message": "connection refused"}}
            phase = "Pending"
        elif pod["spec"]["restartPolicy"] == "Never" and container.get("command") == ["true"]:
            state = {"terminated": {"exitCode": 0, "reason": "Completed"}}
            phase = "Succeeded"
        else:
            state = {"running": {"startedAt": datetime.now(UTC).isoformat()}}
            phase = "Running"
        if "waiting" not in state:
            held = self.nodes[node_name]["status"]["images"]
            if not any(image in entry["names"] for entry in held):
                held.append({"names": [image], "sizeBytes": 1000})
        status: dict[str, Any] = {
            "phase": phase,
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": image,
                    "imageID": "" if "waiting" in state else f"{image}@sha256:{'0' * 64}",
                    "ready": phase == "Running",
                    "restartCount": 0,
                    "state": state,
                }
            ],
        }
        if phase == "Running":
            status["podIP"] = self.ip_for(next(self._counter))
        return status

    def _missing(self, request: web.Request) -> web.Response:
        return _status(404, "NotFound", f'pods "{request.match_info["name"]}" not found')

    async def read_pod(self, request: web.Request) -> web.Response:
        pod = self.pods.get(request.match_info["name"])
        return self._missing(request) if pod is None else web.json_response(pod)

    async def patch_pod(self, request: web.Request) -> web.Response:
        pod = self.pods.get(request.match_info["name"])
        if pod is None:
            return self._missing(request)
        if request.content_type != "application/json-patch+json":
            return _status(415, "UnsupportedMediaType", f"unexpected {request.content_type}")
        patched = copy.deepcopy(pod)
        for op in await request.json():
            *parents, key = op["path"].strip("/").split("/")
            key = key.replace("~1", "/").replace("~0", "~")
            target = patched
            for part in parents:
                target = target[part]
            if op["op"] == "test" and target.get(key) != op["value"]:
                return _status(422, "Invalid", f"the test of {op['path']} failed")
            if op["op"] in ("replace", "add"):
                target[key] = op["value"]
        errors = schema_errors({k: v for k, v in patched.items() if k != "status"})
        if errors is not None:
            self.invalid.append(errors)
            return _status(422, "Invalid", f"Pod is invalid: {errors}")
        self.pods[pod["metadata"]["name"]] = patched
        self._changed("MODIFIED", patched)
        return web.json_response(patched)

    async def delete_pod(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        pod = self.pods.pop(name, None)
        if pod is None:
            return self._missing(request)
        self.deleted.append((name, request.query.get("gracePeriodSeconds")))
        self._changed("DELETED", pod)
        return web.json_response(pod)
