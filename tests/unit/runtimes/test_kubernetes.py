"""The Kubernetes runtime against a local API server that validates every body it receives
against the Kubernetes schemas: the pods it creates, where, with which limits and isolation,
how sessions are found, claimed, stopped and images pulled, and how their ends are watched."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import aiohttp
import kubernetes_validate
import pytest
from kubernetes_asyncio.config import kube_config

from bindery.runtimes import KubernetesRuntime, Limits, RuntimeError_, SessionSpec, make_runtime
from bindery.runtimes.base import Exit
from bindery.runtimes.kubernetes import parse_memory
from bindery.sessionnetwork import CA_PATH, SessionNetwork
from bindery.settings import CommonSettings
from tests.unit.runtimes.kube_api import K8S_VERSION, FakeKubernetes, node

GiB = 1024**3
IMAGE = "registry.example:5000/bindery/demo:abc123"
MiB = 1024**2
ENV = {"BINDER_REQUEST": "v2/gh/owner/demo/HEAD", "JUPYTER_TOKEN": "not this one"}
LIMITS = Limits(memory_limit=2 * GiB, memory_reservation=1 * GiB, cpus=1.0, pids=512, disk=10 * GiB)


def spec(name: str, *, warm: bool = False, limits: Limits = LIMITS) -> SessionSpec:
    return SessionSpec(
        name=name,
        image=IMAGE,
        launch_id=f"launch-{name}",
        token="t" * 64,
        repo="https://github.com/owner/demo",
        limits=limits,
        warm=warm,
        env=ENV,
    )


@pytest.fixture
async def api() -> AsyncIterator[FakeKubernetes]:
    fake = FakeKubernetes(
        nodes={
            "node-a": node("node-a", memory="16393852Ki", labels={"pool": "user"}),
            "node-b": node("node-b", memory="8Gi", images=(IMAGE,), labels={"pool": "user"}),
            "cordoned": node("cordoned", cordoned=True, labels={"pool": "user"}),
            "not-ready": node("not-ready", ready=False, labels={"pool": "user"}),
            "core": node("core"),
        }
    )
    await fake.start()
    yield fake
    await fake.close()
    assert fake.invalid == [], "the runtime sent a body the Kubernetes schemas reject"


@pytest.fixture
async def runtime(
    api: FakeKubernetes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[KubernetesRuntime]:
    # The scheduler's own path: BINDERY_RUNTIME=kubernetes and a kubeconfig, through make_runtime.
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(api.kubeconfig(tmp_path)))
    settings = CommonSettings(
        runtime="kubernetes",
        instance="test",
        kubernetes_namespace="sessions",
        kubernetes_node_selector="pool=user",
    )
    made = await make_runtime(settings)
    assert isinstance(made, KubernetesRuntime)
    made._poll_interval = 0.01
    yield made
    await made.close()


async def test_the_validator_rejects_a_broken_pod(api: FakeKubernetes) -> None:
    """The guard the other tests rely on: a body the schemas reject is refused and recorded."""
    broken = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "broken"},
        "spec": {
            "containers": [
                # `drop` must be a list, and `memory_limit` is no field of a container.
                {"name": "c", "image": IMAGE, "securityContext": {"capabilities": {"drop": "ALL"}}},
            ],
            "nodename": "node-a",
        },
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{api.url}/api/v1/namespaces/sessions/pods", json=broken) as resp,
    ):
        assert resp.status == 422
    assert api.pods == {} and len(api.invalid) == 1
    api.invalid.clear()


async def test_sessions_go_only_to_ready_schedulable_nodes_the_selector_names(
    runtime: KubernetesRuntime,
) -> None:
    assert sorted(runtime.node_names()) == ["node-a", "node-b"]


async def test_node_memory_and_images_come_from_the_node_status(
    runtime: KubernetesRuntime,
) -> None:
    assert await runtime.node_memory("node-a") == 16393852 * 1024
    assert await runtime.node_memory("node-b") == 8 * GiB
    assert await runtime.has_image("node-b", IMAGE)
    assert not await runtime.has_image("node-a", IMAGE)


async def test_a_session_is_a_limited_isolated_pod_on_the_chosen_node(
    runtime: KubernetesRuntime, api: FakeKubernetes
) -> None:
    session = await runtime.start("node-a", spec("demo-1"))
    [body] = api.created
    pod_spec = body["spec"]
    [container] = pod_spec["containers"]
    assert body["metadata"]["namespace"] == "sessions"
    assert pod_spec["nodeName"] == "node-a"
    assert parse_memory(container["resources"]["requests"]["memory"]) == 1 * GiB
    assert parse_memory(container["resources"]["limits"]["memory"]) == 2 * GiB
    assert container["resources"]["limits"]["cpu"] == "1000m"
    assert body["metadata"]["annotations"]["bindery.pids-limit"] == "512"
    # The disk limit is the kubelet's to enforce; the request stays small so admission, which
    # sums requests against the node's storage, never refuses what the scheduler placed.
    assert parse_memory(container["resources"]["limits"]["ephemeral-storage"]) == 10 * GiB
    assert parse_memory(container["resources"]["requests"]["ephemeral-storage"]) == 1 * GiB
    assert pod_spec["automountServiceAccountToken"] is False
    assert pod_spec["enableServiceLinks"] is False
    assert pod_spec["securityContext"]["runAsUser"] == 1000
    assert pod_spec["securityContext"]["runAsNonRoot"] is True
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert {"name": "BINDER_REQUEST", "value": "v2/gh/owner/demo/HEAD"} in container["env"]
    # As KubeSpawner tells single-user servers (jupyter-resource-usage reads MEM_LIMIT).
    env = {item["name"]: item["value"] for item in container["env"]}
    assert (env["MEM_LIMIT"], env["MEM_GUARANTEE"]) == (str(2 * GiB), str(1 * GiB))
    assert env["CPU_LIMIT"] == "1"
    # The launch's variables cannot replace the token: the last of a name wins.
    assert container["env"][-1] == {"name": "JUPYTER_TOKEN", "value": "t" * 64}
    assert "--ServerApp.base_url=/user/demo-1/" in container["args"]
    labels = body["metadata"]["labels"]
    assert labels["bindery.instance"] == "test" and labels["bindery.session"] == "demo-1"
    assert body["metadata"]["annotations"]["bindery.image"] == IMAGE
    # What the scheduler probes: Jupyter on the pod's IP.
    pod_ip = api.pods["test-demo-1"]["status"]["podIP"]
    assert session.target == f"http://{pod_ip}:8888"
    assert session.running and session.node == "node-a"
    assert session.env == ENV, "read back from the pod, for the warm pool"
    assert session.memory_reservation == 1 * GiB
    assert session.repo == "https://github.com/owner/demo"


async def test_sessions_get_the_ca_bundle_from_one_config_map_and_the_index_in_their_env(
    runtime: KubernetesRuntime, api: FakeKubernetes, tmp_path: Path
) -> None:
    bundle = tmp_path / "ca.crt"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    network = SessionNetwork(ca_bundle=str(bundle), index_url="https://mirror.example/simple")
    await runtime.start("node-a", replace(spec("demo-1"), network=network))
    await runtime.start("node-b", replace(spec("demo-2"), network=network))
    [(map_name, config_map)] = api.config_maps.items()
    assert config_map["data"] == {"ca-certificates.crt": bundle.read_text()}
    assert config_map["immutable"] is True
    for body in api.created:
        [container] = body["spec"]["containers"]
        env = {item["name"]: item["value"] for item in container["env"]}
        assert env["PIP_INDEX_URL"] == env["UV_DEFAULT_INDEX"] == "https://mirror.example/simple"
        assert env["PIP_CERT"] == env["SSL_CERT_FILE"] == env["CONDA_SSL_VERIFY"] == CA_PATH
        [volume] = body["spec"]["volumes"]
        assert volume["configMap"]["name"] == map_name
        [mount] = container["volumeMounts"]
        assert mount["readOnly"] is True and CA_PATH.startswith(mount["mountPath"] + "/")
    # A scheduler restarted (another runtime object) finds the ConfigMap made: 409 is fine.
    runtime._ca_maps.clear()
    await runtime.start("node-a", replace(spec("demo-3"), network=network))
    assert len(api.config_maps) == 1


async def test_without_a_ca_bundle_a_session_mounts_nothing(
    runtime: KubernetesRuntime, api: FakeKubernetes
) -> None:
    await runtime.start("node-a", spec("demo-1"))
    [body] = api.created
    assert "volumes" not in body["spec"] and api.config_maps == {}
    [container] = body["spec"]["containers"]
    names = [item["name"] for item in container["env"]]
    assert not any(n.endswith(("CERT", "CA_BUNDLE", "CERT_FILE", "CERTS")) for n in names), names
    assert "JUPYTER_TOKEN" in names


async def test_a_redelivered_start_finds_its_pod_instead_of_a_twin(
    runtime: KubernetesRuntime, api: FakeKubernetes
) -> None:
    first = await runtime.start("node-a", spec("demo-1"))
    again = await runtime.start("node-a", spec("demo-1"))
    assert len(api.created) == 1 and list(api.pods) == ["test-demo-1"]
    assert again.target == first.target
    found = await runtime.get("demo-1")
    assert found is not None and found.launch_id == "launch-demo-1"


async def test_warm_sessions_are_listed_apart_and_claimed_once(
    runtime: KubernetesRuntime, api: FakeKubernetes
) -> None:
    await runtime.start("node-a", spec("launched"))
    warm = await runtime.start("node-b", spec("pool-1", warm=True))
    assert warm.warm
    assert [s.name for s in await runtime.list_sessions()] == ["launched"]
    assert [s.name for s in await runtime.list_warm()] == ["pool-1"]
    survey = await runtime.survey()
    assert {s.name for s in survey.sessions} == {"launched", "pool-1"}
    assert survey.unreachable == {}, "the API server answers for every node"
    assert await runtime.get("key-1") is None

    claimed = await runtime.claim(warm, "key-1")
    assert not claimed.warm and claimed.name == "pool-1"
    found = await runtime.get("key-1")
    assert found is not None and found.name == "pool-1" and not found.warm
    assert await runtime.list_warm() == []
    with pytest.raises(RuntimeError_, match="claiming"):
        await runtime.claim(warm, "key-2")
    assert await runtime.get("key-2") is None


async def test_stop_deletes_the_pod_and_reports_whether_it_existed(
    runtime: KubernetesRuntime, api: FakeKubernetes
) -> None:
    await runtime.start("node-a", spec("demo-1"))
    assert await runtime.stop("demo-1")
    assert api.deleted == [("test-demo-1", "2")]
    assert await runtime.list_sessions() == []
    assert not await runtime.stop("demo-1")


async def test_pull_runs_a_pod_of_the_image_on_the_node_then_removes_it(
    runtime: KubernetesRuntime, api: FakeKubernetes
) -> None:
    await runtime.pull("node-a", IMAGE)
    [body] = api.created
    assert body["spec"]["nodeName"] == "node-a" and body["spec"]["containers"][0]["image"] == IMAGE
    assert body["metadata"]["labels"] == {"bindery.instance": "test", "bindery.pull": "true"}
    assert api.pods == {}, "the pull pod is deleted"
    assert await runtime.has_image("node-a", IMAGE)
    assert await runtime.list_sessions() == [], "a pull pod is no session"


async def test_a_pull_that_cannot_reach_the_registry_fails_with_the_reason(
    runtime: KubernetesRuntime, api: FakeKubernetes
) -> None:
    api.broken_registry.add("node-a")
    with pytest.raises(RuntimeError_, match="could not be pulled"):
        await runtime.pull("node-a", IMAGE)
    assert api.pods == {}
    with pytest.raises(RuntimeError_, match="ErrImagePull"):
        await runtime.start("node-a", spec("demo-1"))


@pytest.mark.parametrize(
    ("quantity", "expected"),
    [
        ("2147483648", 2 * GiB),
        ("16Gi", 16 * GiB),
        ("1500M", 1_500_000_000),
        ("1.5Gi", 3 * GiB // 2),
    ],
)
def test_memory_quantities(quantity: str, expected: int) -> None:
    assert parse_memory(quantity) == expected


def test_an_unknown_quantity_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError_, match="unexpected memory quantity"):
        parse_memory("2 gigs")


async def test_a_disk_limit_below_the_usual_request_is_also_the_request(
    runtime: KubernetesRuntime, api: FakeKubernetes
) -> None:
    small = replace(LIMITS, disk=50 * MiB)
    await runtime.start("node-a", spec("demo-1", limits=small))
    resources = api.created[0]["spec"]["containers"][0]["resources"]
    assert parse_memory(resources["limits"]["ephemeral-storage"]) == 50 * MiB
    assert parse_memory(resources["requests"]["ephemeral-storage"]) == 50 * MiB


POD_OVER = "Pod ephemeral local storage usage exceeds the total limit of containers 10737418240. "
CONTAINER_OVER = 'Container notebook exceeded its local ephemeral storage limit "10737418240". '
NODE_SHORT = "The node was low on resource: ephemeral-storage. Threshold quantity: 10Gi. "


async def test_disk_usage_reports_the_pods_the_kubelet_evicted_for_their_disk_limit(
    runtime: KubernetesRuntime, api: FakeKubernetes
) -> None:
    for name in ("pod-over", "container-over", "node-short", "running"):
        await runtime.start("node-a", spec(name))
    await runtime.start("node-b", spec("elsewhere"))
    api.evict("test-pod-over", POD_OVER)
    api.evict("test-container-over", CONTAINER_OVER)
    api.evict("test-node-short", NODE_SHORT)  # the node's shortage, not the session's limit
    api.evict("test-elsewhere", POD_OVER)

    usages = await runtime.disk_usage("node-a")
    assert sorted(u.name for u in usages) == ["container-over", "pod-over"]
    over = next(u for u in usages if u.name == "pod-over")
    assert over.evicted and over.written == 10 * GiB and over.launch_id == "launch-pod-over"
    assert [u.name for u in await runtime.disk_usage("node-b")] == ["elsewhere"]
    running = await runtime.list_sessions()
    assert not next(s for s in running if s.name == "pod-over").running


async def test_exits_come_from_a_watch_on_the_session_pods_with_the_kubelets_reason(
    runtime: KubernetesRuntime, api: FakeKubernetes
) -> None:
    for name in ("done-before", "shut", "oom", "over", "stopped", "running"):
        await runtime.start("node-a", spec(name))
    api.terminate("test-done-before", 0)  # ended before anyone watched: reported too
    await runtime.pull("node-b", IMAGE)  # a pull pod ends too: no session
    exits = runtime.exits()
    try:
        assert await asyncio.wait_for(anext(exits), 10) == Exit("done-before", "node-a", 0)
        api.terminate("test-shut", 0)
        api.terminate("test-oom", 137, "OOMKilled")
        api.evict("test-over", POD_OVER)
        await runtime.stop("stopped")  # deleted: gone, nothing ended to report
        api.terminate("test-shut", 0)  # a later change of an ended pod: reported once
        seen = [await asyncio.wait_for(anext(exits), 10) for _ in range(3)]
    finally:
        await exits.aclose()
    assert seen == [
        Exit("shut", "node-a", 0),
        Exit("oom", "node-a", 137, oom_killed=True),
        Exit("over", "node-a", 137, disk_evicted=True),
    ]
    listed = {s.name: s for s in await runtime.list_sessions()}
    assert listed["shut"].exit == Exit("shut", "node-a", 0) and listed["running"].exit is None
