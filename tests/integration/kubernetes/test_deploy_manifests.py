"""Bindery's own Kubernetes manifests (deploy/kubernetes) are a complete deployment of valid
Kubernetes objects, and they fit what the code expects.

In: the kustomization's resources, loaded as `kubectl apply -k` would apply them (its image
override applied); docs/configuration.md (generated from the settings classes), config/'s broker
and registry configuration, bindery.bus.access. Out: failures naming the object at fault.

What is checked: every object against the Kubernetes schemas (strictly); every workload has
probes, CPU and memory requests and limits, and runs as non-root under the restricted Pod
Security Standard, but for the builder, whose privileged exception is checked to be fenced in;
replicated workloads have a PodDisruptionBudget; every volume claim is mounted; every BINDERY_*
variable is a setting of the service it is given to; each service has its own broker user and
only the token holders the session secret; the network policies admit to the broker and the
registry exactly who needs them and keep sessions and builds to public addresses.
"""

from __future__ import annotations

import copy
import functools
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from bindery.bus.access import SERVICES, SESSION_SECRET_HOLDERS
from bindery.runtimes.base import JUPYTER_PORT, LABEL_SESSION
from tests.unit.runtimes.kube_api import K8S_VERSION, schema_errors

REPO = Path(__file__).resolve().parents[3]
DEPLOY = REPO / "deploy" / "kubernetes"
CONTAINERFILE = REPO / "deploy" / "Containerfile"
WORKLOAD_KINDS = ("Deployment", "StatefulSet")
COMPONENT = "app.kubernetes.io/component"
# The one workload allowed a privileged container (README.md, "How images are built").
BUILDER_NAMESPACE = "bindery-builds"
# Private, shared, loopback, link-local and "this network" ranges: the broker, the registry, the
# services, pods and the cloud metadata address are in them.
PRIVATE_RANGES = {
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "fc00::/7",
    "fe80::/10",
    "::1/128",
}

Resource = dict[str, Any]


def kustomization() -> Resource:
    loaded: Resource = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    return loaded


def resources() -> list[Resource]:
    """The objects `kubectl apply -k` applies (a copy each time: tests may change it)."""
    return copy.deepcopy(_rendered())


@functools.cache
def _rendered() -> list[Resource]:
    """Every listed file's objects, with the kustomization's `images:` applied."""
    renames = {i["name"]: f"{i['newName']}:{i['newTag']}" for i in kustomization()["images"]}
    docs = []
    for name in kustomization()["resources"]:
        docs += [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]
    for workload in (d for d in docs if d["kind"] in WORKLOAD_KINDS):
        for container in containers(workload):
            container["image"] = renames.get(container["image"], container["image"])
    return docs


def find(kind: str, name: str, namespace: str = "bindery") -> Resource:
    [found] = [
        d
        for d in resources()
        if d["kind"] == kind
        and d["metadata"]["name"] == name
        and d["metadata"].get("namespace") == namespace
    ]
    return found


def workloads() -> list[Resource]:
    return [d for d in resources() if d["kind"] in WORKLOAD_KINDS]


def pod_spec(workload: Resource) -> Resource:
    spec: Resource = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: Resource) -> list[Resource]:
    spec = pod_spec(workload)
    found: list[Resource] = spec.get("initContainers", []) + spec["containers"]
    return found


def component(workload: Resource) -> str:
    label: str = workload["spec"]["template"]["metadata"]["labels"][COMPONENT]
    return label


def label(resource: Resource) -> str:
    return f"{resource['kind']}/{resource['metadata']['name']}"


def bindery_services() -> list[Resource]:
    """The workloads that run a Bindery service (`python -m bindery.<service>`)."""
    return [w for w in workloads() if component(w) in SERVICES]


def env_names(container: Resource) -> set[str]:
    return {e["name"] for e in container.get("env", [])}


def config_maps_of(workload: Resource) -> Iterator[Resource]:
    namespace = workload["metadata"]["namespace"]
    for container in containers(workload):
        for source in container.get("envFrom", []):
            yield find("ConfigMap", source["configMapRef"]["name"], namespace)


