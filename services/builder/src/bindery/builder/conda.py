"""environment.yml's conda environment, made as repo2docker makes it, from a conda channel.

In: the channel names environment.yml lists (or the builder's default channels), its conda
match specs, the builder's channel alias, package cache and CA bundle. Out: a ``Lock`` (the
solved packages: URLs and sha256s, which the environment key covers) and, when the environment
image must be built, a staging directory holding the environment created by py-rattler for the
path it has in the image (``env_prefix``), which the environment Dockerfile copies there.

The layout is repo2docker's: ``CONDA_DIR`` /srv/conda, the environment ``<CONDA_DIR>/envs/
notebook`` (``NB_PYTHON_PREFIX``, also ``KERNEL_PYTHON_PREFIX``), or ``<CONDA_DIR>/envs/kernel``
for a Python older than 3.7, for which repo2docker makes a separate kernel environment. The
environment has its own Python, from the channel.

Steps: each channel's ``repodata.json`` for linux-64 and noarch is fetched here with urllib
(conditional requests against a copy in the package cache, trusting the builder's CA bundle);
rattler solves, and ``rattler.install`` downloads (sha256-verified, into the package cache that
builds share and no image holds), extracts and links the solved records, writing the in-image
prefix into the files (prefix placeholders, ``noarch: python`` paths for the environment's
Python, entry points, conda-meta). Both run in a child process (rattlerchild.py). Post-link
scripts are never run: they are code from the package, and this is the builder host.

Only channel names are accepted, resolved under the configured alias, and every solved package
must come from one of those channels: a stranger's environment.yml must not make the builder
host fetch an arbitrary URL.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CONDA_DIR = "/srv/conda"
"""repo2docker's ``${APP_BASE}/conda``."""
KERNEL_ENV_CUTOFF = (3, 7)
"""repo2docker's ``kernel_env_cutoff_version``: older Pythons get ``envs/kernel``."""
PLATFORM = "linux-64"
SUBDIRS = (PLATFORM, "noarch")
# What the base image's Debian 12 on x86_64 offers, for packages that depend on __glibc & co.
VIRTUAL_PACKAGES = (
    ("__linux", "6.1", "0"),
    ("__glibc", "2.36", "0"),
    ("__unix", "0", "0"),
    ("__archspec", "1", "x86_64"),
)
OPTIONAL = ("ipykernel", "micromamba")
"""Added to the solve when a channel has them: the kernel (else it comes from the package
index), and the package manager sessions get (repo2docker's images have micromamba)."""
# conda's channel names: letters, digits, . _ -, optionally /label/<label>. Anything else (a
# URL, a path, '..') is refused before any request is made.
CHANNEL_NAME = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}(/label/[A-Za-z0-9][A-Za-z0-9_.-]{0,99})?"
)
TIMEOUT = 60
# The channels of an environment.yml that lists none, or lists `defaults`, as repo2docker's.
DEFAULT_CHANNELS = ("conda-forge",)
# Beside uv's and pip's caches of the user the builder runs as.
DEFAULT_PKGS_DIR = str(
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "bindery", "conda-pkgs")
)


class ChannelUnreachable(Exception):
    """A channel's repodata could not be fetched: the PyPI route is taken instead."""


class CondaError(RuntimeError):
    """The environment cannot be made from the channels (bad channel, unsolvable, bad package)."""


def env_prefix(python: str) -> str:
    """Where the environment of Python ``python`` (X.Y) lives in the image, as repo2docker
    lays it out: envs/notebook, or envs/kernel below the cutoff."""
    version = tuple(int(part) for part in python.split(".")[:2])
    name = "kernel" if version < KERNEL_ENV_CUTOFF else "notebook"
    return f"{CONDA_DIR}/envs/{name}"


def channel_names(requested: Sequence[str], defaults: Sequence[str]) -> list[str]:
    """environment.yml's ``channels:`` as the names to fetch, in priority order: ``nodefaults``
    dropped, ``defaults`` (and an empty list) meaning the builder's default channels, as conda's
    ``defaults`` means its installation's. Raises CondaError for anything but a channel name."""
    names: list[str] = []
    for raw in requested:
        name = str(raw).strip().rstrip("/")
        if name == "nodefaults":
            continue
        for channel in defaults if name == "defaults" else [name]:
            if not CHANNEL_NAME.fullmatch(channel) or ".." in channel:
                raise CondaError(
                    f"environment.yml: channel {channel!r} is not a channel name; this Bindery "
                    "only uses channels by name (like conda-forge), from its configured host."
                )
            if channel not in names:
                names.append(channel)
    return names or list(defaults)


def channel_url(alias: str, name: str) -> str:
    return f"{alias.rstrip('/')}/{name}"


@dataclass(frozen=True)
class Lock:
    """The solved environment: rattler's records of the packages to install, in install order."""

    channels: tuple[str, ...]
    records: tuple[dict[str, Any], ...]

    def text(self) -> str:
        """The lock as a file: what the environment key covers and the session can read."""
        packages = [
            {key: record.get(key) for key in ("url", "sha256", "name", "version", "build")}
            for record in self.records
        ]
        return json.dumps({"channels": self.channels, "packages": packages}, indent=1) + "\n"

    def version(self, name: str) -> str | None:
        """The solved version of package ``name``, if the environment has it."""
        return next((str(r["version"]) for r in self.records if r["name"] == name), None)


