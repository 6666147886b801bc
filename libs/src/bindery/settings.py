"""Settings every service shares, read from `BINDERY_*` environment variables.

Each service's own settings subclass `CommonSettings`; the docstring of a field says why its
default is what it is.
"""

from __future__ import annotations

import os
from enum import StrEnum
from typing import Annotated, Literal

import structlog
from pydantic import AfterValidator, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from bindery.origins import AllowedOrigins
from bindery.sessionnetwork import SessionNetwork, check_index_url, has_credentials

log = structlog.get_logger("bindery.settings")


class Profile(StrEnum):
    """`local` (what `make up` runs) accepts repositories on this machine's disk and loopback."""

    LOCAL = "local"
    PRODUCTION = "production"


class CommonSettings(BaseSettings):
    # Field docstrings become the fields' descriptions: scripts/settings_reference.py writes
    # them into docs/configuration.md.
    model_config = SettingsConfigDict(
        env_prefix="BINDERY_", extra="ignore", use_attribute_docstrings=True
    )

    profile: Profile = Profile.PRODUCTION
    """Production refuses local paths and loopback git servers; `make up` opts into `local`."""

    instance: str = Field(default="bindery", pattern=r"^[a-z0-9][a-z0-9-]{0,30}$")
    """Labels every session container, so two stacks (the one `make up` runs and the tests') can
    share one podman without seeing each other's sessions."""

    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    """The broker and virtual host, as this service's own RabbitMQ user, allowed only what the
    service does (bindery.bus.access; `make up` writes each one's URL in .bindery/amqp/)."""

    publish_retry_seconds: float = Field(default=300.0, gt=0)
    """How long a publish that lost its connection keeps trying again once the connection is
    back. A broker restart takes about 15 s here (8 s to start, aio-pika's 5 s between
    reconnects); a broker pod moved to another Kubernetes node, a minute or two. The handler
    waiting meanwhile holds its delivery, which costs nothing: the broker has requeued it. Past
    this, the outage is one an operator must see: the publish fails and its handler with it."""

    registry: str = "127.0.0.1:5000"
    """The local OCI registry; bound to loopback so sessions cannot reach it."""

    registry_scheme: str = "http"
    """`http` for the registry on this machine's loopback, which nothing else can reach;
    `https` for one elsewhere."""

    nodes: str = "node-1=unix:///run/bindery/node-1.sock"
    """Comma-separated `name=podman API URL`; each node has its own image store."""

    runtime: Literal["podman", "kubernetes"] = "podman"
    """Where sessions run. Podman needs nothing but its sockets, so it is the default; Kubernetes
    uses the in-cluster service account, or the kubeconfig outside a cluster."""

    kubernetes_namespace: str = "bindery-sessions"
    """Sessions get a namespace of their own, so NetworkPolicies can fence them off as a whole."""

    kubernetes_node_selector: str = ""
    """Label selector for the nodes sessions may run on (empty: every Ready, schedulable node),
    e.g. `hub.jupyter.org/node-purpose=user` to keep them off the services' nodes."""

    session_secret: str = Field(default="", repr=False)
    """Session tokens are HMACs of the session name with this secret, so no token ever travels on
    the broker or sits in a container label. Empty means: refuse to start (see `require_secret`)."""

    allowed_origins: str = "*"
    """Other sites that may embed Bindery (Thebe, Jupyter Book's live code): `*` (mybinder.org's
    choice), comma-separated origins, or empty for none. The gateway applies it to launches and
    their progress, the scheduler to every session's Jupyter (bindery.origins)."""

    log_format: str = "json"
    """`json`, one object per line for a log collector; anything else (`console`), readable
    lines for a person at a terminal."""

    log_level: str = "info"
    """The least severe log lines written (`debug`, `info`, `warning`, `error`): `info` has one
    line per request and per step of a launch, `debug` adds each proxied request."""

    health_host: str = "127.0.0.1"
    """Where each service's /health and /metrics listen: loopback, since session containers
    reach every host address bound to 0.0.0.0 and /metrics is for the operator."""

    event_log_max_age: str = "7D"
    """How long the event log stream keeps events (RabbitMQ's x-max-age syntax)."""

    event_log_max_bytes: int = 1_000_000_000
    """The event log stream's size cap (RabbitMQ's x-max-length-bytes): whichever of this and
    `event_log_max_age` comes first drops the oldest events, so the log never fills the disk."""

    trace_exporter: Literal["none", "console", "file", "otlp"] = "none"
    """Where finished spans go. `none` still makes trace ids, which travel in message headers and
    sit on every log line, so logs of one launch correlate without any collector. `console` and
    `file` write one JSON span per line (stdout, or `trace_file`); `otlp` sends to a collector."""

    trace_file: str = ""
    """The file the `file` exporter appends to; several services may share one."""

    otlp_endpoint: str = "http://127.0.0.1:4318/v1/traces"
    """OTLP over HTTP (protobuf): the OpenTelemetry collector's default port on this machine."""

    @field_validator("allowed_origins")
    @classmethod
    def _valid_origins(cls, value: str) -> str:
        AllowedOrigins.parse(value)  # a mistyped origin stops the service at start, not later
        return value

    def origins(self) -> AllowedOrigins:
        return AllowedOrigins.parse(self.allowed_origins)

    def require_secret(self) -> str:
        if len(self.session_secret) < 16:
            raise SystemExit("BINDERY_SESSION_SECRET must be set (16+ characters)")
        return self.session_secret

    def node_urls(self) -> dict[str, str]:
        nodes: dict[str, str] = {}
        for item in self.nodes.split(","):
            name, _, url = item.strip().partition("=")
            if name and url:
                nodes[name] = url
        return nodes


