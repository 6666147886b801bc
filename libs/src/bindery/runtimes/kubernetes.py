"""Kubernetes runtime (kubernetes-asyncio): sessions are pods, nodes are cluster nodes.

In: session specs to start on a node the scheduler chose, names to stop, images to pull.
Out: pods in one namespace, pinned to that node with `spec.nodeName` (the scheduler places by
image locality, so the Kubernetes scheduler is bypassed), labelled for Bindery, with memory and
CPU requests and limits, as uid 1000 with no privilege escalation and every capability dropped.

What maps where:
- memory reservation -> `requests.memory`, memory limit -> `limits.memory` (the kernel that goes
  over it is OOM-killed, Jupyter lives on), CPU -> `limits.cpu`. The CPU request is small on
  purpose: placement is by memory, and a request equal to the limit would let the kubelet admit
  only two sessions on a 2-core node.
- disk -> `limits.ephemeral-storage` (the container's writable layer and logs): the kubelet
  evicts a pod over it (its eviction manager checks about every 10 s). The request stays small
  (`EPHEMERAL_STORAGE_REQUEST`): a request defaults to the limit, and the kubelet admits a pod
  only while the requests fit the node's allocatable storage, so 10 GiB requests would cap a
  node at a few sessions the scheduler, which places by memory, would not know of. `disk_usage`
  reports the pods evicted for their limit so the scheduler removes them and says why. /dev/shm
  is the container runtime's default (64 MiB in containerd and CRI-O), charged to memory.
- pids: a pod has no pids field. The kubelet's `podPidsLimit` (KubeletConfiguration) enforces it
  for every pod of the node; deploy/ documents the setting, and the pod carries the limit the
  scheduler asked for in an annotation so an operator can compare.
- Ownership: `bindery.instance`, `bindery.session`, `bindery.warm` and `bindery.key` are labels
  (selectable); launch id, image, repository and start time are annotations, because label values
  cannot hold image references or URLs.
- Placement facts: a node's image list is `status.images` (the kubelet reports at most 50 images
  by default, `--node-status-max-images`), its room for sessions `status.allocatable.memory`.
- Readiness: the pod's IP, port 8888, is the session's target; the scheduler probes Jupyter there.
- The operator's CA bundle (bindery.sessionnetwork) -> a ConfigMap named after its content's hash
  (`<instance>-ca-<sha256 prefix>`, made once, never changed: a new bundle is a new ConfigMap),
  mounted read-only at /etc/bindery; the package index and the variables pointing at the bundle
  -> the container's env.

Exits: a watch on this instance's session pods reports each pod whose container terminated
(restartPolicy Never: the pod is over), with the kubelet's reason (OOMKilled, an eviction for
disk); a broken watch is started again, which lists every pod again (repeats are harmless).

Pod names are `<instance>-<session name>` and never change. A warm pod carries `bindery.key=""`;
claiming it is one JSON patch that tests the key is still empty and sets it to the launch's key,
so two schedulers cannot claim the same pod. A session started by a launch has its key from the
start, so a redelivered launch finds it by key.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
from collections.abc import AsyncGenerator, Callable, Collection
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
import structlog
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from bindery.runtimes.base import (
    JUPYTER_PORT,
    LABEL_IMAGE,
    LABEL_INSTANCE,
    LABEL_SESSION,
    LABEL_WARM,
    DiskUsage,
    Exit,
    NodeCheck,
    RuntimeError_,
    Session,
    SessionSpec,
    Survey,
    describe,
    description,
    jupyter_command,
    session_environment,
)
from bindery.sessionnetwork import CA_DIR, CA_FILE

log = structlog.get_logger("bindery.runtimes.kubernetes")

LABEL_KEY = "bindery.key"
"""The launch's session name (empty on an unclaimed warm pod): what `get` selects on."""

LABEL_PULL = "bindery.pull"
"""On the short-lived pods that pull an image onto a node."""

ANNOTATION_PIDS = "bindery.pids-limit"

SESSION_UID = 1000
CPU_REQUEST = "50m"
"""Enough for the kubelet's CPU accounting; the limit is what caps a busy session."""
EPHEMERAL_STORAGE_REQUEST = 1024**3
"""1 GiB, what a session usually writes (or the limit, if smaller). Under disk pressure the
kubelet evicts the pods furthest above their request first: the heaviest writers."""