def resolve(
    names: Sequence[str],
    specs: Sequence[str],
    alias: str,
    cache_dir: Path,
    ca_bundle: str = "",
) -> Lock:
    """Solve ``specs`` (plus the OPTIONAL packages the channels have) against the channels.
    Raises ChannelUnreachable when a channel's repodata cannot be had, CondaError when the
    specs cannot be satisfied (rattler's explanation) or a package is not the channels'."""
    sources = []
    for name in names:
        for subdir in SUBDIRS:
            url = f"{channel_url(alias, name)}/{subdir}/repodata.json"
            path = fetch_repodata(url, cache_dir / "repodata", ca_bundle)
            sources.append({"channel": channel_url(alias, name), "subdir": subdir, "path": path})
    request = {
        "sources": sources,
        "specs": list(specs),
        "optional": list(OPTIONAL),
        "virtual": VIRTUAL_PACKAGES,
    }
    answer = run_rattler({"solve": request})
    if "error" in answer:
        raise CondaError(f"environment.yml cannot be solved: {answer['error']}")
    records: list[dict[str, Any]] = answer["records"]
    # A channel's repodata can point its packages elsewhere (info.base_url): the builder
    # downloads only from the channels it was allowed to fetch.
    allowed = tuple(channel_url(alias, name) + "/" for name in names)
    for record in records:
        if not str(record.get("url", "")).startswith(allowed):
            raise CondaError(f"The channel names a package outside it: {record.get('url')}")
        if not record.get("sha256"):
            raise CondaError(f"The channel gives no sha256 for {record['url']}: unverifiable")
    return Lock(tuple(names), tuple(records))


def run_rattler(request: dict[str, Any], ca_bundle: str = "") -> dict[str, Any]:
    """rattlerchild.py in a child process: py-rattler 0.28 can crash the interpreter as it
    exits (its runtime's threads call into Python during finalization), which must not be ours."""
    env = dict(os.environ)
    if ca_bundle:
        # rattler's "system" roots read SSL_CERT_FILE: the builder's CA bundle.
        env["SSL_CERT_FILE"] = ca_bundle
    proc = subprocess.run(
        [sys.executable, "-m", "bindery.builder.rattlerchild"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    try:
        answer: dict[str, Any] = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise CondaError(f"rattler failed: {proc.stderr[-2000:]}") from None
    return answer


def _urlopen(request: urllib.request.Request, ca_bundle: str) -> Any:
    context = ssl.create_default_context(cafile=ca_bundle or None)
    # The URL is the configured alias plus a validated channel name.
    return urllib.request.urlopen(request, timeout=TIMEOUT, context=context)  # noqa: S310


def fetch_repodata(url: str, cache: Path, ca_bundle: str) -> str:
    """The path of an up-to-date copy of ``url`` (a repodata.json), fetched gzip-compressed and
    only when the channel has changed it since the copy was made (ETag / Last-Modified).
    Raises ChannelUnreachable."""
    cache.mkdir(parents=True, exist_ok=True)
    copy = cache / (hashlib.sha256(url.encode()).hexdigest()[:24] + ".json")
    meta_path = copy.with_suffix(".meta")
    headers = {"Accept-Encoding": "gzip"}
    if copy.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if meta.get("etag"):
            headers["If-None-Match"] = meta["etag"]
        if meta.get("last_modified"):
            headers["If-Modified-Since"] = meta["last_modified"]
    try:
        request = urllib.request.Request(url, headers=headers)  # noqa: S310 -- alias + a name
        with _urlopen(request, ca_bundle) as resp:
            body = resp.read()
            if resp.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            meta = {
                "etag": resp.headers.get("ETag"),
                "last_modified": resp.headers.get("Last-Modified"),
            }
    except urllib.error.HTTPError as e:
        if e.code == 304:
            return str(copy)
        raise ChannelUnreachable(f"{url} answered {e.code} {e.reason}") from e
    except (OSError, EOFError) as e:
        raise ChannelUnreachable(f"{url} is unreachable: {e}") from e
    _write_atomically(copy, body)
    _write_atomically(meta_path, json.dumps(meta).encode())
    return str(copy)


def _write_atomically(path: Path, data: bytes) -> None:
    """Builds on one host share the cache: a reader sees the old file or the new, whole."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def install(
    lock: Lock, staging: Path, prefix: str, pkgs_dir: Path, ca_bundle: str
) -> Iterator[str]:
    """Create the locked environment in ``staging`` for the image path ``prefix``
    (rattler.install: download into ``pkgs_dir`` or take from it, verify, link); yields log
    lines. Raises CondaError with rattler's reason."""
    pkgs_dir.mkdir(parents=True, exist_ok=True)
    request = {
        "records": list(lock.records),
        "target": str(staging),
        "prefix": prefix,
        "cache": str(pkgs_dir),
    }
    answer = run_rattler({"install": request}, ca_bundle)
    if "error" in answer:
        raise CondaError(f"The conda environment could not be created: {answer['error']}")
    downloaded = answer["downloaded"]
    yield (
        f"conda: {answer['installed']} packages installed into {prefix}: "
        f"{downloaded} downloaded, {answer['installed'] - downloaded} from the package cache\n"
    )
