"""What the buildpacks make of repositories of different shapes: detection, the environment's
Dockerfile and key, the repository's thin layer, and the clear refusals."""

import json
from pathlib import Path

import pytest
from repo2docker.buildpacks.docker import DockerBuildPack

from bindery.builder import condanames
from bindery.builder.buildpacks import BUILDPACKS, DEFAULT_BUILDPACK
from bindery.builder.buildpacks import conda as conda_pack
from bindery.builder.buildpacks.base import (
    BinderyBuildPack,
    BuildContext,
    UnsupportedRepository,
    context_digest,
)
from bindery.builder.buildpacks.conda import EnvironmentYmlBuildPack, conda_to_pip
from bindery.builder.buildpacks.pipfile import PipfileBuildPack, pipfile_requirement
from bindery.builder.buildpacks.python import PythonBuildPack
from bindery.builder.pythons import Pythons

BASE = "localhost/bindery-base:test"
BUILD_ARGS = {"NB_USER": "jovyan", "NB_UID": "1000"}


def write(repo: Path, files: dict[str, str]) -> None:
    for name, content in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(content)


def picked() -> BinderyBuildPack:
    """The buildpack repo2docker would pick, as buildchild configures it."""
    for pack in BUILDPACKS:
        candidate = pack(base_image=BASE)
        if candidate.detect():
            return candidate  # type: ignore[no-any-return]
    return DEFAULT_BUILDPACK(base_image=BASE)


def env_lines(pack: BinderyBuildPack, generated: list[str] | None = None) -> list[str]:
    return pack.render_env(BUILD_ARGS, generated or []).splitlines()


def content_lines(pack: BinderyBuildPack, repo_url: str = "https://example.org/r") -> list[str]:
    return pack.render_content(BUILD_ARGS, "reg/env:key", repo_url).splitlines()


def installs_in(lines: list[str]) -> list[str]:
    """The commands of the RUN steps that install something, without the mounts."""
    return [line.split(" && ", 1)[1] for line in lines if "uv pip install" in line]


def env_key(pack: BinderyBuildPack, tmp: Path, context: BuildContext | None = None) -> str:
    directory = tmp / f"ctx-{len(list(tmp.iterdir()))}"
    generated = pack.generated_files(context or BuildContext())
    pack._write_env_context(directory, BUILD_ARGS, generated)
    return context_digest(directory)


def test_requirements_install_in_the_environment_and_the_repository_comes_after(
    repo: Path,
) -> None:
    write(repo, {"requirements.txt": "pyfiglet\n", "hello.ipynb": "{}"})
    pack = picked()
    assert isinstance(pack, PythonBuildPack)
    env = env_lines(pack)
    assert env[0] == f"FROM {BASE}"
    copy = env.index("COPY --chown=1000:1000 src/requirements.txt ${REPO_DIR}/requirements.txt")
    install = next(i for i, line in enumerate(env) if "uv pip install" in line)
    assert copy < install
    assert env[install].endswith('uv pip install --requirement "requirements.txt"')
    # As jovyan, with the uv cache as a cache mount and the CA and index as secrets.
    assert env[install - 1] == "USER ${NB_USER}"
    assert "--mount=type=cache,id=@ENV_CACHE_ID@,target=/home/jovyan/.cache/uv" in env[install]
    assert "--mount=type=secret,id=pipindex" in env[install]
    content = content_lines(pack)
    assert content[0] == "FROM reg/env:key"
    assert "COPY --chown=1000:1000 . ${REPO_DIR}/" in content
    assert not any("uv pip install" in line for line in content)