GiB = 1024**3


class CapacitySettings(CommonSettings):
    """How many sessions the deployment runs at once: the scheduler places sessions by these,
    the gateway sizes its per-client limits by them. One `.bindery/env` (or one ConfigMap)
    gives both services the same values."""

    memory_reservation: int = 1 * GiB
    """mybinder.org's guarantee; placement fits these reservations within each node's memory."""

    node_memory: int = Field(default=0, ge=0)
    """Memory reservations each node accepts, in bytes. 0: the memory the node reports. Set it
    lower to keep room for the node's own services (or, in tests, to fill a node quickly)."""

    total_quota: int = Field(default=1000, ge=1)
    """Concurrent sessions overall; capacity usually binds first, this caps a misconfigured
    node size."""


class PackageIndexSettings(CommonSettings):
    """The operator's network settings for installing packages: the builder hands them to
    build steps, the scheduler to sessions (bindery.sessionnetwork), so a `pip install` in a
    notebook works wherever builds' installs work."""

    ca_bundle: str = "/etc/ssl/certs/ca-certificates.crt"
    """A whole bundle (the public CAs and the operator's own), so pip, uv, git, conda and
    requests trust what the host trusts: TLS-intercepting proxies, private package indexes.
    Builds get it as a secret (never in an image), sessions read-only at
    /etc/bindery/ca-certificates.crt. Empty, or a path that does not exist, hands none."""

    index_url: Annotated[str, AfterValidator(check_index_url)] = ""
    """Package index (PEP 503 simple API) for pip and uv in builds and sessions, e.g. a
    corporate mirror; empty for PyPI. With credentials (https://user:token@host/simple), builds
    get the index through the builder's forwarder (bindery.builder.indexforward) and never see
    them, and sessions get no index (PyPI): both run repository code, which can read the index
    URL it was handed."""

    def ca_bundle_file(self) -> str:
        """The CA bundle if it is a file, else empty (none handed)."""
        return self.ca_bundle if os.path.isfile(self.ca_bundle) else ""

    def session_network(self) -> SessionNetwork:
        index_url = self.index_url
        if has_credentials(index_url):
            log.warning(
                "sessions.index_withheld",
                reason="the index URL holds credentials; sessions install from PyPI",
            )
            index_url = ""
        return SessionNetwork(ca_bundle=self.ca_bundle_file(), index_url=index_url)