def settings_by_service() -> dict[str, set[str]]:
    """Each service's BINDERY_* variables, from docs/configuration.md's sections
    (`## CapacitySettings (scheduler, gateway)`, `(every service)`)."""
    common: set[str] = set()
    by_service: dict[str, set[str]] = {service: set() for service in SERVICES}
    readers: list[set[str]] = []
    for line in (REPO / "docs" / "configuration.md").read_text().splitlines():
        if heading := re.match(r"^## \w+ \((.+)\)$", line):
            names = heading[1]
            readers = (
                [common]
                if names == "every service"
                else [by_service[s.strip()] for s in names.split(",")]
            )
        elif row := re.match(r"^\| `(BINDERY_\w+)` \|", line):
            for settings in readers:
                settings.add(row[1])
    return {service: settings | common for service, settings in by_service.items()}


def test_the_kustomization_lists_every_manifest() -> None:
    listed = set(kustomization()["resources"])
    on_disk = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


# The oldest Kubernetes targeted (the one the runtime's tests use) and the newest
# kubernetes-validate knows, which catches APIs removed since.
@pytest.mark.parametrize("version", [K8S_VERSION, kubernetes_validate.latest_version()])
@pytest.mark.parametrize("resource", resources(), ids=label)
def test_every_manifest_is_a_valid_kubernetes_object(resource: Resource, version: str) -> None:
    assert schema_errors(resource, version) is None


def test_the_validation_catches_a_broken_manifest() -> None:
    deployment = find("Deployment", "scheduler")
    deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"] = {"name": "oops"}
    assert schema_errors(deployment) is not None