def test_a_content_only_change_keeps_the_environment_key(
    repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("contexts")
    write(repo, {"requirements.txt": "pyfiglet\n", "apt.txt": "jq\n", "a.ipynb": "{}"})
    first = env_key(picked(), tmp)
    write(repo, {"a.ipynb": '{"cells": []}', "data.csv": "1,2\n"})
    assert env_key(picked(), tmp) == first
    write(repo, {"requirements.txt": "pyfiglet==1.0.2\n"})
    assert env_key(picked(), tmp) != first
    write(repo, {"requirements.txt": "pyfiglet\n", "apt.txt": "jq curl\n"})
    assert env_key(picked(), tmp) != first


@pytest.mark.parametrize("folder", ["binder", ".binder"])
def test_binder_folder_wins_over_the_root(repo: Path, folder: str) -> None:
    write(repo, {"requirements.txt": "ignored\n", f"{folder}/requirements.txt": "pyfiglet\n"})
    text = "\n".join(env_lines(picked()))
    assert f'uv pip install --requirement "{folder}/requirements.txt"' in text
    assert '--requirement "requirements.txt"' not in text


def test_both_binder_folders_are_an_error(repo: Path) -> None:
    write(repo, {"binder/apt.txt": "jq\n", ".binder/apt.txt": "jq\n"})
    with pytest.raises(RuntimeError, match=r"both a 'binder' and a '\.binder'"):
        picked()


def test_requirements_naming_local_files_install_with_the_repository(repo: Path) -> None:
    write(repo, {"requirements.txt": "-e .\n", "setup.py": ""})
    pack = picked()
    assert not any("uv pip install" in line for line in env_lines(pack))
    content = content_lines(pack)
    copy = content.index("COPY --chown=1000:1000 . ${REPO_DIR}/")
    installs = [i for i, line in enumerate(content) if "uv pip install" in line]
    assert installs and min(installs) > copy
    assert content[installs[-1]].endswith("uv pip install .")


@pytest.mark.parametrize(
    ("files", "installed"),
    [
        ({"setup.py": "from setuptools import setup\nsetup()\n"}, True),
        ({"pyproject.toml": '[project]\nname="x"\n[build-system]\nrequires=["hatchling"]\n'}, True),
        # Tool configuration only: not a project to install.
        ({"pyproject.toml": "[tool.black]\nline-length = 100\n", "requirements.txt": ""}, False),
        # With a binder/ folder repo2docker installs no package.
        ({"setup.py": "", "binder/requirements.txt": "pyfiglet\n"}, False),
    ],
)
def test_python_packages_are_installed_like_repo2docker(
    repo: Path, files: dict[str, str], installed: bool
) -> None:
    write(repo, files)
    assert ("uv pip install ." in "\n".join(content_lines(picked()))) is installed


PYTHONS = Pythons((("3.9", "base:py3.9"), ("3.11", "base:py3.11"), ("3.13", "base:py3.13")), "3.11")


def chosen(context: BuildContext | None = None) -> tuple[str, str, str]:
    """(version, base image the environment is built FROM, warning) for the repository."""
    pack = picked()
    choice = pack.choose_python(context or BuildContext(pythons=PYTHONS))
    assert env_lines(pack)[0] == f"FROM {choice.image}"
    return choice.version, choice.image, choice.warning


@pytest.mark.parametrize(
    ("runtime", "version"),
    [("python-3.9", "3.9"), ("python-3.13", "3.13"), ("python-3.9.7", "3.9"), ("python-3", "3.11")],
)
def test_runtime_txt_picks_that_pythons_base_image(repo: Path, runtime: str, version: str) -> None:
    write(repo, {"runtime.txt": runtime + "\n", "requirements.txt": "numpy\n"})
    assert chosen() == (version, f"base:py{version}", "")


def test_a_python_that_is_not_there_is_the_nearest_with_a_warning_or_refused(
    repo: Path,
) -> None:
    write(repo, {"runtime.txt": "python-3.10\n"})
    version, _, warning = chosen()
    # 3.9 and 3.11 are as close: the newer.
    assert version == "3.11"
    assert "python 3.10" in warning.lower() and "available: 3.9, 3.11, 3.13" in warning
    write(repo, {"runtime.txt": "python-3.14\n"})
    assert chosen()[0] == "3.13"
    refusing = BuildContext(pythons=Pythons(PYTHONS.images, "3.11", "refuse"))
    with pytest.raises(UnsupportedRepository, match=r"3\.14.*available: 3\.9, 3\.11, 3\.13"):
        chosen(refusing)
    write(repo, {"runtime.txt": "python-2.7\n"})
    with pytest.raises(UnsupportedRepository, match=r"2\.7"):
        chosen()


def test_environment_yml_python_pin_picks_the_base_image(repo: Path) -> None:
    write(repo, {"environment.yml": "dependencies:\n  - python=3.9\n  - numpy\n"})
    assert chosen()[0] == "3.9"
    write(repo, {"environment.yml": "dependencies:\n  - python>=3.12\n"})
    assert chosen()[0] == "3.13"


def test_without_pythons_the_pack_keeps_its_base_image(repo: Path) -> None:
    write(repo, {"requirements.txt": "numpy\n"})
    assert chosen(BuildContext()) == ("3.11", BASE, "")


def test_pyproject_requires_python_picks_a_python_that_fits(repo: Path) -> None:
    project = '[project]\nname="x"\nrequires-python="{}"\n[build-system]\nrequires=[]\n'
    write(repo, {"pyproject.toml": project.format(">=3.12")})
    assert chosen()[0] == "3.13"
    write(repo, {"pyproject.toml": project.format("<3.10")})
    assert chosen()[0] == "3.9"
    write(repo, {"pyproject.toml": project.format(">=3.14")})
    with pytest.raises(UnsupportedRepository, match=r"requires Python >=3\.14.*3\.9, 3\.11"):
        chosen()


def test_pipfile_lock_wins_and_local_paths_install_with_the_repository(repo: Path) -> None:
    lock = {
        "default": {
            "tabulate": {"version": "==0.8.10", "markers": "python_version >= '3'"},
            "mine": {"path": ".", "editable": True},
        },
        "develop": {"pyfiglet": {"version": "==1.0.2", "extras": ["x"]}},
    }
    write(repo, {"Pipfile": '[packages]\ntabulate = "*"\n', "Pipfile.lock": json.dumps(lock)})
    pack = picked()
    assert isinstance(pack, PipfileBuildPack)
    generated = pack.generated_files(BuildContext())[PipfileBuildPack.LIST]
    assert generated == "tabulate==0.8.10; python_version >= '3'\npyfiglet[x]==1.0.2\n"
    assert any("uv pip install --requirement" in line for line in env_lines(pack, ["x"]))
    assert installs_in(content_lines(pack)) == ["cd . && uv pip install --editable ."]


def test_pipfile_without_a_lock(repo: Path) -> None:
    write(repo, {"Pipfile": '[packages]\ntabulate = "==0.9.0"\n[dev-packages]\npyfiglet = "*"\n'})
    pack = picked()
    assert isinstance(pack, PipfileBuildPack)
    assert pack.generated_files(BuildContext())[pack.LIST] == "tabulate==0.9.0\npyfiglet\n"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("*", "pkg"),
        (">=1,<2", "pkg>=1,<2"),
        (
            {"git": "https://example.org/p.git", "ref": "abc"},
            "pkg @ git+https://example.org/p.git@abc",
        ),
    ],
)
def test_pipfile_entries(entry: object, expected: str) -> None:
    assert pipfile_requirement("pkg", entry) == (expected, None)