_DISK_EVICTION = re.compile(r"ephemeral local storage|local ephemeral storage")
"""The kubelet's messages for a pod or container over its own `ephemeral-storage` limit (not
"The node was low on resource: ephemeral-storage", which is the node's shortage)."""

PULL_ERRORS = frozenset(
    {
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "ErrImageNeverPull",
        "RegistryUnavailable",
    }
)
"""Waiting reasons that mean the image will not arrive; anything else is still on its way."""

WATCH_RESTART_DELAY = 1.0
"""Pause before watching again after the watch failed (API server restarting)."""

_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIXES = {
    "": 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
}


def parse_memory(quantity: str) -> int:
    """A Kubernetes memory quantity (`16Gi`, `16393852Ki`, `2147483648`) in bytes."""
    match = _QUANTITY.match(quantity.strip())
    if match is None or match.group(2) not in _SUFFIXES:
        raise RuntimeError_(f"unexpected memory quantity {quantity!r}")
    return int(Decimal(match.group(1)) * _SUFFIXES[match.group(2)])


def _error(action: str, exc: ApiException) -> RuntimeError_:
    """The API's own explanation (its Status message), never the request body."""
    message = exc.reason or ""
    try:
        status = json.loads(exc.body or "{}")
    except ValueError:
        status = {}
    if isinstance(status, dict):
        message = status.get("message", message)
    return RuntimeError_(f"kubernetes: {action} failed ({exc.status}): {message}"[:500])


async def load_api_client() -> client.ApiClient:
    """In a pod: its service account. Elsewhere: the kubeconfig ($KUBECONFIG or ~/.kube/config)."""
    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        await config.load_kube_config(client_configuration=configuration)
    return client.ApiClient(configuration)


