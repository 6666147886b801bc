"""Fixtures of the builder's unit tests: a repository checkout to run buildpacks in."""

from pathlib import Path

import pytest


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    # repo2docker's buildpacks read the checkout as the working directory.
    monkeypatch.chdir(tmp_path)
    return tmp_path
