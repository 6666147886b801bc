"""R repositories (install.R, DESCRIPTION, runtime.txt ``r-``): the CRAN mirror setting, what the
R pack renders for each form of mirror, and the clear refusals (issue 3)."""

from pathlib import Path

import pytest
from pydantic import ValidationError

from bindery.builder.buildpacks.base import GENERATED_DIR, BuildContext, UnsupportedRepository
from bindery.builder.buildpacks.r import R_VERSION, RBuildPack
from bindery.builder.cran import (
    CRAN_MOUNT,
    PUBLIC_CRAN,
    CranMirror,
    check_mirror_setting,
    rprofile,
)
from bindery.builder.settings import BuilderSettings
from tests.support.cranmirror import make_cran_mirror
from tests.unit.builder.test_buildpacks import (
    BUILD_ARGS,
    content_lines,
    env_key,
    env_lines,
    picked,
    write,
)

PPM = "https://ppm.example.org/cran/__linux__/bookworm/latest"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ""),
        (f"  {PPM}/ ", PPM),
        ("http://cran.internal:8080/", "http://cran.internal:8080"),
        ("/srv/cran//mirror/", "/srv/cran/mirror"),
    ],
)
def test_mirror_settings_accepted(value: str, expected: str) -> None:
    assert check_mirror_setting(value) == expected


@pytest.mark.parametrize(
    ("value", "complaint"),
    [
        ("cran/mirror", "not an http/https URL nor an absolute directory"),
        ("ftp://cran.example.org/", "not an http/https URL"),
        ("https://", "not an http/https URL"),
        ("https://user:token@ppm.example.org/cran", "credentials"),
        ('https://ppm.example.org/cran"); system("id', "cannot quote"),
        ("https://ppm.example.org/cran\\x", "cannot quote"),
        ("/srv/cran:/etc", "only letters"),
        ("/srv/cran,rw", "only letters"),
    ],
)
def test_mirror_settings_refused(value: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint.replace("(", r"\(").replace(")", r"\)")):
        check_mirror_setting(value)


def test_the_builder_refuses_to_start_with_a_bad_mirror_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BINDERY_CRAN_MIRROR", "/srv/cran/")
    assert BuilderSettings().cran_mirror == "/srv/cran"
    monkeypatch.setenv("BINDERY_CRAN_MIRROR", "cran")
    with pytest.raises(ValidationError, match="not an http"):
        BuilderSettings()


def test_a_url_mirror_is_the_repository_of_builds_and_sessions() -> None:
    mirror = CranMirror(PPM)
    assert mirror.volumes() == []
    assert mirror.problem() == ""
    assert rprofile(mirror).splitlines()[-1] == f'options(repos = c(CRAN = "{PPM}"))'
    assert PPM in mirror.describe()


def test_a_directory_mirror_is_mounted_for_builds_only(tmp_path: Path) -> None:
    mirror = CranMirror(str(make_cran_mirror(tmp_path / "cran")))
    assert mirror.volumes() == [f"{tmp_path}/cran:{CRAN_MOUNT}:ro"]
    assert mirror.problem() == ""
    profile = rprofile(mirror)
    # The mount exists in build steps only; sessions fall back to the public CRAN.
    assert f'repos <- "{PUBLIC_CRAN}"' in profile
    assert f'if (dir.exists("{CRAN_MOUNT}/src/contrib")) repos <- "file://{CRAN_MOUNT}"' in profile
    # The host's path is the operator's business, not the build log's.
    assert str(tmp_path) not in mirror.describe() + profile


