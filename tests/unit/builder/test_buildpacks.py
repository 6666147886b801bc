"""Dockerfiles the buildpack renders for repositories of different shapes."""

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from bindery.builder.buildpacks import BinderyPythonBuildPack

BASE = "localhost/bindery-base:test"
BUILD_ARGS = {"NB_USER": "jovyan", "NB_UID": "1000"}


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Path]:
    # repo2docker renders with the checkout as the working directory.
    cwd = os.getcwd()
    os.chdir(tmp_path)
    yield tmp_path
    os.chdir(cwd)


def write(repo: Path, files: dict[str, str]) -> None:
    for name, content in files.items():
        (repo / name).parent.mkdir(parents=True, exist_ok=True)
        (repo / name).write_text(content)


def render(labels: dict[str, str] | None = None) -> list[str]:
    pack = BinderyPythonBuildPack(base_image=BASE)
    pack.labels.update(labels or {})
    return pack.render(BUILD_ARGS).splitlines()


def index(lines: list[str], prefix: str) -> int:
    return next(i for i, line in enumerate(lines) if line.startswith(prefix))


def test_requirements_install_before_the_repository_is_copied(repo: Path) -> None:
    write(repo, {"requirements.txt": "pyfiglet\n", "hello.ipynb": "{}"})
    lines = render()
    assert lines[0] == f"FROM {BASE}"
    copy_reqs = index(lines, "COPY --chown=1000:1000 src/requirements.txt ")
    install = index(lines, "RUN --mount=type=secret,id=pipca")
    copy_repo = index(lines, "COPY --chown=1000:1000 src/ ${REPO_DIR}/")
    assert copy_reqs < install < copy_repo
    assert lines[install].endswith('uv pip install --requirement "requirements.txt"')
    # As jovyan, into the venv, with the uv cache as a cache mount and the CA as a secret.
    assert lines[install - 1] == "USER ${NB_USER}"
    assert "--mount=type=cache,target=/home/jovyan/.cache/uv,uid=1000" in lines[install]
    assert "USER ${NB_USER}" in lines[copy_repo:]
    assert "WORKDIR ${REPO_DIR}" in lines
    assert "ARG REPO_DIR=/home/${NB_USER}" in lines


@pytest.mark.parametrize("folder", ["binder", ".binder"])
def test_binder_folder_wins_over_the_root(repo: Path, folder: str) -> None:
    write(repo, {"requirements.txt": "ignored\n", f"{folder}/requirements.txt": "pyfiglet\n"})
    text = "\n".join(render())
    assert f'uv pip install --requirement "{folder}/requirements.txt"' in text
    assert f"src/{folder}/requirements.txt ${{REPO_DIR}}/{folder}/requirements.txt" in text
    assert '--requirement "requirements.txt"' not in text


def test_no_requirements_means_no_install_step(repo: Path) -> None:
    write(repo, {"hello.ipynb": "{}"})
    text = "\n".join(render())
    assert "uv pip install" not in text
    assert "COPY --chown=1000:1000 src/ ${REPO_DIR}/" in text


def test_requirements_naming_local_files_install_after_the_copy(repo: Path) -> None:
    write(repo, {"requirements.txt": "-e .\n", "setup.py": ""})
    lines = render()
    install = index(lines, "RUN --mount=type=secret")
    assert index(lines, "COPY --chown=1000:1000 src/ ${REPO_DIR}/") < install
    assert not any(line.startswith("COPY --chown=1000:1000 src/requirements.txt") for line in lines)


def test_apt_postbuild_and_start(repo: Path) -> None:
    write(
        repo,
        {
            "binder/apt.txt": "cowsay\n# comment\nfortune\n",
            "binder/postBuild": "#!/bin/sh\necho hi\n",
            "binder/start": '#!/bin/sh\nexec "$@"\n',
        },
    )
    lines = render()
    apt = index(lines, "RUN --mount=type=secret")
    assert lines[apt].endswith("build-ca.sh && apt-get -qq update && \\")
    assert "apt-get install --yes --no-install-recommends cowsay fortune" in lines[apt + 1]
    assert apt < index(lines, "COPY --chown=1000:1000 src/ ${REPO_DIR}/")
    post = index(lines, "RUN chmod +x binder/postBuild")
    assert lines[post + 1].endswith(" ./binder/postBuild")
    assert 'ENV R2D_ENTRYPOINT="${REPO_DIR}/binder/start"' in lines


def test_label_values_cannot_break_out_of_the_dockerfile(repo: Path) -> None:
    hostile = 'https://example.org/x"\nRUN touch /pwned $HOME \\'
    lines = render({"repo2docker.repo": hostile})
    label = next(line for line in lines if line.startswith("LABEL repo2docker.repo="))
    expected = 'LABEL repo2docker.repo="https://example.org/x\\" RUN touch /pwned \\$HOME \\\\"'
    assert label == expected
    assert not any(line.startswith("RUN touch") for line in lines)
