"""The conda solve, run by conda.py in a child process: ``python -m bindery.builder.condasolve``.

In (stdin, JSON): ``sources`` (channel URL, subdir, path of its repodata.json), in channel
priority order; ``specs`` (match specs); ``virtual`` ([name, version, build] virtual packages).
Out (stdout, JSON): ``{"records": [...]}`` (rattler's repodata records, topologically sorted) or
``{"error": "..."}`` (rattler's explanation of why nothing satisfies the specs).

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
    GenericVirtualPackage,
    PackageName,
    PackageRecord,
    RepoDataRecord,
    SparseRepoData,
    Version,
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
    virtual = [
        GenericVirtualPackage(PackageName(name), Version(version), BuildString(build))
        for name, version, build in request["virtual"]
    ]
    try:
        records: list[RepoDataRecord] = asyncio.run(
            solve_with_sparse_repodata(
                request["specs"],
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


def main() -> None:
    answer = solve(json.load(sys.stdin))
    sys.stdout.write(json.dumps(answer))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
