"""conda-forge package names as the PyPI distributions they are, for environment.yml's PyPI
route (no conda channel).

In: a conda package name from environment.yml. Out: the PyPI requirement name it stands for,
extras included: ``matplotlib-base`` -> ``matplotlib``, ``pytorch`` -> ``torch``, ``dask`` ->
``dask[complete]`` (conda-forge's dask brings the dataframe dependencies that PyPI's dask leaves
to its extras), and any other name as it is.

The table, data/conda-pypi-names.json, is made by scripts/conda_names.py from conda-forge's
name mapping (regro's bot keeps it, for every conda-forge Python package; conda-pypi ships it
in its wheel on PyPI): its ``source`` says which release it came from.
"""

from __future__ import annotations

import json
from functools import cache
from importlib.resources import files
from typing import Any


@cache
def _table() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(
        files("bindery.builder").joinpath("data/conda-pypi-names.json").read_text()
    )
    return data


def source() -> str:
    """Where the mapping comes from, and its version."""
    return str(_table()["source"])


def pypi_requirement_name(conda_name: str) -> str:
    """The PyPI distribution (with extras) conda-forge's package ``conda_name`` is."""
    name = conda_name.lower()
    table = _table()
    full: dict[str, str] = table["full_variants"]
    names: dict[str, str] = table["conda_to_pypi"]
    return full.get(name) or names.get(name) or conda_name