def test_the_deployment_is_complete() -> None:
    """Every service, the broker and the registry run, and what must persist has a volume."""
    running = {component(w) for w in workloads()}
    assert running == set(SERVICES) | {"broker", "registry"}
    claims = {
        component(w): {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        for w in workloads()
    }
    assert claims["broker"] and claims["registry"] and claims["builder"] and claims["gateway"]
    archiver = find("Deployment", "archiver")
    [archive] = [v for v in pod_spec(archiver)["volumes"] if "persistentVolumeClaim" in v]
    find("PersistentVolumeClaim", archive["persistentVolumeClaim"]["claimName"])


@pytest.mark.parametrize("workload", workloads(), ids=label)
def test_every_container_has_probes_requests_and_limits(workload: Resource) -> None:
    for container in pod_spec(workload)["containers"]:
        assert {"readinessProbe", "livenessProbe"} <= set(container), container["name"]
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
        assert {"cpu", "memory"} <= set(resources["limits"]), container["name"]


@pytest.mark.parametrize(
    "workload",
    [w for w in workloads() if w["metadata"]["namespace"] != BUILDER_NAMESPACE],
    ids=label,
)
def test_every_workload_but_the_builder_runs_as_non_root_under_the_restricted_standard(
    workload: Resource,
) -> None:
    pod = pod_spec(workload)["securityContext"]
    assert pod["runAsNonRoot"] is True and pod["runAsUser"] != 0
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in containers(workload):
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["capabilities"]["drop"] == ["ALL"]
        assert not security.get("privileged") and security.get("runAsUser", 1) != 0
    namespace = find("Namespace", workload["metadata"]["namespace"], namespace=None)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_the_privileged_builder_is_fenced_in() -> None:
    """The builder is the only privileged pod: alone in its namespace (the only one whose Pod
    Security level admits it), on a node pool of its own, without an API token or the session
    secret, behind a default-deny network policy."""
    privileged = [
        w
        for w in workloads()
        if any(c.get("securityContext", {}).get("privileged") for c in containers(w))
    ]
    assert [label(w) for w in privileged] == ["StatefulSet/builder"]
    [builder] = privileged
    namespaces = [d for d in resources() if d["kind"] == "Namespace"]
    lenient = [
        n["metadata"]["name"]
        for n in namespaces
        if n["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] != "restricted"
    ]
    assert lenient == [BUILDER_NAMESPACE] == [builder["metadata"]["namespace"]]
    in_builds = [w for w in workloads() if w["metadata"]["namespace"] == BUILDER_NAMESPACE]
    assert [component(w) for w in in_builds] == ["builder"]
    pod = pod_spec(builder)
    assert pod["automountServiceAccountToken"] is False
    [toleration] = pod["tolerations"]
    assert pod["nodeSelector"] == {toleration["key"]: toleration["value"]}
    assert toleration["effect"] == "NoSchedule"
    assert all("BINDERY_SESSION_SECRET" not in env_names(c) for c in containers(builder))
    deny = find("NetworkPolicy", "builds-default-deny", BUILDER_NAMESPACE)["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    # Build steps are fenced inside the pod by scripts/isolation.sh, from its entrypoint.
    [container] = pod["containers"]
    # deploy/Containerfile copies the repository to its WORKDIR.
    [workdir] = re.findall(r"^WORKDIR (\S+)$", CONTAINERFILE.read_text(), re.MULTILINE)
    entrypoint = REPO / Path(container["command"][0]).relative_to(workdir)
    assert os.access(entrypoint, os.X_OK)
    assert "scripts/isolation.sh up" in entrypoint.read_text()


def test_the_builder_keeps_its_name_and_its_build_disk() -> None:
    builder = find("StatefulSet", "builder", BUILDER_NAMESPACE)
    [container] = pod_spec(builder)["containers"]
    [replica] = [e for e in container["env"] if e["name"] == "BINDERY_BUILDER_REPLICA"]
    assert replica["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    [disk] = builder["spec"]["volumeClaimTemplates"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == disk["metadata"]["name"]]
    # The build user's home in deploy/Containerfile: its image store and build contexts.
    assert f"--home-dir {mount['mountPath']} " in CONTAINERFILE.read_text()


def test_every_replicated_workload_has_exactly_one_disruption_budget() -> None:
    budgets = [d for d in resources() if d["kind"] == "PodDisruptionBudget"]
    for workload in workloads():
        labels = workload["spec"]["template"]["metadata"]["labels"]
        covering = [
            b
            for b in budgets
            if b["metadata"]["namespace"] == workload["metadata"]["namespace"]
            and b["spec"]["selector"]["matchLabels"].items() <= labels.items()
        ]
        expected = 1 if workload["spec"]["replicas"] > 1 else 0
        assert len(covering) == expected, label(workload)
        for budget in covering:
            assert budget["spec"]["minAvailable"] < workload["spec"]["replicas"]


@pytest.mark.parametrize("workload", workloads(), ids=label)
def test_every_volume_and_claim_is_mounted(workload: Resource) -> None:
    mounted = {m["name"] for c in containers(workload) for m in c.get("volumeMounts", [])}
    volumes = {v["name"] for v in pod_spec(workload).get("volumes", [])}
    templates = {t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])}
    assert volumes | templates == mounted


def test_every_claim_belongs_to_a_workload() -> None:
    claimed = {
        (w["metadata"]["namespace"], v["persistentVolumeClaim"]["claimName"])
        for w in workloads()
        for v in pod_spec(w).get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    claims = {
        (d["metadata"]["namespace"], d["metadata"]["name"])
        for d in resources()
        if d["kind"] == "PersistentVolumeClaim"
    }
    assert claims == claimed


def test_paths_the_services_write_are_on_their_volumes() -> None:
    for workload, setting in (
        (find("Deployment", "archiver"), "BINDERY_ARCHIVE_DIR"),
        (find("StatefulSet", "gateway"), "BINDERY_CLIENT_LOG_DIR"),
    ):
        [container] = pod_spec(workload)["containers"]
        [value] = [e["value"] for e in container["env"] if e["name"] == setting]
        assert value in {m["mountPath"] for m in container["volumeMounts"]}


@pytest.mark.parametrize("workload", bindery_services(), ids=label)
def test_every_variable_given_to_a_service_is_one_of_its_settings(workload: Resource) -> None:
    known = settings_by_service()[component(workload)]
    [container] = pod_spec(workload)["containers"]
    assert env_names(container) - known == set()


def test_every_shared_setting_is_read_by_a_service_it_is_given_to() -> None:
    """A ConfigMap serves every service of its namespace; each key must be some one's setting."""
    readers: dict[str, set[str]] = {}
    for workload in bindery_services():
        for config_map in config_maps_of(workload):
            name = config_map["metadata"]["name"]
            readers.setdefault(name, set()).update(settings_by_service()[component(workload)])
    for name, known in readers.items():
        namespace = "bindery-builds" if name == "bindery-builder-config" else "bindery"
        assert set(find("ConfigMap", name, namespace)["data"]) - known == set(), name
    assert find("ConfigMap", "bindery-config")["data"]["BINDERY_RUNTIME"] == "kubernetes"


def test_the_builder_and_the_services_agree_on_the_settings_both_have() -> None:
    services = find("ConfigMap", "bindery-config")["data"]
    builder = find("ConfigMap", "bindery-builder-config", BUILDER_NAMESPACE)["data"]
    shared = set(services) & set(builder)
    assert {"BINDERY_REGISTRY", "BINDERY_REGISTRY_SCHEME", "BINDERY_PROFILE"} <= shared
    assert {k: builder[k] for k in shared} == {k: services[k] for k in shared}


@pytest.mark.parametrize("workload", bindery_services(), ids=label)
def test_each_service_is_its_own_broker_user_and_only_token_holders_get_the_secret(
    workload: Resource,
) -> None:
    service = component(workload)
    [container] = pod_spec(workload)["containers"]
    refs = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
    assert refs["BINDERY_AMQP_URL"]["key"] == service
    amqp = find("Secret", refs["BINDERY_AMQP_URL"]["name"], workload["metadata"]["namespace"])
    assert f"//bindery-{service}:" in amqp["stringData"][service]
    assert ("BINDERY_SESSION_SECRET" in refs) == (service in SESSION_SECRET_HOLDERS)
    assert "envFrom" not in container or all("secretRef" not in s for s in container["envFrom"])


def test_every_broker_user_has_a_url() -> None:
    keys = {
        key
        for d in resources()
        if d["kind"] == "Secret" and d["metadata"]["name"] == "bindery-amqp"
        for key in d["stringData"]
    }
    assert keys == set(SERVICES)


def test_the_broker_and_registry_run_bindery_s_own_configuration() -> None:
    def conf(text: str) -> dict[str, str]:
        pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
        return {k.strip(): v.strip() for k, v in pairs if not k.lstrip().startswith("#")}

    broker = find("ConfigMap", "rabbitmq-config")["data"]
    on_a_host = conf((REPO / "config" / "rabbitmq.conf").read_text())
    assert conf(broker["90-bindery.conf"])["consumer_timeout"] == on_a_host["consumer_timeout"]
    assert "rabbitmq_consistent_hash_exchange" in broker["enabled_plugins"]
    registry = yaml.safe_load(find("ConfigMap", "registry-config")["data"]["config.yml"])
    host_registry = yaml.safe_load((REPO / "config" / "registry.yml").read_text())
    [mount] = [
        m["mountPath"]
        for m in pod_spec(find("StatefulSet", "registry"))["containers"][0]["volumeMounts"]
        if m["name"] == "images"
    ]
    assert registry["storage"]["filesystem"] == {"rootdirectory": mount}
    assert {k: v for k, v in registry["storage"].items() if k != "filesystem"} == {
        k: v for k, v in host_registry["storage"].items() if k != "filesystem"
    }


def test_services_select_the_pods_they_name() -> None:
    for service in (d for d in resources() if d["kind"] == "Service"):
        namespace = service["metadata"]["namespace"]
        selected = [
            w
            for w in workloads()
            if w["metadata"]["namespace"] == namespace
            and service["spec"]["selector"].items()
            <= w["spec"]["template"]["metadata"]["labels"].items()
        ]
        assert len(selected) == 1, label(service)
        ports = {p["name"] for c in pod_spec(selected[0])["containers"] for p in c["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= ports


def test_the_scheduler_may_do_what_its_runtime_does() -> None:
    pods, config_maps = find("Role", "bindery-session-manager", "bindery-sessions")["rules"]
    assert pods["resources"] == ["pods"]
    assert {"get", "list", "watch", "create", "patch", "delete"} <= set(pods["verbs"])
    # The operator's CA bundle goes to sessions as a ConfigMap the scheduler creates.
    assert config_maps["resources"] == ["configmaps"] and config_maps["verbs"] == ["create"]
    [nodes] = find("ClusterRole", "bindery-node-reader", None)["rules"]
    assert nodes["resources"] == ["nodes"] and {"get", "list"} <= set(nodes["verbs"])
    scheduler = find("Deployment", "scheduler")["spec"]["template"]["spec"]
    assert scheduler["serviceAccountName"] == "bindery-scheduler"


def public_only(policy: Resource) -> bool:
    """Every ipBlock the policy's egress allows excepts every private range of its family."""
    blocks = [p["ipBlock"] for r in policy["spec"]["egress"] for p in r["to"] if "ipBlock" in p]
    excepted = {cidr for block in blocks for cidr in block["except"]}
    return bool(blocks) and excepted >= PRIVATE_RANGES


def test_session_pods_are_fenced_in_and_reach_only_public_addresses() -> None:
    namespace = find("ConfigMap", "bindery-config")["data"]["BINDERY_KUBERNETES_NAMESPACE"]
    deny = find("NetworkPolicy", "sessions-default-deny", namespace)["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    ingress = find("NetworkPolicy", "sessions-from-gateway-scheduler-and-culler", namespace)
    assert ingress["spec"]["podSelector"]["matchExpressions"][0]["key"] == LABEL_SESSION
    [peer] = ingress["spec"]["ingress"][0]["from"]
    [components] = peer["podSelector"]["matchExpressions"]
    assert set(components["values"]) == {"gateway", "scheduler", "culler"}
    assert ingress["spec"]["ingress"][0]["ports"] == [{"protocol": "TCP", "port": JUPYTER_PORT}]
    assert public_only(find("NetworkPolicy", "sessions-to-dns-and-public-internet", namespace))


def allowed_components(policy: Resource) -> set[str]:
    """The components the policy's ingress admits, by their pods' labels."""
    found: set[str] = set()
    for peer in (p for rule in policy["spec"]["ingress"] for p in rule["from"]):
        selector = peer.get("podSelector", {})
        found |= {v for e in selector.get("matchExpressions", []) for v in e["values"]}
        if COMPONENT in selector.get("matchLabels", {}):
            found.add(selector["matchLabels"][COMPONENT])
    return found


def test_only_the_services_reach_the_broker_and_only_image_users_the_registry() -> None:
    deny = find("NetworkPolicy", "services-default-deny-ingress")["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress"]
    broker = find("NetworkPolicy", "broker-from-services-and-builder")
    assert allowed_components(broker) == set(SERVICES)
    registry = find("NetworkPolicy", "registry-from-builder-resolver-gateway-and-nodes")
    assert allowed_components(registry) == {"builder", "resolver", "gateway"}
    builds = "builder-to-dns-broker-registry-and-public-internet"
    assert public_only(find("NetworkPolicy", builds, BUILDER_NAMESPACE))
    # Every namespace a policy names is one of the deployment's.
    namespaces = {d["metadata"]["name"] for d in resources() if d["kind"] == "Namespace"}
    named = {
        p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for d in resources()
        if d["kind"] == "NetworkPolicy"
        for rule in d["spec"].get("ingress", []) + d["spec"].get("egress", [])
        for p in rule.get("from", rule.get("to", []))
        if "namespaceSelector" in p
    }
    assert named - namespaces == {"kube-system"}


def test_sessions_and_builds_get_the_ports_a_host_gives_them() -> None:
    """The egress ports to public addresses are scripts/isolation.sh's default on a host."""
    script = (REPO / "scripts" / "isolation.sh").read_text()
    [default] = re.findall(r"setting BINDERY_EGRESS_PORTS ([\d,]+)\)", script)
    host_ports = {int(p) for p in default.split(",")}
    for namespace, name in (
        ("bindery-sessions", "sessions-to-dns-and-public-internet"),
        (BUILDER_NAMESPACE, "builder-to-dns-broker-registry-and-public-internet"),
    ):
        [public] = [
            rule
            for rule in find("NetworkPolicy", name, namespace)["spec"]["egress"]
            if any("ipBlock" in peer for peer in rule["to"])
        ]
        assert {p["port"] for p in public["ports"]} == host_ports, name


def test_the_builder_s_memory_limit_holds_its_builds() -> None:
    """Two builds at their limit and the builder fit in the pod's memory, so a build runs into
    its own limit (and fails 'oom') before the pod is killed with every build in it."""
    settings = find("ConfigMap", "bindery-builder-config", BUILDER_NAMESPACE)["data"]
    builds = int(settings["BINDERY_MAX_CONCURRENT_BUILDS"]) * int(
        settings["BINDERY_BUILD_MEMORY_LIMIT"]
    )
    [container] = pod_spec(find("StatefulSet", "builder", BUILDER_NAMESPACE))["containers"]
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Gi")
    assert builds < int(limit.removesuffix("Gi")) * 1024**3