class KubernetesRuntime:
    def __init__(
        self,
        instance: str,
        api: client.ApiClient,
        namespace: str,
        nodes: list[str],
        *,
        start_timeout: float = 120.0,
        pull_timeout: float = 900.0,
        poll_interval: float = 0.2,
    ) -> None:
        self._instance = instance
        self._api = api
        self._core = client.CoreV1Api(api)
        self.namespace = namespace
        self._nodes = nodes
        self._start_timeout = start_timeout
        self._pull_timeout = pull_timeout
        self._poll_interval = poll_interval
        self._ca_maps: set[str] = set()
        """CA bundle ConfigMaps known to exist."""

    @classmethod
    async def connect(
        cls, instance: str, namespace: str, node_selector: str = "", **options: float
    ) -> KubernetesRuntime:
        """Load the cluster's credentials and take the nodes sessions may run on: those matching
        `node_selector` that are Ready and schedulable (a cordoned node gets no new sessions)."""
        api = await load_api_client()
        try:
            nodes = await client.CoreV1Api(api).list_node(label_selector=node_selector)
        except ApiException as exc:
            await api.close()
            raise _error("listing nodes", exc) from exc
        names = [node.metadata.name for node in nodes.items if _usable(node)]
        return cls(instance, api, namespace, names, **options)

    def node_names(self) -> list[str]:
        return list(self._nodes)

    def node_checks(self) -> dict[str, NodeCheck]:
        return {}

    async def close(self) -> None:
        await self._api.close()

    def _pod_name(self, name: str) -> str:
        return f"{self._instance}-{name}"

    async def _node(self, node: str) -> Any:
        try:
            return await self._core.read_node(node)
        except ApiException as exc:
            raise _error(f"reading node {node}", exc) from exc

    async def node_memory(self, node: str) -> int:
        allocatable = (await self._node(node)).status.allocatable or {}
        return parse_memory(allocatable.get("memory", "0"))

    async def has_image(self, node: str, image: str) -> bool:
        for held in (await self._node(node)).status.images or []:
            if image in (held.names or []):
                return True
        return False

    async def _list(self, selector: str, fields: str = "") -> list[Any]:
        options: dict[str, Any] = {"field_selector": fields} if fields else {}
        try:
            pods = await self._core.list_namespaced_pod(
                self.namespace, label_selector=selector, **options
            )
        except ApiException as exc:
            raise _error("listing pods", exc) from exc
        return list(pods.items)

    @property
    def _sessions_selector(self) -> str:
        return f"{LABEL_INSTANCE}={self._instance},{LABEL_SESSION}"

    async def _all(self) -> list[Session]:
        return [_session_from_pod(pod) for pod in await self._list(self._sessions_selector)]

    async def survey(self) -> Survey:
        """The API server answers for every node: a node it lost is its controllers' business
        (NotReady, its pods evicted after their toleration), so no node is unreachable here."""
        return Survey(await self._all())

    async def list_sessions(self) -> list[Session]:
        return [session for session in await self._all() if not session.warm]

    async def list_warm(self) -> list[Session]:
        return [session for session in await self._all() if session.warm]

    async def get(self, key: str, skip: Collection[str] = ()) -> Session | None:
        # The API server answers for every node: nothing to skip.
        pods = await self._list(f"{LABEL_INSTANCE}={self._instance},{LABEL_KEY}={key}")
        return _session_from_pod(pods[0]) if pods else None

    async def exits(self) -> AsyncGenerator[Exit, None]:
        # Pods whose end was reported: an ended pod stays until deleted, and may change meanwhile.
        reported: set[str] = set()
        while True:
            watcher = watch.Watch()
            try:
                pods = watcher.stream(
                    self._core.list_namespaced_pod,
                    self.namespace,
                    label_selector=self._sessions_selector,
                )
                async for change in pods:
                    pod = change["object"]
                    if change["type"] == "DELETED":
                        reported.discard(pod.metadata.uid)
                        continue
                    ended = _exit_of_pod(pod)
                    if ended is not None and pod.metadata.uid not in reported:
                        reported.add(pod.metadata.uid)
                        yield ended
            except (ApiException, aiohttp.ClientError, OSError, ValueError) as exc:
                log.warning("kubernetes.watch_broken", error=str(exc))
            finally:
                await watcher.close()
            await asyncio.sleep(WATCH_RESTART_DELAY)

    async def disk_usage(self, node: str) -> list[DiskUsage]:
        """The pods on `node` the kubelet evicted for going over their `ephemeral-storage`
        limit. Running pods are not measured here: the kubelet enforces their limit itself."""
        pods = await self._list(
            f"{LABEL_INSTANCE}={self._instance},{LABEL_SESSION}", f"spec.nodeName={node}"
        )
        usages = []
        for pod in pods:
            if not _evicted_for_disk(pod):
                continue
            limits = pod.spec.containers[0].resources.limits or {}
            usages.append(
                DiskUsage(
                    name=(pod.metadata.labels or {}).get(LABEL_SESSION, ""),
                    launch_id=description(pod.metadata.annotations or {})["launch_id"],
                    written=parse_memory(limits.get("ephemeral-storage", "0")),
                    evicted=True,
                )
            )
        return usages

    async def _read(self, name: str) -> Any:
        """The pod named `name`, or None once it is gone."""
        try:
            return await self._core.read_namespaced_pod(name, self.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise _error(f"reading pod {name}", exc) from exc

    async def _create_and_wait(
        self, body: dict[str, Any], within: float, done: Callable[[Any], bool]
    ) -> Any:
        """Create the pod (again, if an earlier one with its name is still being deleted) and
        poll it until `done(pod)`. A pod that already exists is the work of an earlier delivery of
        the same launch, or of another replica pulling the same image: it is waited for too."""
        name = body["metadata"]["name"]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        pod = None
        while True:
            if pod is None:
                try:
                    # The client sends a dict as it is: the body stays plain, validated JSON.
                    pod = await self._core.create_namespaced_pod(self.namespace, body)  # type: ignore[arg-type]
                except ApiException as exc:
                    if exc.status != 409:
                        raise _error(f"creating pod {name}", exc) from exc
                    pod = await self._read(name)
            if pod is not None and pod.metadata.deletion_timestamp is None:
                _raise_if_failed(pod)
                if done(pod):
                    return pod
            if loop.time() > deadline:
                raise RuntimeError_(f"pod {name} did not start within {within:.0f} s")
            # Polling, not a watch: one GET per pod per interval is cheap at Binder's launch rates.
            await asyncio.sleep(self._poll_interval)
            pod = await self._read(name)

    async def start(self, node: str, spec: SessionSpec) -> Session:
        ca_map = await self._ca_config_map(spec.network.ca_bundle)
        body = self._session_pod(node, spec, ca_map)
        pod = await self._create_and_wait(body, self._start_timeout, _serving)
        return _session_from_pod(pod)

    async def pull(self, node: str, image: str) -> None:
        """Kubernetes has no pull API: a pod of the image on `node`, whose command does nothing,
        makes the kubelet pull it; the pod is deleted as soon as its container was created."""
        digest = hashlib.sha256(f"{node}\0{image}".encode()).hexdigest()[:16]
        body = self._pod_body(
            name=f"{self._instance}-pull-{digest}",
            node=node,
            labels={LABEL_INSTANCE: self._instance, LABEL_PULL: "true"},
            annotations={LABEL_IMAGE: image},
            container={
                "name": "pull",
                "image": image,
                "command": ["true"],
                "resources": {
                    "requests": {"cpu": "10m", "memory": "16Mi"},
                    "limits": {"cpu": "100m", "memory": "64Mi"},
                },
            },
        )
        try:
            await self._create_and_wait(body, self._pull_timeout, _image_present)
        finally:
            await self._delete(body["metadata"]["name"], grace_seconds=0)

    async def claim(self, warm: Session, key: str) -> Session:
        """Set the warm pod's key in one JSON patch that first tests it is still unclaimed."""
        path = "/metadata/labels/" + LABEL_KEY.replace("~", "~0").replace("/", "~1")
        patch = [
            {"op": "test", "path": path, "value": ""},
            {"op": "replace", "path": path, "value": key},
        ]
        try:
            await self._core.patch_namespaced_pod(self._pod_name(warm.name), self.namespace, patch)
        except ApiException as exc:
            raise _error(f"claiming warm session {warm.name}", exc) from exc
        return replace(warm, warm=False)

    async def _delete(self, pod_name: str, grace_seconds: int) -> bool:
        try:
            await self._core.delete_namespaced_pod(
                pod_name, self.namespace, grace_period_seconds=grace_seconds
            )
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise _error(f"deleting pod {pod_name}", exc) from exc
        return True

    async def stop(self, name: str, skip: Collection[str] = ()) -> bool:
        # The API server deletes the pod whatever its node's state: nothing to skip. Two
        # seconds, as podman's stop: Jupyter has nothing to save, the user's files go anyway.
        return await self._delete(self._pod_name(name), grace_seconds=2)

    async def _ca_config_map(self, ca_bundle: str) -> str:
        """The ConfigMap holding the bundle at `ca_bundle` (made if missing); empty for none."""
        if not ca_bundle:
            return ""
        content = await asyncio.to_thread(Path(ca_bundle).read_bytes)
        name = f"{self._instance}-ca-{hashlib.sha256(content).hexdigest()[:16]}"
        if name in self._ca_maps:
            return name
        body = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": self.namespace},
            "immutable": True,
            "data": {CA_FILE: content.decode()},
        }
        try:
            await self._core.create_namespaced_config_map(self.namespace, body)  # type: ignore[arg-type]
        except ApiException as exc:
            if exc.status != 409:  # 409: made before (its name is its content)
                raise _error(f"creating config map {name}", exc) from exc
        self._ca_maps.add(name)
        return name

    def _session_pod(self, node: str, spec: SessionSpec, ca_map: str = "") -> dict[str, Any]:
        limits = spec.limits
        pod = self._pod_body(
            name=self._pod_name(spec.name),
            node=node,
            labels={
                LABEL_INSTANCE: self._instance,
                LABEL_SESSION: spec.name,
                LABEL_KEY: "" if spec.warm else spec.name,
                **({LABEL_WARM: "true"} if spec.warm else {}),
            },
            annotations={**describe(spec), ANNOTATION_PIDS: str(limits.pids)},
            container={
                "name": "notebook",
                "image": spec.image,
                # args, not command: repo2docker's entrypoint must still run.
                "args": jupyter_command(spec),
                "env": [
                    {"name": name, "value": value}
                    for name, value in session_environment(spec).items()
                ],
                "ports": [{"name": "jupyter", "containerPort": JUPYTER_PORT, "protocol": "TCP"}],
                "resources": {
                    "requests": {
                        "memory": str(limits.memory_reservation),
                        "cpu": CPU_REQUEST,
                        "ephemeral-storage": str(min(limits.disk, EPHEMERAL_STORAGE_REQUEST)),
                    },
                    "limits": {
                        "memory": str(limits.memory_limit),
                        "cpu": f"{round(limits.cpus * 1000)}m",
                        "ephemeral-storage": str(limits.disk),
                    },
                },
            },
        )
        if ca_map:
            volume = {"name": "ca", "configMap": {"name": ca_map, "defaultMode": 0o444}}
            pod["spec"]["volumes"] = [volume]
            pod["spec"]["containers"][0]["volumeMounts"] = [
                {"name": "ca", "mountPath": CA_DIR, "readOnly": True}
            ]
        return pod

    def _pod_body(
        self,
        *,
        name: str,
        node: str,
        labels: dict[str, str],
        annotations: dict[str, str],
        container: dict[str, Any],
    ) -> dict[str, Any]:
        container = {
            **container,
            "imagePullPolicy": "IfNotPresent",
            "securityContext": {
                "runAsUser": SESSION_UID,
                "runAsNonRoot": True,
                "allowPrivilegeEscalation": False,
                "privileged": False,
                "capabilities": {"drop": ["ALL"]},
            },
        }
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": labels,
                "annotations": annotations,
            },
            "spec": {
                "nodeName": node,
                # A session whose Jupyter exits is over; Jupyter itself restarts dead kernels.
                "restartPolicy": "Never",
                "automountServiceAccountToken": False,
                # No *_SERVICE_HOST variables: a session has no business knowing service addresses.
                "enableServiceLinks": False,
                "terminationGracePeriodSeconds": 2,
                "securityContext": {
                    "runAsUser": SESSION_UID,
                    "runAsNonRoot": True,
                    "seccompProfile": {"type": "RuntimeDefault"},
                },
                "containers": [container],
            },
        }


