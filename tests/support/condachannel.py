"""A real conda channel made by the tests, served over HTTP on 127.0.0.1.

Its packages are real conda archives (``.tar.bz2`` and ``.conda``, with info/index.json,
info/paths.json, info/link.json) and its ``<channel>/<subdir>/repodata.json`` what conda's
indexer writes, so the builder solves, downloads, verifies and links them as it would
conda-forge's:

- ``bindery-probe`` (noarch: python, .conda): a module and the entry point ``bindery-probe``,
  depending on
- ``bindery-probe-data`` (linux-64, .tar.bz2): a text file and a script holding the prefix
  placeholder (text mode) and a file holding it in a NUL-terminated string (binary mode);
- ``bindery-needs-py310`` (linux-64): asks for Python 3.10, which the channel does not have;
- ``python`` 3.11 (linux-64) and ``python_abi``: a real interpreter made from the host's Debian
  Python (``debian_python``), the packages a conda environment is made of.

The server answers 404 for every other channel, so any other name is "unreachable".
"""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import os
import subprocess
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from backports import zstd

CHANNEL = "bindery-test"
# Long, like conda-build's, so any prefix fits in binary mode.
PLACEHOLDER = "/opt/bindery_build_env_placehold" + "_placehold" * 10
PROBE_VERSION = "1.2.3"

PROBE_MODULE = f'''"""A conda package's module."""
import sys
from pathlib import Path

__version__ = "{PROBE_VERSION}"


def data_file() -> Path:
    return Path(sys.prefix) / "share/bindery-probe/prefix.txt"


def main() -> None:
    print("bindery-probe", __version__, data_file().read_text().strip())
'''