def test_pipfile_refuses_what_could_reach_the_shell() -> None:
    with pytest.raises(UnsupportedRepository):
        pipfile_requirement("pkg", {"path": ". ; rm -rf /"})
    with pytest.raises(UnsupportedRepository):
        pipfile_requirement("pkg; echo", "*")


@pytest.mark.parametrize(
    ("spec", "pip"),
    [
        ("numpy", "numpy"),
        ("numpy=1.26", "numpy==1.26.*"),
        ("numpy=1.26.4=py311h_0", "numpy==1.26.4.*"),
        ("numpy 1.26.*", "numpy==1.26.*"),
        ("numpy>=1.2,<2", "numpy>=1.2,<2"),
        ("numpy >= 1.2", "numpy>=1.2"),
        ("conda-forge::numpy==1.26.4", "numpy==1.26.4"),
    ],
)
def test_conda_specs_become_pip_requirements(spec: str, pip: str) -> None:
    assert conda_to_pip(spec) == pip


def test_environment_yml_installs_what_the_index_has_and_names_what_it_skipped(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(
        repo,
        {
            "environment.yml": "dependencies:\n  - python=3.10\n  - numpy=1.26\n  - r-base\n"
            "  - pip\n  - pip:\n    - pyfiglet\n    - -e .\n",
            "requirements.txt": "ignored\n",
        },
    )
    on_index = {"numpy": True, "r-base": False}
    monkeypatch.setattr(
        conda_pack,
        "packages_on_index",
        lambda names, url, ca: {name: on_index[name] for name in names},
    )
    pack = picked()
    assert isinstance(pack, EnvironmentYmlBuildPack)
    generated = pack.generated_files(BuildContext())[pack.LIST]
    assert generated == "numpy==1.26.*\npyfiglet\n"
    notes = "\n".join(pack.notes())
    assert "skipped conda dependencies not on the package index: r-base" in notes
    # The python pin chooses the base image (test_environment_yml_python_pin_picks_...).
    assert "python" not in generated
    assert installs_in(content_lines(pack)) == ["cd . && uv pip install -e ."]


def test_conda_forge_names_become_the_pypi_distributions_they_are(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """conda-forge's name mapping, not the same name: matplotlib-base is matplotlib, dask is
    dask with the dataframe dependencies conda-forge's dask has, pytorch is torch."""
    write(
        repo,
        {
            "environment.yml": "channels: [conda-forge]\ndependencies:\n"
            "  - matplotlib-base>=3.5\n  - dask=2024.1\n  - conda-forge::pytorch\n"
            "  - python-graphviz\n  - numpy\n  - r-ggplot2\n",
        },
    )
    asked: list[str] = []

    def on_index(names: list[str], url: str, ca: str) -> dict[str, bool]:
        asked.extend(names)
        return {name: not name.startswith("r-") for name in names}

    monkeypatch.setattr(conda_pack, "packages_on_index", on_index)
    pack = picked()
    assert isinstance(pack, EnvironmentYmlBuildPack)
    generated = pack.generated_files(BuildContext())[pack.LIST].splitlines()
    assert generated == [
        "matplotlib>=3.5",
        "dask[complete]==2024.1.*",
        "torch",
        "graphviz",
        "numpy",
    ]
    # The index is asked for the distributions, not the conda names.
    assert sorted(asked) == ["dask", "graphviz", "matplotlib", "numpy", "r-ggplot2", "torch"]
    notes = "\n".join(pack.notes())
    assert "conda-pypi 0.13.1" in notes
    assert "matplotlib-base -> matplotlib, dask -> dask[complete], pytorch -> torch" in notes
    assert "skipped conda dependencies not on the package index: r-ggplot2" in notes


@pytest.mark.parametrize(
    ("conda_name", "pypi"),
    [
        ("matplotlib-base", "matplotlib"),
        ("dask", "dask[complete]"),
        ("dask-core", "dask"),
        ("pytorch", "torch"),
        ("msgpack-python", "msgpack"),
        ("pytables", "tables"),
        ("typing_extensions", "typing-extensions"),
        ("numpy", "numpy"),
        ("some-unknown-package", "some-unknown-package"),
    ],
)
def test_the_mapping_is_conda_forges(conda_name: str, pypi: str) -> None:
    assert condanames.pypi_requirement_name(conda_name) == pypi


@pytest.mark.parametrize(
    ("dependency", "version"),
    [
        ("python=3.9", "3.9"),
        ("python==3.10.4", "3.10"),
        ("python 3.12.*", "3.12"),
        ("python=3", None),
        ("python>=3.9", None),
        ("numpy", None),
    ],
)
def test_the_python_environment_yml_asks_for(
    repo: Path, dependency: str, version: str | None
) -> None:
    write(repo, {"environment.yml": f"dependencies:\n  - {dependency}\n  - numpy\n"})
    pack = picked()
    assert isinstance(pack, EnvironmentYmlBuildPack)
    assert pack.pinned_python() == version


@pytest.mark.parametrize(
    ("files", "host"),
    [
        ({"Project.toml": ""}, "julialang"),
        ({"REQUIRE": ""}, "julialang"),
    ],
)
def test_unreachable_ecosystems_are_refused_naming_the_host(
    repo: Path, files: dict[str, str], host: str
) -> None:
    write(repo, {**files, "requirements.txt": "pyfiglet\n"})
    pack = picked()
    assert pack.render(BUILD_ARGS) == ""
    with pytest.raises(UnsupportedRepository, match=host):
        list(pack.build(None, "img", 0, BUILD_ARGS, [], {}))


def test_a_dockerfile_wins_over_everything(repo: Path) -> None:
    write(repo, {"binder/Dockerfile": "FROM x\n", "binder/requirements.txt": "", "install.R": ""})
    assert isinstance(picked(), DockerBuildPack)


def test_apt_postbuild_and_start(repo: Path) -> None:
    write(
        repo,
        {
            "binder/apt.txt": "cowsay\n# comment\nfortune\n",
            "binder/postBuild": "#!/bin/sh\necho hi\n",
            "binder/start": '#!/bin/sh\nexec "$@"\n',
        },
    )
    pack = picked()
    env = env_lines(pack)
    apt = next(i for i, line in enumerate(env) if "apt-get -qq update" in line)
    assert env[apt].startswith("RUN --mount=type=secret,id=pipca")
    assert "apt-get install --yes --no-install-recommends cowsay fortune" in env[apt + 1]
    content = content_lines(pack)
    post = content.index("RUN chmod +x binder/postBuild")
    assert content[post + 1].endswith(" ./binder/postBuild")
    assert 'ENV R2D_ENTRYPOINT="${REPO_DIR}/binder/start"' in content


def test_label_values_cannot_break_out_of_the_dockerfile(repo: Path) -> None:
    pack = picked()
    pack.labels.update({"repo2docker.repo": 'https://example.org/x"\nRUN touch /pwned $HOME \\'})
    label = next(line for line in content_lines(pack) if line.startswith("LABEL "))
    assert (
        label == 'LABEL repo2docker.repo="https://example.org/x\\" RUN touch /pwned \\$HOME \\\\"'
    )


def test_no_step_mounts_the_uv_cache_of_another_repository_or_environment(repo: Path) -> None:
    """A build that plants code in its uv cache must not change what others install: the
    repository's own scripts get caches of their own, the shared steps none."""
    write(repo, {"requirements.txt": "pyfiglet\n", "postBuild": "#!/bin/sh\necho hi\n"})
    pack = picked()

    def cache_ids(lines: list[str]) -> set[str]:
        return {
            word.split("id=")[1].split(",")[0]
            for line in lines
            for word in line.split()
            if word.startswith("--mount=type=cache")
        }

    first = cache_ids(content_lines(pack, "https://example.org/first"))
    second = cache_ids(content_lines(pack, "https://example.org/second"))
    assert len(first) == 1
    assert next(iter(first)).startswith("uv-repo-")
    assert first.isdisjoint(second)
    # The environment's steps: its key's cache (named once the context is hashed) or none.
    assert cache_ids(env_lines(pack)) == {"@ENV_CACHE_ID@"}


def test_the_environment_ends_as_the_user_without_steps_that_change_nothing(repo: Path) -> None:
    """Each instruction is a step of its own (a cache lookup, or a commit after the install):
    the user is set where it changes, and the install as the user is the last step."""
    write(repo, {"requirements.txt": "pyfiglet\n", "apt.txt": "cowsay\n"})
    steps = [line for line in env_lines(picked()) if line and line[0].isupper()]
    assert [step for step in steps if step.startswith("USER ")] == [
        "USER root",
        "USER ${NB_USER}",
    ]
    assert "uv pip install" in steps[-1]
    # Without installs of its own, an environment still ends as the user.
    (repo / "requirements.txt").unlink()
    (repo / "apt.txt").unlink()
    write(repo, {"hello.ipynb": "{}"})
    assert env_lines(picked())[-1] == "USER ${NB_USER}"


def test_user_installed_tools_are_on_path_in_login_shells_too(repo: Path, tmp_path: Path) -> None:
    """repo2docker's PATH: ~/.local/bin and $REPO_DIR/.local/bin first, also after Debian's
    /etc/profile (the entrypoint is a login shell) has reset it."""
    pack = picked()
    # REPO_DIR (/home/jovyan) spelled out: it is set by the same ENV instruction.
    assert "    PATH=${HOME}/.local/bin:/home/jovyan/.local/bin:${PATH}" in env_lines(pack)
    pack._write_env_context(tmp_path / "ctx", BUILD_ARGS, {})
    profile = (tmp_path / "ctx" / "session-path.sh").read_text()
    assert 'export PATH="$HOME/.local/bin:$REPO_DIR/.local/bin:$PATH"' in profile
    assert "COPY --chmod=0644 session-path.sh /etc/profile.d/repo2docker-path.sh" in env_lines(pack)


def test_a_root_ignore_file_does_not_hide_the_binder_folder(repo: Path) -> None:
    """As repo2docker: with a binder/ folder only its ignore files count."""
    write(
        repo,
        {
            ".dockerignore": "binder/\n",
            "binder/.containerignore": "# big files\n\ndata/\n",
            "binder/postBuild": "#!/bin/sh\n",
            "binder/requirements.txt": "numpy\n",
        },
    )
    assert picked().context_ignores() == ("data/\n!binder/postBuild\n!binder/requirements.txt\n")


def test_ignore_files_keep_the_configuration_files_in(repo: Path) -> None:
    write(repo, {".dockerignore": "*\n", "postBuild": "#!/bin/sh\n", "start": "#!/bin/sh\n"})
    assert picked().context_ignores() == "*\n!postBuild\n!start\n"