def _usable(node: Any) -> bool:
    if node.spec is not None and node.spec.unschedulable:
        return False
    conditions = (node.status.conditions if node.status else None) or []
    return any(c.type == "Ready" and c.status == "True" for c in conditions)


def _container_state(pod: Any) -> Any:
    statuses = (pod.status.container_statuses if pod.status else None) or []
    return statuses[0].state if statuses else None


def _raise_if_failed(pod: Any) -> None:
    phase = pod.status.phase if pod.status else None
    state = _container_state(pod)
    waiting = state.waiting if state is not None else None
    if waiting is not None and waiting.reason in PULL_ERRORS:
        raise RuntimeError_(
            f"pod {pod.metadata.name}: the image could not be pulled ({waiting.reason})"
        )
    if phase == "Failed":
        reason = pod.status.reason or pod.status.message or "failed"
        raise RuntimeError_(f"pod {pod.metadata.name} failed: {reason}")


def _evicted_for_disk(pod: Any) -> bool:
    status = pod.status
    return bool(
        status is not None
        and status.reason == "Evicted"
        and _DISK_EVICTION.search(status.message or "")
    )


def _exit_of_pod(pod: Any) -> Exit | None:
    """How the pod's session ended, if it has: its container terminated, or it was evicted."""
    state = _container_state(pod)
    terminated = state.terminated if state is not None else None
    evicted = _evicted_for_disk(pod)
    if terminated is None and not evicted:
        return None
    return Exit(
        name=(pod.metadata.labels or {}).get(LABEL_SESSION, ""),
        node=pod.spec.node_name or "",
        code=terminated.exit_code if terminated is not None else None,
        oom_killed=terminated is not None and terminated.reason == "OOMKilled",
        disk_evicted=evicted,
    )


def _serving(pod: Any) -> bool:
    return bool(pod.status and pod.status.phase == "Running" and pod.status.pod_ip)


def _image_present(pod: Any) -> bool:
    """The container exists (running, or already done): its image is on the node."""
    state = _container_state(pod)
    return state is not None and (state.running is not None or state.terminated is not None)


def _target(pod_ip: str | None) -> str:
    if not pod_ip:
        return ""
    host = f"[{pod_ip}]" if ":" in pod_ip else pod_ip
    return f"http://{host}:{JUPYTER_PORT}"


def _session_from_pod(pod: Any) -> Session:
    labels = pod.metadata.labels or {}
    annotations = pod.metadata.annotations or {}
    requests = pod.spec.containers[0].resources.requests or {}
    status = pod.status
    return Session(
        name=labels.get(LABEL_SESSION, ""),
        node=pod.spec.node_name or "",
        **description(annotations),
        target=_target(status.pod_ip if status else None),
        running=_serving(pod) and pod.metadata.deletion_timestamp is None,
        memory_reservation=parse_memory(requests["memory"]) if "memory" in requests else 0,
        warm=LABEL_WARM in labels and not labels.get(LABEL_KEY),
        exit=_exit_of_pod(pod),
    )
