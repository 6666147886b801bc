"""py-rattler's solve and install, run by conda.py in a child process:
``python -m bindery.builder.rattlerchild``.

In (stdin, JSON), one of:
- ``{"solve": {...}}``: ``sources`` (channel URL, subdir, path of its repodata.json) in channel
  priority order, ``specs`` (match specs), ``optional`` (package names added to the specs when a
  channel has them), ``virtual`` ([name, version, build] virtual packages);
- ``{"install": {...}}``: ``records`` (solved records, as the solve wrote them), ``target``
  (the directory to create the environment in), ``prefix`` (the path the environment will have
  in the image, written into its files), ``cache`` (rattler's package cache).

Out (stdout, JSON): ``{"records": [...]}`` (rattler's repodata records, dependencies first),
``{"installed": N, "downloaded": M}``, or ``{"error": "..."}`` (rattler's explanation).

A process of its own because py-rattler can crash the interpreter as it exits: this one ends
with ``os._exit`` once its answer is written, before any finalization.
"""

import asyncio
import json
import os
import sys
from typing import Any, cast

from rattler import (
    BuildString,
    Channel,
    ChannelPriority,
    Client,
    Config,
    GenericVirtualPackage,
    InstallerReporter,
    NoArchType,
    PackageName,
    PackageRecord,
    RepoDataRecord,
    SparseRepoData,
    Version,
    install,
    solve_with_sparse_repodata,
)
from rattler.exceptions import InvalidMatchSpecError, SolverError


def solve(request: dict[str, Any]) -> dict[str, Any]:
    sources = [
        # A URL channel ending in '/' is taken as it is (no alias applies).
        SparseRepoData(
            Channel(source["channel"].rstrip("/") + "/"), source["subdir"], source["path"]
        )
        for source in request["sources"]
    ]
    available = {name for source in sources for name in source.package_names()}
    specs = request["specs"] + [name for name in request["optional"] if name in available]
    virtual = [
        GenericVirtualPackage(PackageName(name), Version(version), BuildString(build))
        for name, version, build in request["virtual"]
    ]
    try:
        records: list[RepoDataRecord] = asyncio.run(
            solve_with_sparse_repodata(
                specs,
                sources,
                virtual_packages=virtual,
                channel_priority=ChannelPriority.Strict,
            )
        )
    except (SolverError, InvalidMatchSpecError) as e:
        return {"error": str(e).strip()}
    # Dependencies first, as conda links them: a file two packages hold is the dependent's.
    ordered = RepoDataRecord.sort_topologically(cast("list[PackageRecord]", records))
    return {"records": [json.loads(record.to_json()) for record in ordered]}


def record(data: dict[str, Any]) -> RepoDataRecord:
    """A solved record back from its JSON (the lock's)."""
    package = PackageRecord(
        name=data["name"],
        version=data["version"],
        build=BuildString(data["build"]),
        build_number=data["build_number"],
        subdir=data["subdir"],
        noarch=NoArchType(data.get("noarch")),
        depends=data.get("depends") or [],
        constrains=data.get("constrains") or [],
        sha256=bytes.fromhex(data["sha256"]),
        md5=bytes.fromhex(data["md5"]) if data.get("md5") else None,
        size=data.get("size"),
        license=data.get("license"),
        python_site_packages_path=data.get("python_site_packages_path"),
    )
    return RepoDataRecord(package, data["fn"], data["url"], data["channel"])


class _Downloads(InstallerReporter):  # type: ignore[misc]
    """Counts the archives rattler had to download (the rest came from its cache)."""

    count = 0

    def on_download_start(self, cache_entry: int) -> int:
        self.count += 1
        return cache_entry


def install_records(request: dict[str, Any]) -> dict[str, Any]:
    records = [record(data) for data in request["records"]]
    # rattler calls only the methods a reporter overrides; its stubs mark the rest abstract.
    reporter = _Downloads()  # type: ignore[abstract]
    # The system's roots: with SSL_CERT_FILE set by conda.py, the builder's CA bundle.
    config = Config.from_toml('tls-root-certs = "system"')
    try:
        asyncio.run(
            install(
                records,
                target_prefix=request["target"],
                cache_dir=request["cache"],
                alternative_target_prefix=request["prefix"],
                # Post-link scripts are code from the package: never on the builder host.
                execute_link_scripts=False,
                client=Client.from_config(config),
                reporter=reporter,
                installed_packages=[],
            )
        )
    # rattler's errors (download, checksum, link) have no common base: each is an answer.
    except Exception as e:
        return {"error": f"{type(e).__name__}: {e}"}
    return {"installed": len(records), "downloaded": reporter.count}


def main() -> None:
    request = json.load(sys.stdin)
    answer = solve(request["solve"]) if "solve" in request else install_records(request["install"])
    sys.stdout.write(json.dumps(answer))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