def test_a_directory_that_is_no_repository_or_unreadable_is_a_problem(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no package index" in CranMirror(str(empty)).problem()
    mirror = make_cran_mirror(tmp_path / "cran")
    (mirror / "src" / "contrib").chmod(0o700)
    assert "not readable by everyone" in CranMirror(str(mirror)).problem()


def test_install_r_installs_r_before_the_repository_and_runs_install_r_as_the_user(
    repo: Path,
) -> None:
    write(repo, {"install.R": 'install.packages("x")\n', "requirements.txt": "pyfiglet\n"})
    pack = picked()
    assert isinstance(pack, RBuildPack)
    context = BuildContext(cran_mirror=PPM)
    generated = pack.generated_files(context)
    assert generated["Rprofile.site"] == rprofile(CranMirror(PPM))
    assert f"R {R_VERSION} from Debian. R packages come from the CRAN mirror {PPM}." in (
        pack.notes()
    )
    env = env_lines(pack, sorted(generated))
    apt = next(i for i, line in enumerate(env) if "r-base-core" in line)
    step = " ".join(env[apt : apt + 6])
    assert "--no-install-recommends r-base-core r-base-dev r-cran-irkernel r-cran-remotes" in step
    assert "rm -rf /var/lib/apt/lists/*" in step
    # R's layer comes before anything of the repository, so R repositories share it.
    copy = env.index("COPY --chown=1000:1000 src/install.R ${REPO_DIR}/install.R")
    profile = next(i for i, line in enumerate(env) if "Rprofile.site >> /etc/R" in line)
    run = next(i for i, line in enumerate(env) if "install.R && touch /tmp/.preassembled" in line)
    assert apt < copy < profile < run
    assert [line for line in env[:run] if line.startswith("USER ")][-1] == "USER ${NB_USER}"
    assert f"cat {GENERATED_DIR}/Rprofile.site" in env[profile]
    assert "ENV R_LIBS_USER=${APP_BASE}/rlibs" in env
    # Python's files are read as well, as repo2docker's R pack does.
    assert any("uv pip install" in line for line in env)
    content = "\n".join(content_lines(pack))
    assert "if [ ! -f /tmp/.preassembled ]; then Rscript" in content
    assert pack.volumes(context) == []


def test_binder_install_r_and_root_description(repo: Path) -> None:
    write(repo, {"binder/install.R": "", "DESCRIPTION": "Package: x\n"})
    pack = picked()
    assert isinstance(pack, RBuildPack)
    assert "COPY --chown=1000:1000 src/binder/install.R ${REPO_DIR}/binder/install.R" in (
        env_lines(pack)
    )
    # With a binder/ folder the root DESCRIPTION is not read (repo2docker's rule).
    assert "remotes::install_local" not in "\n".join(content_lines(pack))


def test_a_root_description_is_installed_with_the_repository_after_its_dependencies(
    repo: Path,
) -> None:
    write(repo, {"DESCRIPTION": "Package: x\nImports: y\n"})
    pack = picked()
    assert isinstance(pack, RBuildPack)
    env = env_lines(pack)
    assert not any("Rscript" in line for line in env)
    # Its dependencies with the environment, keyed on the DESCRIPTION ...
    copy = env.index("COPY --chown=1000:1000 src/DESCRIPTION ${REPO_DIR}/DESCRIPTION")
    deps = next(i for i, line in enumerate(env) if "remotes::install_deps" in line)
    assert copy < deps
    assert env[deps].endswith(
        "R --no-save --no-restore --no-init-file --no-environ --quiet -e "
        "\"remotes::install_deps(upgrade = 'never')\""
    )
    # ... the package itself with the repository, from its folder (no `R CMD build`).
    assert content_lines(pack)[-1].endswith(
        "-e \"remotes::install_local(build = FALSE, upgrade = 'never')\""
    )


def test_the_environment_key_follows_install_r_and_the_mirror(
    repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    tmp = tmp_path_factory.mktemp("contexts")
    context = BuildContext(cran_mirror=PPM)
    write(repo, {"install.R": 'install.packages("x")\n', "a.ipynb": "{}"})
    first = env_key(picked(), tmp, context)
    write(repo, {"a.ipynb": '{"cells": []}'})
    assert env_key(picked(), tmp, context) == first
    assert env_key(picked(), tmp, BuildContext(cran_mirror="https://cran.example.org")) != first
    write(repo, {"install.R": 'install.packages("y")\n'})
    assert env_key(picked(), tmp, context) != first


@pytest.mark.parametrize("version", ["4", "4.2", "4.2.2"])
def test_runtime_txt_asking_for_debians_r_is_honoured(repo: Path, version: str) -> None:
    write(repo, {"runtime.txt": f"r-{version}\n"})
    pack = picked()
    assert isinstance(pack, RBuildPack)
    pack.check()


@pytest.mark.parametrize("runtime", ["r-4.3", "r-4.1.3", "r-3.6-2020-01-01"])
def test_runtime_txt_asking_for_another_r_fails_naming_the_one_there(
    repo: Path, runtime: str
) -> None:
    write(repo, {"runtime.txt": runtime + "\n"})
    context = {"bindery": BuildContext(cran_mirror=PPM)}
    with pytest.raises(UnsupportedRepository, match=f"r-{runtime.split('-')[1]}.*R 4.2.2 only"):
        list(picked().build(None, "img", 0, BUILD_ARGS, [], context))


def test_a_snapshot_date_cannot_be_honoured_and_the_log_says_so(repo: Path) -> None:
    write(repo, {"runtime.txt": "r-4.2-2024-01-01\n", "install.R": ""})
    pack = picked()
    pack.generated_files(BuildContext(cran_mirror=PPM))
    assert any("2024-01-01" in note and "no snapshots" in note for note in pack.notes())


@pytest.mark.parametrize(
    "files",
    [
        {"install.R": ""},
        {"binder/install.R": ""},
        {"DESCRIPTION": "Package: x\n"},
        {"runtime.txt": "r-4.2-2024-01-01\n"},
    ],
)
def test_without_a_mirror_r_repositories_fail_at_once_naming_the_host(
    repo: Path, files: dict[str, str]
) -> None:
    write(repo, files)
    pack = picked()
    assert isinstance(pack, RBuildPack)
    with pytest.raises(UnsupportedRepository, match=r"cloud\.r-project\.org.*no mirror"):
        list(pack.build(None, "img", 0, BUILD_ARGS, [], {}))


def test_a_mirror_directory_without_an_index_fails_before_building(
    repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    write(repo, {"install.R": ""})
    context = BuildContext(cran_mirror=str(tmp_path_factory.mktemp("empty")))
    with pytest.raises(UnsupportedRepository, match="no package index"):
        list(picked().build(None, "img", 0, BUILD_ARGS, [], {"bindery": context}))
