"""What sessions get of the operator's network settings: the CA bundle and package index builds use.

In: the `BINDERY_CA_BUNDLE` and `BINDERY_INDEX_URL` settings (bindery.settings.PackageIndexSettings,
which the builder and the scheduler share).
Out: a `SessionNetwork`: the CA bundle's host path, which runtimes put read-only at `CA_PATH` in
every session (podman: a bind mount; Kubernetes: a ConfigMap volume), and the environment that
points pip, uv, conda, requests, curl, git and Node.js at it and at the index.

An index URL with credentials never reaches a session: sessions run strangers' code, which can
read its own environment. Builds get such an index through the builder's loopback forwarder
(bindery.builder.indexforward), which sessions cannot reach; sessions get no index at all then
(pip's default, PyPI), and the scheduler logs that once at start.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

CA_DIR = "/etc/bindery"
CA_FILE = "ca-certificates.crt"
CA_PATH = f"{CA_DIR}/{CA_FILE}"
"""Where sessions find the bundle: the same path under both runtimes."""

# Every tool's own variable for "trust this bundle", as build steps get them
# (baseimage/context/build-ca.sh), plus conda's and Node's. SSL_CERT_FILE covers OpenSSL's
# default (Python's ssl, uv with native roots); NODE_EXTRA_CA_CERTS adds to Node's own roots.
CA_VARIABLES = (
    "SSL_CERT_FILE",
    "PIP_CERT",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "CONDA_SSL_VERIFY",
    "NODE_EXTRA_CA_CERTS",
)


def check_index_url(url: str) -> str:
    if url and urlsplit(url).scheme not in ("https", "http"):
        raise ValueError(f"BINDERY_INDEX_URL must be an http(s) URL, not {url!r}")
    return url


def has_credentials(url: str) -> bool:
    parts = urlsplit(url)
    return bool(parts.username or parts.password)


@dataclass(frozen=True)
class SessionNetwork:
    ca_bundle: str = ""
    """Host path of the CA bundle to mount; empty: none (the image's own trust store)."""
    index_url: str = ""
    """The package index, never with credentials; empty: the tools' default (PyPI)."""

    def __post_init__(self) -> None:
        if has_credentials(self.index_url):
            raise ValueError("an index URL with credentials must not reach sessions")

    def environment(self) -> dict[str, str]:
        env = dict.fromkeys(CA_VARIABLES, CA_PATH) if self.ca_bundle else {}
        if self.index_url:
            env["PIP_INDEX_URL"] = self.index_url
            env["UV_DEFAULT_INDEX"] = self.index_url
            parts = urlsplit(self.index_url)
            if parts.scheme == "http":
                # The operator chose a plain-http index (as build steps are told: the builder's
                # buildpacks/base.py BUILD_ENV_SCRIPT); pip and uv refuse one unless its host is
                # named trusted.
                host = parts.netloc
                env["PIP_TRUSTED_HOST"] = host
                env["UV_INSECURE_HOST"] = host
        return env
