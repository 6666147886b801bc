"""environment.yml's conda route: channel names, the solve and rattler's install against a
real channel served on 127.0.0.1 (with a Python made from Debian's), the files relocated to the
in-image prefix, and what the environment key covers."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bindery.builder import conda
from bindery.builder.buildpacks.base import BuildContext, context_digest
from bindery.builder.buildpacks.conda import EnvironmentYmlBuildPack
from tests.support.condachannel import (
    CHANNEL,
    PLACEHOLDER,
    PROBE_VERSION,
    ServedChannel,
    served_channel,
)

BUILD_ARGS = {"NB_USER": "jovyan", "NB_UID": "1000"}


@pytest.fixture(scope="module")
def channel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServedChannel]:
    with served_channel(tmp_path_factory.mktemp("channel")) as served:
        yield served


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


def test_channel_names_are_taken_and_everything_else_refused() -> None:
    assert conda.channel_names(["conda-forge", "bioconda"], ["conda-forge"]) == [
        "conda-forge",
        "bioconda",
    ]
    # conda's own meanings: defaults is the installation's channels, nodefaults nothing.
    assert conda.channel_names(["bioconda", "defaults", "nodefaults"], ["c1", "c2"]) == [
        "bioconda",
        "c1",
        "c2",
    ]
    assert conda.channel_names([], ["conda-forge"]) == ["conda-forge"]
    assert conda.channel_names(["conda-forge/label/dev"], []) == ["conda-forge/label/dev"]
    for hostile in (
        "http://169.254.169.254/latest",
        "https://evil.example/conda",
        "file:///etc",
        "/etc/passwd",
        "../../admin",
        "conda-forge/../../x",
        "a/b",
        "conda-forge/label/../x",
        "user@host",
    ):
        with pytest.raises(conda.CondaError, match="not a channel name"):
            conda.channel_names([hostile], ["conda-forge"])


def test_environments_are_laid_out_as_repo2docker_does() -> None:
    assert conda.env_prefix("3.11") == "/srv/conda/envs/notebook"
    assert conda.env_prefix("3.7") == "/srv/conda/envs/notebook"
    # Below repo2docker's cutoff, the kernel's environment is a separate one.
    assert conda.env_prefix("3.6") == "/srv/conda/envs/kernel"
    assert conda.env_prefix("2.7") == "/srv/conda/envs/kernel"


PREFIX = "/srv/conda/envs/notebook"


def test_solve_and_create_the_environment_for_its_image_path(
    channel: ServedChannel, cache: Path, tmp_path: Path
) -> None:
    lock = conda.resolve([CHANNEL], ["python=3.11", "bindery-probe"], channel.alias, cache)

    # The channel's own Python, dependencies first.
    names = [r["name"] for r in lock.records]
    assert sorted(names) == ["bindery-probe", "bindery-probe-data", "python", "python_abi"]
    assert names.index("python") < names.index("bindery-probe")
    assert (lock.version("python") or "").startswith("3.11.")
    assert lock.version("ipykernel") is None
    text = json.loads(lock.text())
    assert text["channels"] == [CHANNEL]
    assert all(
        p["url"].startswith(channel.alias) and len(p["sha256"]) == 64 for p in text["packages"]
    )

    staging = tmp_path / "env"
    log = list(conda.install(lock, staging, PREFIX, cache / "pkgs", ""))
    assert f"4 packages installed into {PREFIX}: 4 downloaded, 0 from" in log[-1]
    # noarch: python went under the channel's Python's site-packages; its entry point and
    # the relocated files name the in-image prefix, not the staging directory.
    site = staging / "lib/python3.11/site-packages"
    assert f'__version__ = "{PROBE_VERSION}"' in (site / "bindery_probe/__init__.py").read_text()
    entry = staging / "bin/bindery-probe"
    assert entry.read_text().startswith(f"#!{PREFIX}/bin/python3.11\n")
    assert os.access(entry, os.X_OK)
    assert (staging / "share/bindery-probe/prefix.txt").read_text() == (
        f"{PREFIX}/share/bindery-probe\n"
    )
    assert (staging / "bin/bindery-probe-where").read_text() == f"#!/bin/sh\necho {PREFIX}\n"
    binary = (staging / "lib/bindery-probe.bin").read_bytes()
    assert f"{PREFIX}/lib/probe.so\0".encode() in binary and PLACEHOLDER.encode() not in binary
    assert str(staging) not in (site / "bindery_probe/__init__.py").read_text()
    meta = json.loads((staging / "conda-meta/bindery-probe-1.2.3-pyh_0.json").read_text())
    assert meta["url"].endswith("bindery-probe-1.2.3-pyh_0.conda")
    # The channel's Python runs from the prefix, with conda's site-packages.
    out = subprocess.run(
        [staging / "bin/python", "-c", "import bindery_probe, sys; print(sys.prefix)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.strip() == str(staging)

    # A second environment with the same packages downloads nothing.
    log = list(conda.install(lock, tmp_path / "again", PREFIX, cache / "pkgs", ""))
    assert "0 downloaded, 4 from the package cache" in log[-1]


def test_a_package_whose_bytes_differ_from_the_repodata_is_refused(
    channel: ServedChannel, cache: Path, tmp_path: Path
) -> None:
    lock = conda.resolve([CHANNEL], ["bindery-probe", "python"], channel.alias, cache)
    records = [
        {**r, "sha256": "0" * 64} if r["name"] == "bindery-probe" else r for r in lock.records
    ]
    tampered = conda.Lock(lock.channels, tuple(records))
    with pytest.raises(conda.CondaError, match=r"(?i)sha256|hash"):
        list(conda.install(tampered, tmp_path / "env", PREFIX, cache / "pkgs", ""))
    assert not (tmp_path / "env/lib/python3.11/site-packages/bindery_probe").exists()


def test_packages_are_fetched_only_from_the_channels(
    channel: ServedChannel, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = conda.run_rattler

    def elsewhere(request: dict[str, Any], ca_bundle: str = "") -> dict[str, Any]:
        answer = real(request, ca_bundle)
        answer["records"][0]["url"] = "http://169.254.169.254/x.conda"
        return answer

    monkeypatch.setattr(conda, "run_rattler", elsewhere)
    with pytest.raises(conda.CondaError, match="outside it"):
        conda.resolve([CHANNEL], ["bindery-probe", "python"], channel.alias, cache)


def test_unsatisfiable_environments_are_explained(channel: ServedChannel, cache: Path) -> None:
    with pytest.raises(conda.CondaError, match="No candidates were found for no-such-package"):
        conda.resolve([CHANNEL], ["no-such-package"], channel.alias, cache)
    with pytest.raises(conda.CondaError, match=re.escape("python >=3.10,<3.11")):
        conda.resolve([CHANNEL], ["bindery-needs-py310"], channel.alias, cache)


def test_a_channel_that_does_not_answer_is_unreachable(channel: ServedChannel, cache: Path) -> None:
    with pytest.raises(conda.ChannelUnreachable, match="404"):
        conda.resolve(["conda-forge"], ["numpy"], channel.alias, cache)
    with pytest.raises(conda.ChannelUnreachable, match="unreachable"):
        conda.resolve([CHANNEL], ["numpy"], "http://127.0.0.1:9", cache)


class FakeEngine:
    """What the buildpack asks of the engine; records the environment builds."""

    def __init__(self, existing: set[str]) -> None:
        self.existing = existing
        self.built: list[tuple[str, list[str]]] = []

    def inspect_image(self, image: str) -> dict[str, Any] | None:
        return {} if image in self.existing else None

    def build(self, path: str, tag: str, **kwargs: Any) -> Iterator[str]:
        if "dockerfile" not in kwargs:
            files = sorted(str(p.relative_to(path)) for p in Path(path).rglob("*") if p.is_file())
            self.built.append((tag, files))
        return iter(())


def build_env(context: BuildContext, engine: FakeEngine) -> tuple[EnvironmentYmlBuildPack, str]:
    pack = EnvironmentYmlBuildPack(base_image="localhost/bindery-base:test")
    log = "".join(pack.build(engine, "img", 0, BUILD_ARGS, [], {"bindery": context}))
    return pack, log


def test_the_environment_key_covers_the_lock_and_staging_happens_only_for_a_build(
    repo: Path, channel: ServedChannel, cache: Path
) -> None:
    (repo / "environment.yml").write_text(
        f"channels: [{CHANNEL}]\ndependencies:\n  - bindery-probe\n  - pip:\n    - pyfiglet\n"
    )
    context = BuildContext(conda_channel_alias=channel.alias, conda_pkgs_dir=str(cache))
    engine = FakeEngine(set())
    pack, log = build_env(context, engine)

    # No python pin: Bindery's default Python, from the channel.
    assert "pins no Python: the environment gets Python 3.11" in log
    assert f"4 conda packages solved from {CHANNEL} at {channel.alias}" in log
    assert "4 downloaded, 0 from the package cache" in log
    ((tag, files),) = engine.built
    assert "generated/environment-conda-lock.json" in files
    assert "conda-env/lib/python3.11/site-packages/bindery_probe/__init__.py" in files
    dockerfile = pack.render_env(BUILD_ARGS, pack.generated_file_names())
    copy = f"COPY --chown=1000:1000 conda-env/ {PREFIX}/"
    assert copy in dockerfile
    for variable in (
        "ENV CONDA_DIR=/srv/conda",
        f"ENV NB_PYTHON_PREFIX={PREFIX}",
        f"ENV KERNEL_PYTHON_PREFIX={PREFIX}",
        "ENV PATH=${KERNEL_PYTHON_PREFIX}/bin:${CONDA_DIR}/bin:${PATH}",
    ):
        assert variable in dockerfile
    # The pip: section (and ipykernel, which the channel lacks) go into the environment
    # once it is in place, and its Python becomes the server's python3 kernel.
    install = "uv pip install --python ${KERNEL_PYTHON_PREFIX}/bin/python --requirement"
    assert dockerfile.index(copy) < dockerfile.index(install)
    assert "-m ipykernel install --prefix /srv/venv --name python3" in dockerfile
    assert pack.generated_files(context)[pack.LIST] == "ipykernel\npyfiglet\n"

    # The same environment again: found by its key, nothing downloaded or staged.
    engine.existing.add(tag)
    _, log = build_env(context, engine)
    assert f"Environment {tag} exists" in log and "downloaded" not in log
    assert len(engine.built) == 1


def test_without_a_reachable_channel_the_pypi_route_is_taken_and_said(
    repo: Path, channel: ServedChannel, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (repo / "environment.yml").write_text("dependencies:\n  - tabulate=0.9\n  - r-base\n")
    monkeypatch.setattr(
        "bindery.builder.buildpacks.conda.packages_on_index",
        lambda names, url, ca: {name: name == "tabulate" for name in names},
    )
    pack = EnvironmentYmlBuildPack(base_image="localhost/bindery-base:test")
    # No channels listed: the default channels, which this server does not have.
    context = BuildContext(conda_channel_alias=channel.alias, conda_pkgs_dir=str(cache))
    generated = pack.generated_files(context)
    notes = "\n".join(pack.notes())
    assert f"conda-forge at {channel.alias} could not be reached" in notes and "404" in notes
    assert "skipped conda dependencies not on the package index: r-base" in notes
    assert generated == {pack.LIST: "tabulate==0.9.*\n"}
    assert pack.overlays() == []


def test_a_url_channel_is_refused_before_any_request(
    repo: Path, channel: ServedChannel, cache: Path
) -> None:
    (repo / "environment.yml").write_text(
        f"channels: [{channel.alias}/{CHANNEL}]\ndependencies: [bindery-probe]\n"
    )
    before = len(channel.requests)
    pack = EnvironmentYmlBuildPack(base_image="localhost/bindery-base:test")
    context = BuildContext(conda_channel_alias=channel.alias, conda_pkgs_dir=str(cache))
    with pytest.raises(conda.CondaError, match="not a channel name"):
        pack.generated_files(context)
    assert len(channel.requests) == before


def test_the_lock_decides_the_key(repo: Path, tmp_path: Path) -> None:
    """Two locks, two keys; the same lock, the same key."""
    pack = EnvironmentYmlBuildPack(base_image="localhost/bindery-base:test")
    (repo / "environment.yml").write_text("dependencies: [x]\n")
    keys = []
    for n, sha in enumerate(["a" * 64, "b" * 64, "a" * 64]):
        lock = conda.Lock(("c",), ({"url": "http://h/c/noarch/x.conda", "sha256": sha},))
        directory = tmp_path / f"ctx{n}"
        pack._write_env_context(directory, BUILD_ARGS, {pack.LOCK: lock.text()})
        keys.append(context_digest(directory))
    assert keys[0] != keys[1] and keys[0] == keys[2]


def locked(*packages: tuple[str, str]) -> conda.Lock:
    records = tuple(
        {"name": name, "version": version, "url": f"http://h/c/linux-64/{name}.conda"}
        for name, version in packages
    )
    return conda.Lock(("c",), records)


@pytest.mark.parametrize(
    ("python", "nb_prefix", "kernel_prefix"),
    [
        ("3.11.2", "/srv/conda/envs/notebook", "/srv/conda/envs/notebook"),
        # repo2docker's separate kernel environment; Jupyter is /srv/venv's.
        ("3.6.15", "/srv/venv", "/srv/conda/envs/kernel"),
    ],
)
def test_what_the_session_is_told_follows_the_environment(
    repo: Path,
    monkeypatch: pytest.MonkeyPatch,
    python: str,
    nb_prefix: str,
    kernel_prefix: str,
) -> None:
    (repo / "environment.yml").write_text(f"dependencies:\n  - python={python}\n  - ipykernel\n")
    lock = locked(("python", python), ("ipykernel", "6.0"), ("micromamba", "2.3.3"))
    monkeypatch.setattr(conda, "resolve", lambda *args: lock)
    pack = EnvironmentYmlBuildPack(base_image="localhost/bindery-base:test")
    generated = pack.generated_files(BuildContext(conda_channel_alias="http://h"))
    # The channel has ipykernel and micromamba: nothing from the index, a conda command.
    assert generated[pack.LIST] == ""
    assert not any("micromamba" in note or "ipykernel" in note for note in pack.notes())
    dockerfile = pack.render_env(BUILD_ARGS, pack.generated_file_names())
    assert f"COPY --chown=1000:1000 conda-env/ {kernel_prefix}/" in dockerfile
    assert f"ENV NB_PYTHON_PREFIX={nb_prefix}" in dockerfile
    assert f"ENV KERNEL_PYTHON_PREFIX={kernel_prefix}" in dockerfile
    assert "ENV MAMBA_EXE=${KERNEL_PYTHON_PREFIX}/bin/micromamba" in dockerfile
    assert "ENV CONDA_DEFAULT_ENV=${KERNEL_PYTHON_PREFIX}" in dockerfile