@dataclass
class Package:
    name: str
    version: str
    build: str
    subdir: str
    files: dict[str, bytes]
    depends: list[str] = field(default_factory=list)
    noarch: str | None = None
    # path -> file_mode ("text" or "binary") for files holding PLACEHOLDER.
    placeholders: dict[str, str] = field(default_factory=dict)
    entry_points: list[str] = field(default_factory=list)
    executable: set[str] = field(default_factory=set)
    # path -> symlink target.
    links: dict[str, str] = field(default_factory=dict)
    constrains: list[str] = field(default_factory=list)
    fmt: str = ".tar.bz2"

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}-{self.build}{self.fmt}"

    def index(self) -> dict[str, Any]:
        index: dict[str, Any] = {
            "name": self.name,
            "version": self.version,
            "build": self.build,
            "build_number": 0,
            "depends": self.depends,
            "constrains": self.constrains,
            "subdir": self.subdir,
            "license": "MIT",
            "timestamp": 1700000000000,
        }
        if self.noarch:
            index["noarch"] = self.noarch
        return index

    def info(self) -> dict[str, bytes]:
        paths = []
        for path, data in sorted(self.files.items()):
            entry: dict[str, Any] = {
                "_path": path,
                "path_type": "hardlink",
                "sha256": hashlib.sha256(data).hexdigest(),
                "size_in_bytes": len(data),
            }
            if path in self.placeholders:
                entry["prefix_placeholder"] = PLACEHOLDER
                entry["file_mode"] = self.placeholders[path]
            paths.append(entry)
        for path in sorted(self.links):
            paths.append({"_path": path, "path_type": "softlink", "size_in_bytes": 0})
        paths.sort(key=lambda entry: entry["_path"])
        info = {
            "info/index.json": json.dumps(self.index()).encode(),
            "info/paths.json": json.dumps({"paths": paths, "paths_version": 1}).encode(),
            "info/files": "".join(f"{p}\n" for p in sorted({*self.files, *self.links})).encode(),
        }
        if self.noarch:
            link = {"noarch": {"type": self.noarch, "entry_points": self.entry_points}}
            info["info/link.json"] = json.dumps({**link, "package_metadata_version": 1}).encode()
        return info

    def archive(self) -> bytes:
        if self.fmt == ".conda":
            out = io.BytesIO()
            stem = self.filename.removesuffix(".conda")
            with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
                zf.writestr("metadata.json", json.dumps({"conda_pkg_format_version": 2}))
                pkg = zstd.compress(self._tar(self.files, self.links))
                zf.writestr(f"pkg-{stem}.tar.zst", pkg)
                zf.writestr(f"info-{stem}.tar.zst", zstd.compress(self._tar(self.info())))
            return out.getvalue()
        return bz2.compress(self._tar({**self.info(), **self.files}, self.links))

    def _tar(self, files: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            for path, target in sorted((links or {}).items()):
                link = tarfile.TarInfo(path)
                link.type, link.linkname = tarfile.SYMTYPE, target
                tar.addfile(link)
            for path, data in sorted(files.items()):
                member = tarfile.TarInfo(path)
                member.size = len(data)
                member.mode = 0o755 if path in self.executable else 0o644
                tar.addfile(member, io.BytesIO(data))
        return out.getvalue()


def probe_packages() -> list[Package]:
    binary = b"\x7fBIN\0" + PLACEHOLDER.encode() + b"/lib/probe.so\0tail\0"
    return [
        Package(
            "bindery-probe-data",
            "1.0",
            "h1234_0",
            "linux-64",
            {
                "share/bindery-probe/prefix.txt": f"{PLACEHOLDER}/share/bindery-probe\n".encode(),
                "bin/bindery-probe-where": f"#!/bin/sh\necho {PLACEHOLDER}\n".encode(),
                "lib/bindery-probe.bin": binary,
            },
            depends=["__glibc >=2.17"],
            placeholders={
                "share/bindery-probe/prefix.txt": "text",
                "bin/bindery-probe-where": "text",
                "lib/bindery-probe.bin": "binary",
            },
            executable={"bin/bindery-probe-where"},
        ),
        Package(
            "bindery-probe",
            PROBE_VERSION,
            "pyh_0",
            "noarch",
            {"site-packages/bindery_probe/__init__.py": PROBE_MODULE.encode()},
            depends=["python >=3.8", "bindery-probe-data >=1.0"],
            noarch="python",
            entry_points=["bindery-probe = bindery_probe:main"],
            fmt=".conda",
        ),
        Package(
            "bindery-needs-py310",
            "1.0",
            "py310_0",
            "linux-64",
            {"lib/python3.10/site-packages/needs310.py": b""},
            depends=["python >=3.10,<3.11.0a0"],
        ),
    ]


# What the interpreter package leaves out of Debian's standard library: tests and caches (size),
# and the PEP 668 marker, which would make uv refuse to install into the environment.
PYTHON_SKIPPED = ("test", "idlelib", "tkinter", "turtledemo", "__pycache__", "EXTERNALLY-MANAGED")


def debian_python() -> list[Package]:
    """``python`` and ``python_abi`` as conda-forge's are: the host's /usr/bin/python3.X and
    /usr/lib/python3.X (Debian's, the same the session image's Debian has, so its shared
    libraries are there), laid out as a conda prefix's bin/ and lib/. It is made to use conda's
    ``lib/python3.X/site-packages`` (where conda links packages and uv installs) instead of
    Debian's dist-packages: sysconfig's scheme is changed (one line), and since Debian's
    site module is frozen into the interpreter, a .pth file in the dist-packages it reads adds
    site-packages as a site directory."""
    debian = Path("/usr/bin/python3")
    if not debian.exists():
        raise RuntimeError("debian_python needs Debian's python3 in /usr/bin")
    version = subprocess.run(
        [str(debian), "-c", "import sys; print(*sys.version_info[:3])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    major, minor, micro = (int(part) for part in version.split())
    xy = f"{major}.{minor}"
    stdlib = Path(f"/usr/lib/python{xy}")
    files: dict[str, bytes] = {f"bin/python{xy}": Path(f"/usr/bin/python{xy}").read_bytes()}
    links = {"bin/python": f"python{xy}", "bin/python3": f"python{xy}"}
    for path in sorted(stdlib.rglob("*")):
        relative = path.relative_to(stdlib)
        if any(part in PYTHON_SKIPPED for part in relative.parts):
            continue
        if path.is_symlink():
            links[f"lib/python{xy}/{relative}"] = os.readlink(path)
        elif path.is_file():
            files[f"lib/python{xy}/{relative}"] = path.read_bytes()
    sysconfig = f"lib/python{xy}/sysconfig.py"
    venv_only = 'if sys.base_prefix != sys.prefix or hasattr(sys, "real_prefix"):'
    text = files[sysconfig].decode()
    if venv_only not in text:
        raise RuntimeError(f"Debian's sysconfig.py changed: {venv_only!r} not found")
    files[sysconfig] = text.replace(venv_only, "if True:  # conda's layout", 1).encode()
    files[f"lib/python{xy}/dist-packages/conda-site-packages.pth"] = (
        "import os, site, sys; "
        f"site.addsitedir(os.path.join(sys.prefix, 'lib', 'python{xy}', 'site-packages'))\n"
    ).encode()
    files[f"lib/python{xy}/site-packages/README.txt"] = b"conda packages go here\n"
    return [
        Package(
            "python",
            f"{major}.{minor}.{micro}",
            "h_debian_0",
            "linux-64",
            files,
            depends=[f"python_abi {xy}.* *_cp{major}{minor}", "__glibc >=2.36"],
            executable={f"bin/python{xy}"},
            links=links,
            fmt=".conda",
        ),
        Package(
            "python_abi",
            xy,
            f"8_cp{major}{minor}",
            "linux-64",
            {},
            fmt=".conda",
            constrains=[f"python {xy}.* *_debian*"],
        ),
    ]


def write_channel(root: Path, packages: list[Package]) -> Path:
    """The channel ``root/CHANNEL``: the archives and each subdir's repodata.json."""
    channel = root / CHANNEL
    repodata: dict[str, dict[str, Any]] = {}
    for subdir in ("linux-64", "noarch"):
        (channel / subdir).mkdir(parents=True, exist_ok=True)
        repodata[subdir] = {"info": {"subdir": subdir}, "packages": {}, "packages.conda": {}}
    for package in packages:
        data = package.archive()
        (channel / package.subdir / package.filename).write_bytes(data)
        key = "packages.conda" if package.fmt == ".conda" else "packages"
        repodata[package.subdir][key][package.filename] = {
            **package.index(),
            "md5": hashlib.md5(data).hexdigest(),
            "sha256": hashlib.sha256(data).hexdigest(),
            "size": len(data),
        }
    for subdir, content in repodata.items():
        (channel / subdir / "repodata.json").write_text(json.dumps(content))
    return channel


@dataclass
class ServedChannel:
    alias: str
    """The channel alias: ``<alias>/bindery-test`` is the channel."""
    root: Path
    requests: list[str]
    """Paths requested, in order."""


class _Handler(SimpleHTTPRequestHandler):
    requests: list[str]

    def do_GET(self) -> None:
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def served_channel(root: Path) -> Iterator[ServedChannel]:
    """The probe channel written under ``root`` and served on 127.0.0.1 until the block ends."""
    write_channel(root, probe_packages() + debian_python())
    requests: list[str] = []
    handler = type("Handler", (_Handler,), {"requests": requests})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ServedChannel(f"http://127.0.0.1:{server.server_address[1]}", root, requests)
    finally:
        server.shutdown()
        server.server_close()
