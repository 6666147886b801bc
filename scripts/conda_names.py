#!/usr/bin/env python3
"""Write services/builder/src/bindery/builder/data/conda-pypi-names.json, the conda-forge to
PyPI name mapping environment.yml's PyPI route uses (bindery.builder.condanames).

In: the wheel of conda-pypi (PyPI), which ships conda-forge's name mapping as regro's
cf-graph-countyfair bot maintains it (``conda_pypi/grayskull_pypi_mapping.json``: every
conda-forge Python package's PyPI name, keyed by PyPI name), and PyPI's JSON API for the extras
of the few distributions the mapping shows conda-forge splitting. Out: the mapping as conda name
-> PyPI name, only where the names differ (where they are the same no entry is needed), with its
source and version; and conda-forge's full variants: where conda-forge packages PyPI's ``X`` as
``X-core`` or ``X-base`` (dask-core, matplotlib-base), its ``X`` is the package with the
optional dependencies, which is PyPI's ``X[complete]`` when ``X`` declares that extra (dask:
the dataframe dependencies, pyarrow among them), else ``X`` (no entry needed).

usage: pip download --no-deps conda-pypi==VERSION -d DIR
       .venv/bin/python scripts/conda_names.py DIR/conda_pypi-VERSION-py3-none-any.whl
"""

from __future__ import annotations

import argparse
import json
import urllib.request
import zipfile
from pathlib import Path

OUT = (
    Path(__file__).resolve().parents[1]
    / "services/builder/src/bindery/builder/data/conda-pypi-names.json"
)
MEMBER = "conda_pypi/grayskull_pypi_mapping.json"
# conda-forge's suffixes for a package without the optional dependencies of the full one.
SPLIT_SUFFIXES = ("-core", "-base")
FULL_EXTRA = "complete"


def extras(name: str) -> list[str]:
    with urllib.request.urlopen(f"https://pypi.org/pypi/{name}/json", timeout=30) as resp:
        return list(json.load(resp)["info"].get("provides_extra") or [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("wheel", type=Path)
    wheel = parser.parse_args().wheel
    with zipfile.ZipFile(wheel) as zf:
        table: dict[str, dict[str, str]] = json.loads(zf.read(MEMBER))
    by_conda: dict[str, list[str]] = {}
    for entry in table.values():
        by_conda.setdefault(entry["conda_name"], []).append(entry["pypi_name"])
    names: dict[str, str] = {}
    for conda_name, pypi_names in sorted(by_conda.items()):
        # A few conda packages hold several PyPI distributions (opencv): the same name if it
        # is one of them, else the mapping's first.
        pypi = conda_name if conda_name in pypi_names else pypi_names[0]
        if pypi != conda_name:
            names[conda_name] = pypi
    full: dict[str, str] = {}
    for conda_name, pypi in sorted(names.items()):
        for suffix in SPLIT_SUFFIXES:
            split = conda_name == pypi + suffix and pypi not in by_conda
            if split and FULL_EXTRA in extras(pypi):
                full[pypi] = f"{pypi}[{FULL_EXTRA}]"
    version = wheel.name.split("-")[1]
    document = {
        "source": f"conda-pypi {version} (PyPI), {MEMBER}: regro/cf-graph-countyfair's "
        "grayskull PyPI mapping of conda-forge",
        "conda_to_pypi": names,
        "full_variants": full,
    }
    OUT.write_text(json.dumps(document, indent=0, sort_keys=True) + "\n")
    print(f"{OUT}: {len(names)} names, {len(full)} full variants")


if __name__ == "__main__":
    main()
