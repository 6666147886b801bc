"""environment.yml's conda route: channel names, the solve against a real channel served on
127.0.0.1, relocation of the linked files, and what the environment key covers."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bindery.builder import conda
from bindery.builder.buildpacks import BuildContext, EnvironmentYmlBuildPack, context_digest
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


def test_binary_placeholders_keep_every_offset() -> None:
    placeholder = b"/opt/placeholder_placeholder"
    data = b"\x7fELF\0" + placeholder + b"/lib:" + placeholder + b"/x\0after\0"
    out = conda.replace_prefix_binary(data, placeholder, b"/srv/venv")
    assert len(out) == len(data)
    assert out.index(b"after") == data.index(b"after")
    assert out.split(b"\0")[1] == b"/srv/venv/lib:/srv/venv/x"
    with pytest.raises(conda.CondaError, match="longer"):
        conda.replace_prefix_binary(data, b"/opt", b"/srv/venv")


def test_noarch_python_paths_land_in_the_venv() -> None:
    assert conda.noarch_python_path("site-packages/p/__init__.py") == (
        "lib/python3.11/site-packages/p/__init__.py"
    )
    assert conda.noarch_python_path("python-scripts/tool") == "bin/tool"
    assert conda.noarch_python_path("share/doc/p.txt") == "share/doc/p.txt"


def test_entry_points_become_scripts_for_the_venvs_python() -> None:
    name, script = conda.entry_point_script("tool = pkg.cli:App.main")
    assert name == "tool"
    assert script.startswith("#!/srv/venv/bin/python\n")
    assert "from pkg.cli import App\n" in script and "sys.exit(App.main())" in script
    with pytest.raises(conda.CondaError):
        conda.entry_point_script("tool = os; rm -rf /")


def test_a_package_cannot_write_outside_the_environment(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "info").mkdir(parents=True)
    (package / "info/index.json").write_text(
        json.dumps({"name": "x", "version": "1", "build": "0"})
    )
    (package / "info/paths.json").write_text(json.dumps({"paths": [{"_path": "../escape"}]}))
    with pytest.raises(conda.CondaError, match="outside the environment"):
        conda.link_package(package, {}, tmp_path / "staging")
    assert not (tmp_path / "escape").exists()


def test_solve_download_and_link(channel: ServedChannel, cache: Path, tmp_path: Path) -> None:
    lock = conda.resolve([CHANNEL], ["bindery-probe"], channel.alias, cache)

    # Python is the base image's: solved as present, never installed from the channel.
    assert [r["name"] for r in lock.records] == ["bindery-probe-data", "bindery-probe"]
    text = json.loads(lock.text())
    assert text["channels"] == [CHANNEL]
    assert all(
        p["url"].startswith(channel.alias) and len(p["sha256"]) == 64 for p in text["packages"]
    )

    staging = tmp_path / "prefix"
    log = list(conda.stage(lock, staging, cache / "pkgs", ""))
    assert "2 downloaded, 0 from the package cache" in log[-1]
    site = staging / "lib/python3.11/site-packages"
    assert f'__version__ = "{PROBE_VERSION}"' in (site / "bindery_probe/__init__.py").read_text()
    entry = staging / "bin/bindery-probe"
    assert entry.read_text().startswith("#!/srv/venv/bin/python\n")
    assert os.access(entry, os.X_OK)
    assert (staging / "share/bindery-probe/prefix.txt").read_text() == (
        "/srv/venv/share/bindery-probe\n"
    )
    assert (staging / "bin/bindery-probe-where").read_text() == "#!/bin/sh\necho /srv/venv\n"
    assert os.access(staging / "bin/bindery-probe-where", os.X_OK)
    binary = (staging / "lib/bindery-probe.bin").read_bytes()
    assert b"/srv/venv/lib/probe.so\0" in binary and PLACEHOLDER.encode() not in binary
    meta = json.loads((staging / "conda-meta/bindery-probe-1.2.3-pyh_0.json").read_text())
    assert meta["url"].endswith("bindery-probe-1.2.3-pyh_0.conda")
    assert "bin/bindery-probe" in meta["files"]

    # A second environment with the same packages downloads nothing.
    log = list(conda.stage(lock, tmp_path / "again", cache / "pkgs", ""))
    assert "0 downloaded, 2 from the package cache" in log[-1]
    # A damaged cached archive is fetched again, not used.
    archive = cache / "pkgs/bindery-probe-1.2.3-pyh_0.conda"
    archive.write_bytes(b"damaged")
    log = list(conda.stage(lock, tmp_path / "third", cache / "pkgs", ""))
    assert "1 downloaded, 1 from the package cache" in log[-1]


def test_a_package_whose_bytes_differ_from_the_repodata_is_refused(
    channel: ServedChannel, cache: Path, tmp_path: Path
) -> None:
    lock = conda.resolve([CHANNEL], ["bindery-probe"], channel.alias, cache)
    records = [
        {**r, "sha256": "0" * 64} if r["name"] == "bindery-probe" else r for r in lock.records
    ]
    tampered = conda.Lock(lock.channels, tuple(records))
    with pytest.raises(conda.CondaError, match="sha256"):
        list(conda.stage(tampered, tmp_path / "prefix", cache / "pkgs", ""))
    assert not (cache / "pkgs/bindery-probe-1.2.3-pyh_0.conda").exists()


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
        f"channels: [{CHANNEL}]\ndependencies:\n  - python=3.10\n  - bindery-probe\n"
        "  - pip:\n    - pyfiglet\n"
    )
    context = BuildContext(conda_channel_alias=channel.alias, conda_pkgs_dir=str(cache))
    engine = FakeEngine(set())
    pack, log = build_env(context, engine)

    assert f"2 conda packages solved from {CHANNEL} at {channel.alias}" in log
    assert "asks for Python 3.10" in log and "using Python 3.11" in log
    assert "2 downloaded, 0 from the package cache" in log
    ((tag, files),) = engine.built
    assert "generated/environment-conda-lock.json" in files
    assert "conda-prefix/lib/python3.11/site-packages/bindery_probe/__init__.py" in files
    dockerfile = pack.render_env(BUILD_ARGS, pack.generated_file_names())
    copy = "COPY --chown=1000:1000 conda-prefix/ /srv/venv/"
    assert copy in dockerfile
    # The pip: section installs after the conda packages are in place.
    assert dockerfile.index(copy) < dockerfile.index("uv pip install --requirement")

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
        "bindery.builder.buildpacks.packages_on_index",
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
