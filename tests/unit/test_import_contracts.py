"""The import contracts in pyproject.toml cover the code as it is: every package under services/
is in each contract about services, and every module of libs/ is a source of "the libraries never
import a service". A package added without its contract lines fails here, not silently outside
the contracts. (lint-imports checks the contracts themselves.)"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def contracts() -> dict[str, dict[str, Any]]:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    return {c["name"]: c for c in config["tool"]["importlinter"]["contracts"]}


def services() -> set[str]:
    return {f"bindery.{p.name}" for p in (REPO / "services").glob("*/src/bindery/*") if p.is_dir()}


def library_modules() -> set[str]:
    return {
        f"bindery.{p.stem}"
        for p in (REPO / "libs/src/bindery").iterdir()
        if p.suffix == ".py" or (p.is_dir() and p.name != "__pycache__")
    }


def test_every_service_is_in_the_contracts_about_services() -> None:
    every = contracts()
    assert set(every["Services talk only through events"]["modules"]) == services()
    assert set(every["The libraries and the CLI never import a service"]["forbidden_modules"]) == (
        services()
    )
    layered = next(c for c in every.values() if c["type"] == "layers")
    assert set(layered["containers"]) == services()


def test_every_library_module_and_the_cli_may_not_import_a_service() -> None:
    sources = contracts()["The libraries and the CLI never import a service"]["source_modules"]
    assert set(sources) == library_modules() | {"bindery.cli"}
