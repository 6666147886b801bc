"""Bindery's own Kubernetes manifests (deploy/kubernetes) are valid Kubernetes objects, and they
fit what the code expects: the settings exist, the scheduler may do what its runtime does, and the
network policies select the pods the runtime labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bindery.gateway.settings import GatewaySettings
from bindery.runtimes.base import JUPYTER_PORT, LABEL_SESSION
from bindery.scheduler.settings import SchedulerSettings
from tests.unit.runtimes.kube_api import schema_errors

DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "kubernetes"


def kustomization() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    return loaded


def resources() -> list[dict[str, Any]]:
    docs = []
    for name in kustomization()["resources"]:
        docs += [doc for doc in yaml.safe_load_all((DEPLOY / name).read_text()) if doc]
    return docs


def find(kind: str, name: str) -> dict[str, Any]:
    [found] = [d for d in resources() if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def test_the_kustomization_lists_every_manifest() -> None:
    listed = set(kustomization()["resources"])
    on_disk = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize(
    "resource", resources(), ids=lambda r: f"{r['kind']}/{r['metadata']['name']}"
)
def test_every_manifest_is_a_valid_kubernetes_object(resource: dict[str, Any]) -> None:
    assert schema_errors(resource) is None


def test_the_validation_catches_a_broken_manifest() -> None:
    deployment = find("Deployment", "scheduler")
    deployment["spec"]["template"]["spec"]["containers"][0]["envFrom"] = {"name": "oops"}
    assert schema_errors(deployment) is not None


def test_every_configured_setting_exists() -> None:
    known = {f"BINDERY_{name.upper()}" for name in SchedulerSettings.model_fields}
    known |= {f"BINDERY_{name.upper()}" for name in GatewaySettings.model_fields}
    configured = set(find("ConfigMap", "bindery-config")["data"])
    configured |= set(find("Secret", "bindery-secrets")["stringData"])
    assert configured - known == set()
    assert find("ConfigMap", "bindery-config")["data"]["BINDERY_RUNTIME"] == "kubernetes"


def test_the_scheduler_may_do_what_its_runtime_does() -> None:
    pods, config_maps = find("Role", "bindery-session-manager")["rules"]
    assert pods["resources"] == ["pods"]
    assert {"get", "list", "watch", "create", "patch", "delete"} <= set(pods["verbs"])
    # The operator's CA bundle goes to sessions as a ConfigMap the scheduler creates.
    assert config_maps["resources"] == ["configmaps"] and config_maps["verbs"] == ["create"]
    [nodes] = find("ClusterRole", "bindery-node-reader")["rules"]
    assert nodes["resources"] == ["nodes"] and {"get", "list"} <= set(nodes["verbs"])
    scheduler = find("Deployment", "scheduler")["spec"]["template"]["spec"]
    assert scheduler["serviceAccountName"] == "bindery-scheduler"


def test_session_pods_are_fenced_in_and_reach_only_public_addresses() -> None:
    namespace = find("ConfigMap", "bindery-config")["data"]["BINDERY_KUBERNETES_NAMESPACE"]
    policies = [d for d in resources() if d["kind"] == "NetworkPolicy"]
    assert {p["metadata"]["namespace"] for p in policies} == {namespace}
    deny = find("NetworkPolicy", "sessions-default-deny")["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    ingress = find("NetworkPolicy", "sessions-from-gateway-scheduler-and-culler")["spec"]
    assert ingress["podSelector"]["matchExpressions"][0]["key"] == LABEL_SESSION
    [peer] = ingress["ingress"][0]["from"]
    [components] = peer["podSelector"]["matchExpressions"]
    assert set(components["values"]) == {"gateway", "scheduler", "culler"}
    assert ingress["ingress"][0]["ports"] == [{"protocol": "TCP", "port": JUPYTER_PORT}]
    egress = find("NetworkPolicy", "sessions-to-dns-and-public-internet")["spec"]
    blocks = [
        peer["ipBlock"] for rule in egress["egress"] for peer in rule["to"] if "ipBlock" in peer
    ]
    excepted = {cidr for block in blocks for cidr in block["except"]}
    # Cluster addresses (broker, registry, services, pods) and the metadata address are excepted.
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= excepted
