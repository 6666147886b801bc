"""A real CRAN-like repository in a directory, for R builds to install from.

In: a target directory and R source packages described here (name, version, R code, imports).
Out: ``<dir>/src/contrib/<name>_<version>.tar.gz`` per package and the ``PACKAGES`` index that
R's install.packages() and available.packages() read: the layout of an rsync of CRAN or of
miniCRAN, which the builder's ``cran_mirror`` setting accepts as a directory. Written with
Python alone, so no R is needed on the host.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RPackage:
    name: str
    version: str
    code: str
    """R code of R/<name>.R; every function it defines is exported."""
    imports: tuple[str, ...] = ()

    def description(self) -> str:
        fields = {
            "Package": self.name,
            "Version": self.version,
            "Title": f"Bindery Test Package {self.name}",
            "Description": "A package Bindery's tests install to see that R builds work.",
            "Authors@R": 'person("Bindery", "Tests", email = "tests@bindery.invalid", '
            'role = c("aut", "cre"))',
            "License": "MIT",
            "Encoding": "UTF-8",
            "NeedsCompilation": "no",
        }
        if self.imports:
            fields["Imports"] = ", ".join(self.imports)
        return "".join(f"{key}: {value}\n" for key, value in fields.items())

    def files(self) -> dict[str, str]:
        """The package's source files, as a repository holding it at its root has them."""
        imports = "".join(f"import({name})\n" for name in self.imports)
        return {
            "DESCRIPTION": self.description(),
            "NAMESPACE": 'exportPattern("^[[:alpha:]]+")\n' + imports,
            f"R/{self.name}.R": self.code,
        }


# What R prints for `cat(probe_answer())` once the probe package is installed.
PROBE_ANSWER = "bindery-r-probe-says-42"
PROBE = RPackage(
    name="binderyprobe",
    version="0.1.0",
    code=f'probe_answer <- function() "{PROBE_ANSWER}"\n',
)


def make_cran_mirror(root: Path, packages: Iterable[RPackage] = (PROBE,)) -> Path:
    """Write the packages' source tarballs and the index under ``root``; returns ``root``."""
    contrib = root / "src" / "contrib"
    contrib.mkdir(parents=True, exist_ok=True)
    entries = []
    for package in packages:
        tarball = contrib / f"{package.name}_{package.version}.tar.gz"
        tarball.write_bytes(_source_tarball(package))
        entries.append(
            f"Package: {package.name}\nVersion: {package.version}\n"
            + (f"Imports: {', '.join(package.imports)}\n" if package.imports else "")
            + "License: MIT\nNeedsCompilation: no\n"
            + f"MD5sum: {hashlib.md5(tarball.read_bytes()).hexdigest()}\n"
        )
    (contrib / "PACKAGES").write_text("\n".join(entries))
    # Builds read it as an unprivileged user; pytest makes its temporary folders 0700.
    for folder in (root, root / "src", contrib):
        folder.chmod(0o755)
    return root


def _source_tarball(package: RPackage) -> bytes:
    """``<name>/...`` in a gzipped tar, as ``R CMD build`` lays a source package out."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for path, content in package.files().items():
            data = content.encode()
            info = tarfile.TarInfo(f"{package.name}/{path}")
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()
