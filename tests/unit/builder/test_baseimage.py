"""The base image's name: Python and scripts/base-image.sh must hash the same bytes the same way."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from bindery.builder.baseimage import (
    CONTEXT_DIR,
    UV,
    base_image_name,
    base_image_tag,
    debian_pythons,
    python_sources,
)
from bindery.builder.settings import BuilderSettings

REPO = Path(__file__).resolve().parents[3]
# The pipeline scripts/base-image.sh runs, for contexts other than the real one.
SHELL_HASH = (
    "find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-12"
)


def shell_tag(context: Path) -> str:
    out = subprocess.run(["bash", "-c", SHELL_HASH], cwd=context, capture_output=True, text=True)
    return out.stdout.strip()


def test_python_names_the_images_the_script_builds() -> None:
    out = subprocess.run(
        ["bash", str(REPO / "scripts/base-image.sh"), "--name"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == [base_image_name(version) for version in debian_pythons()]
    assert base_image_name("3.9") == f"localhost/bindery-base:{base_image_tag()}-py3.9"


def test_the_script_builds_the_versions_it_is_given() -> None:
    def names(*args: str, env: dict[str, str] | None = None) -> list[str]:
        out = subprocess.run(
            ["bash", str(REPO / "scripts/base-image.sh"), "--name", *args],
            capture_output=True,
            text=True,
            check=True,
            env={"PATH": "/usr/bin:/bin", **(env or {})},
        )
        return out.stdout.split()

    assert names("3.13") == [base_image_name("3.13")]
    # The builder's setting, as pydantic reads it (JSON) or as a person writes it (words).
    listed = [base_image_name("3.9"), base_image_name("3.11")]
    assert names(env={"BINDERY_PYTHON_VERSIONS": '["3.9", "3.11"]'}) == listed
    assert names(env={"BINDERY_PYTHON_VERSIONS": "3.9 3.11"}) == listed
    unknown = subprocess.run(
        ["bash", str(REPO / "scripts/base-image.sh"), "--name", "2.7"],
        capture_output=True,
        text=True,
    )
    assert unknown.returncode == 2 and "no Python 2.7" in unknown.stderr


def test_every_python_has_a_lock_and_a_source() -> None:
    sources = python_sources()
    assert sources["3.11"] == "bookworm" and debian_pythons() == ["3.9", "3.11", "3.13"]
    assert {v for v, source in sources.items() if source == UV} == {"3.10", "3.12", "3.14"}
    for version in sources:
        assert (CONTEXT_DIR / f"requirements-{version}.txt").is_file(), version


def test_a_python_from_uv_needs_the_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("BINDERY_")]:
        monkeypatch.delenv(name)
    out = subprocess.run(
        ["bash", str(REPO / "scripts/base-image.sh"), "--name", "3.12"],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2 and "BINDERY_PYTHON_INSTALL_MIRROR" in out.stderr
    with pytest.raises(ValidationError, match=r"3\.12 comes from uv"):
        BuilderSettings(python_versions=["3.11", "3.12"])
    settings = BuilderSettings(
        python_versions=["3.11", "3.12"], python_install_mirror="http://127.0.0.1:9/pbs"
    )
    assert settings.python_versions == ["3.11", "3.12"]
    with pytest.raises(ValidationError, match=r"no base image recipe for Python 2\.7"):
        BuilderSettings(python_versions=["2.7"])


def test_agreement_holds_for_nested_files_in_byte_order(tmp_path: Path) -> None:
    # '.' sorts before '/', and upper case before lower case, in byte order: the cases where a
    # locale-aware sort or a per-directory walk would disagree with the script.
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b").write_text("nested")
    (tmp_path / "a.txt").write_text("dot")
    (tmp_path / "B").write_text("upper")
    (tmp_path / "b").write_text("lower")
    assert base_image_tag(tmp_path) == shell_tag(tmp_path)


def test_tag_changes_with_content_and_with_names(tmp_path: Path) -> None:
    context = tmp_path / "context"
    shutil.copytree(CONTEXT_DIR, context)
    original = base_image_tag(context)
    assert original == base_image_tag(CONTEXT_DIR)

    (context / "requirements-3.11.txt").write_text("jupyterlab==0.0.1\n")
    edited = base_image_tag(context)
    assert edited != original

    (context / "requirements-3.11.txt").rename(context / "requirements.lock")
    assert base_image_tag(context) not in (original, edited)
    assert base_image_tag(context) == shell_tag(context)
