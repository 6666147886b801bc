"""environment.yml's conda packages from a conda channel, installed over the base image's venv.

In: the channel names environment.yml lists (or the builder's default channels), its conda
match specs, the builder's channel alias, package cache and CA bundle. Out: a ``Lock`` (the
solved packages: URLs and sha256s, which the environment key covers) and, when the environment
image must be built, a staging directory holding those packages linked as if installed in
``/srv/venv``, which the environment Dockerfile copies onto the venv.

Steps, as conda does them: each channel's ``repodata.json`` for linux-64 and noarch is fetched
here with urllib (conditional requests against a copy in the package cache, trusting the
builder's CA bundle); rattler solves in a child process (condasolve.py); the solved archives are
downloaded into the package cache (sha256-verified, shared by builds, never in an image) and
linked by ``link_package``: ``info/paths.json`` (hardlink, softlink, directory entries), prefix
placeholders replaced (text: everywhere; binary: inside NUL-terminated strings, padded to the
same length), ``noarch: python`` paths moved under ``lib/python3.11/site-packages`` and ``bin``,
entry points written as scripts, ``conda-meta/<package>.json`` records. Post-link scripts are not
run (as rattler and pixi default): they run arbitrary code from the package.

Python is not installed from the channel: the base image's Python 3.11 is the kernel, so the
solver sees ``python``, ``python_abi`` and ``pip`` as already there at the base image's
versions (a synthetic channel ranked first), and compiled py311 packages fit it. environment.yml's
own ``python``/``pip`` specs are left out of the solve and reported by the buildpack.

Only channel names are accepted, resolved under the configured alias: a stranger's
environment.yml must not make the builder host fetch an arbitrary URL.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
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

from conda_package_streaming.extract import extract_stream
from conda_package_streaming.package_streaming import CondaComponent, stream_conda_component

PREFIX = "/srv/venv"
"""Where the environment lives in the image: the base image's venv."""
PYTHON = "3.11.2"
"""The base image's Python (Debian 12's python3): what the solver is told is installed."""
PIP = "23.0.1"
"""The pip that ``python3 -m venv`` put in the base image's venv (Debian 12's ensurepip)."""
SITE_PACKAGES = "lib/python3.11/site-packages"
PLATFORM = "linux-64"
SUBDIRS = (PLATFORM, "noarch")
# What the base image's Debian 12 on x86_64 offers, for packages that depend on __glibc & co.
VIRTUAL_PACKAGES = (
    ("__linux", "6.1", "0"),
    ("__glibc", "2.36", "0"),
    ("__unix", "0", "0"),
    ("__archspec", "1", "x86_64"),
)
# The packages the base image provides instead of the channel (see the module docstring).
PROVIDED = {
    "python": (PYTHON, "0_bindery"),
    "python_abi": ("3.11", "0_cp311"),
    "pip": (PIP, "0_bindery"),
}
# A URL no request is ever made to: the provided packages' channel, told apart by it.
BASE_CHANNEL = "https://base-image.bindery.invalid/base"
# conda's channel names: letters, digits, . _ -, optionally /label/<label>. Anything else (a
# URL, a path, '..') is refused before any request is made.
CHANNEL_NAME = re.compile(
    r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}(/label/[A-Za-z0-9][A-Za-z0-9_.-]{0,99})?"
)
TIMEOUT = 60
# Beside uv's and pip's caches of the user the builder runs as.
DEFAULT_PKGS_DIR = str(
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "bindery", "conda-pkgs")
)
CHUNK = 1 << 20


class ChannelUnreachable(Exception):
    """A channel's repodata could not be fetched: the PyPI route is taken instead."""


class CondaError(RuntimeError):
    """The environment cannot be made from the channels (bad channel, unsolvable, bad package)."""


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


def resolve(
    names: Sequence[str],
    specs: Sequence[str],
    alias: str,
    cache_dir: Path,
    ca_bundle: str = "",
) -> Lock:
    """Solve ``specs`` against the channels. Raises ChannelUnreachable when a channel's repodata
    cannot be had, CondaError when the specs cannot be satisfied (rattler's explanation)."""
    sources = []
    for name in names:
        for subdir in SUBDIRS:
            url = f"{channel_url(alias, name)}/{subdir}/repodata.json"
            path = fetch_repodata(url, cache_dir / "repodata", ca_bundle)
            sources.append({"channel": channel_url(alias, name), "subdir": subdir, "path": path})
    with tempfile.TemporaryDirectory(prefix="bindery-conda-") as scratch:
        base = Path(scratch, "base-repodata.json")
        base.write_text(json.dumps(base_repodata()))
        # The provided packages' channel first: with strict channel priority, the only
        # python the solver can pick is the base image's.
        sources.insert(0, {"channel": BASE_CHANNEL, "subdir": PLATFORM, "path": str(base)})
        request = {"sources": sources, "specs": list(specs), "virtual": VIRTUAL_PACKAGES}
        records = run_solver(request)
    installed = [r for r in records if not str(r.get("channel", "")).startswith(BASE_CHANNEL)]
    return Lock(tuple(names), tuple(installed))


