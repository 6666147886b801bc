"""Runtimes: where sessions run, behind one interface; `make_runtime` picks the one configured."""

from bindery.runtimes.base import (
    Limits,
    NodeCheck,
    NodeTimedOut,
    NodeUnreachable,
    Runtime,
    RuntimeError_,
    Session,
    SessionSpec,
    Survey,
)
from bindery.runtimes.kubernetes import KubernetesRuntime
from bindery.runtimes.podman import PodmanRuntime
from bindery.settings import CommonSettings


async def make_runtime(settings: CommonSettings) -> PodmanRuntime | KubernetesRuntime:
    """The runtime `BINDERY_RUNTIME` names, connected to its nodes."""
    if settings.runtime == "kubernetes":
        return await KubernetesRuntime.connect(
            settings.instance, settings.kubernetes_namespace, settings.kubernetes_node_selector
        )
    return PodmanRuntime(settings.instance, settings.node_urls())


__all__ = [
    "KubernetesRuntime",
    "Limits",
    "NodeCheck",
    "NodeTimedOut",
    "NodeUnreachable",
    "PodmanRuntime",
    "Runtime",
    "RuntimeError_",
    "Session",
    "SessionSpec",
    "Survey",
    "make_runtime",
]