def base_repodata() -> dict[str, Any]:
    """A repodata.json holding the packages the base image provides."""
    packages = {
        f"{name}-{version}-{build}.tar.bz2": {
            "name": name,
            "version": version,
            "build": build,
            "build_number": 0,
            "depends": [],
            "subdir": PLATFORM,
        }
        for name, (version, build) in PROVIDED.items()
    }
    return {"info": {"subdir": PLATFORM}, "packages": packages, "packages.conda": {}}


def run_solver(request: dict[str, Any]) -> list[dict[str, Any]]:
    """condasolve.py in a child process: py-rattler 0.28 can crash the interpreter as it exits
    (its runtime's threads call into Python during finalization), which must not be ours."""
    proc = subprocess.run(
        [sys.executable, "-m", "bindery.builder.condasolve"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        answer = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise CondaError(f"The conda solver failed: {proc.stderr[-2000:]}") from None
    if "error" in answer:
        raise CondaError(f"environment.yml cannot be solved: {answer['error']}")
    records: list[dict[str, Any]] = answer["records"]
    return records


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


def fetch_packages(lock: Lock, pkgs_dir: Path, ca_bundle: str) -> Iterator[tuple[Path, bool]]:
    """Each locked package's archive in the cache, and whether it was downloaded now."""
    pkgs_dir.mkdir(parents=True, exist_ok=True)
    for record in lock.records:
        name = str(record["fn"])
        if "/" in name or name.startswith("."):
            raise CondaError(f"The channel names a package file {name!r}")
        path = pkgs_dir / name
        expected = str(record.get("sha256") or "")
        if not expected:
            raise CondaError(f"The channel gives no sha256 for {name}: it cannot be verified")
        if path.exists() and _sha256(path) == expected:
            yield path, False
            continue
        digest = hashlib.sha256()
        fd, tmp = tempfile.mkstemp(dir=pkgs_dir, prefix=f".{name}.")
        try:
            with (
                os.fdopen(fd, "wb") as f,
                # The solver's URL: the channel's, where its repodata lists the file.
                _urlopen(urllib.request.Request(record["url"]), ca_bundle) as resp,  # noqa: S310
            ):
                while chunk := resp.read(CHUNK):
                    digest.update(chunk)
                    f.write(chunk)
            if digest.hexdigest() != expected:
                raise CondaError(
                    f"{record['url']}: sha256 {digest.hexdigest()}, expected {expected}"
                )
            os.replace(tmp, path)
        except OSError as e:
            raise CondaError(f"Could not download {record['url']}: {e}") from e
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        yield path, True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def stage(lock: Lock, staging: Path, pkgs_dir: Path, ca_bundle: str) -> Iterator[str]:
    """Download (or find in the cache) and link every locked package into ``staging`` as if
    it were ``PREFIX``; yields log lines."""
    downloaded = cached = 0
    with tempfile.TemporaryDirectory(prefix="bindery-conda-extract-") as scratch:
        for (archive, fresh), record in zip(
            fetch_packages(lock, pkgs_dir, ca_bundle), lock.records, strict=True
        ):
            downloaded, cached = downloaded + fresh, cached + (not fresh)
            extracted = Path(scratch, archive.name)
            extract(archive, extracted)
            link_package(extracted, record, staging)
    yield (
        f"conda: {len(lock.records)} packages linked into {PREFIX}: "
        f"{downloaded} downloaded, {cached} from the package cache\n"
    )


def extract(archive: Path, dest: Path) -> None:
    """A .conda or .tar.bz2 archive's files into ``dest``; members reaching outside are refused."""
    components = (
        [CondaComponent.pkg, CondaComponent.info]
        if archive.name.endswith(".conda")
        else [CondaComponent.pkg]
    )
    with archive.open("rb") as f:
        for component in components:
            f.seek(0)
            # "tar": no absolute names or members outside dest; extract_stream also refuses
            # members that a symlink extracted earlier would lead outside.
            extract_stream(
                stream_conda_component(str(archive), f, component), dest, tar_filter="tar"
            )


def link_package(package: Path, record: dict[str, Any], staging: Path) -> list[str]:
    """Link one extracted package into ``staging`` as conda would into PREFIX; returns the paths
    it installed (relative to the prefix) and writes its conda-meta record."""
    index = json.loads((package / "info/index.json").read_text())
    noarch_python = index.get("noarch") == "python"
    installed: list[str] = []
    for entry in _paths(package):
        source = package / entry["_path"]
        target_path = noarch_python_path(entry["_path"]) if noarch_python else entry["_path"]
        target = _inside(staging, target_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        kind = entry.get("path_type", "hardlink")
        if kind == "directory":
            target.mkdir(exist_ok=True)
        elif kind == "softlink" or source.is_symlink():
            target.unlink(missing_ok=True)
            target.symlink_to(os.readlink(source))
        else:
            placeholder = entry.get("prefix_placeholder")
            target.unlink(missing_ok=True)
            if placeholder:
                data = source.read_bytes()
                if entry.get("file_mode") == "binary":
                    data = replace_prefix_binary(data, placeholder.encode(), PREFIX.encode())
                else:
                    data = data.replace(placeholder.encode(), PREFIX.encode())
                target.write_bytes(data)
                shutil.copymode(source, target)
            else:
                shutil.copy2(source, target, follow_symlinks=False)
        installed.append(target_path)
    if noarch_python:
        link = package / "info/link.json"
        points = (
            json.loads(link.read_text()).get("noarch", {}).get("entry_points", [])
            if link.exists()
            else []
        )
        for point in points:
            name, script = entry_point_script(point)
            target = _inside(staging, f"bin/{name}")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(script)
            target.chmod(0o755)
            installed.append(f"bin/{name}")
    meta = staging / "conda-meta"
    meta.mkdir(exist_ok=True)
    stem = f"{index['name']}-{index['version']}-{index['build']}"
    (meta / f"{stem}.json").write_text(json.dumps({**record, "files": installed}, indent=1) + "\n")
    return installed


def _paths(package: Path) -> list[dict[str, Any]]:
    """info/paths.json's entries, or the same made from the older info/files and info/has_prefix."""
    paths_json = package / "info/paths.json"
    if paths_json.exists():
        entries: list[dict[str, Any]] = json.loads(paths_json.read_text())["paths"]
        return entries
    prefixes: dict[str, dict[str, str]] = {}
    has_prefix = package / "info/has_prefix"
    if has_prefix.exists():
        for line in has_prefix.read_text().splitlines():
            words = line.split()
            if len(words) == 3:
                prefixes[words[2]] = {"prefix_placeholder": words[0], "file_mode": words[1]}
            elif len(words) == 1:
                # conda's default placeholder, in text mode.
                prefixes[words[0]] = {
                    "prefix_placeholder": "/opt/anaconda1anaconda2anaconda3",
                    "file_mode": "text",
                }
    files = (package / "info/files").read_text().splitlines()
    return [{"_path": path, **prefixes.get(path, {})} for path in files if path]


def _inside(root: Path, relative: str) -> Path:
    """``root/relative``, refusing paths that leave ``root`` (a package's paths.json is data)."""
    parts = Path(relative).parts
    if not parts or Path(relative).is_absolute() or ".." in parts:
        raise CondaError(f"A package names the path {relative!r}, outside the environment")
    return root.joinpath(*parts)


def noarch_python_path(path: str) -> str:
    """Where a ``noarch: python`` package's file goes: site-packages/ under this Python's
    lib/python3.X, python-scripts/ in bin/, the rest as it is."""
    if path.startswith("site-packages/"):
        return f"{SITE_PACKAGES}/{path.removeprefix('site-packages/')}"
    if path.startswith("python-scripts/"):
        return f"bin/{path.removeprefix('python-scripts/')}"
    return path


def replace_prefix_binary(data: bytes, placeholder: bytes, prefix: bytes) -> bytes:
    """conda's binary relocation: each NUL-terminated string holding the placeholder gets the
    prefix instead, NUL-padded so every offset in the file stays where it was."""
    if len(prefix) > len(placeholder):
        raise CondaError("The environment's prefix is longer than the package's placeholder")

    def replace(match: re.Match[bytes]) -> bytes:
        found = match.group()
        padding = (len(placeholder) - len(prefix)) * found.count(placeholder)
        return found.replace(placeholder, prefix) + b"\0" * padding

    return re.sub(re.escape(placeholder) + rb"[^\0]*\0", replace, data)


ENTRY_POINT = re.compile(r"\s*(?P<name>[\w.-]+)\s*=\s*(?P<module>[\w.]+)\s*:\s*(?P<func>[\w.]+)\s*")


def entry_point_script(point: str) -> tuple[str, str]:
    """``name = module:func`` as conda writes it: (script name, script text)."""
    match = ENTRY_POINT.fullmatch(point)
    if match is None:
        raise CondaError(
            f"A package declares the entry point {point!r}, which is not module:function"
        )
    func = match["func"]
    script = (
        f"#!{PREFIX}/bin/python\n"
        "# -*- coding: utf-8 -*-\n"
        "import re\n"
        "import sys\n\n"
        f"from {match['module']} import {func.split('.')[0]}\n\n"
        "if __name__ == '__main__':\n"
        "    sys.argv[0] = re.sub(r'(-script\\.pyw?|\\.exe)?$', '', sys.argv[0])\n"
        f"    sys.exit({func}())\n"
    )
    return match["name"], script
