"""default.nix repositories: what their code needs, the mirror settings, the Dockerfiles and the
start script the Nix pack makes, and the refusal without a channel."""

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bindery.builder import nixpack
from bindery.builder.buildpacks import BUILDPACKS
from bindery.builder.buildpacks.base import BuildContext, UnsupportedRepository
from bindery.builder.buildpacks.nix import NixBuildPack
from bindery.builder.nixpack import NixMirror, needs
from tests.unit.builder.test_buildpacks import BASE, BUILD_ARGS, write

BUILTINS_ONLY = """\
# A shell needing nothing but builtins.
let
  greeting = derivation {
    name = "greeting";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo hi > $out" ];
  };
in derivation { name = "shell"; system = builtins.currentSystem; builder = "/bin/sh";
  GREETING = greeting; }
"""


class Client:
    """Records the builds a pack asks for; no environment image exists yet."""

    def __init__(self) -> None:
        self.builds: list[dict[str, Any]] = []

    def inspect_image(self, image: str) -> None:
        return None

    def build(self, **kwargs: Any) -> Iterator[str]:
        dockerfile = Path(kwargs.get("dockerfile") or Path(kwargs["path"], "Dockerfile"))
        self.builds.append({**kwargs, "text": dockerfile.read_text()})
        return iter(())


def build(context: BuildContext) -> tuple[NixBuildPack, Client]:
    pack = next(p(base_image=BASE) for p in BUILDPACKS if p(base_image=BASE).detect())
    assert isinstance(pack, NixBuildPack)
    client = Client()
    list(pack.build(client, "img", 0, BUILD_ARGS, [], {"bindery": context}))
    return pack, client


@pytest.mark.parametrize(
    ("text", "search_paths", "fetches", "local_files"),
    [
        (BUILTINS_ONLY, set(), False, False),
        ("with import <nixpkgs> {}; mkShell { buildInputs = [ hello ]; }", {"nixpkgs"}, 0, 0),
        ("{ pkgs ? import <nixpkgs/lib> {} }: pkgs", {"nixpkgs/lib"}, False, False),
        ('import (builtins.fetchTarball "https://example.org/x.tar.gz") {}', set(), True, 0),
        ("import ./shell.nix", set(), False, True),
        ("{ src = ../.; }", set(), False, True),
        # Strings and comments are not code: no path, search path or URL there counts.
        ('{ b = "/bin/sh ./x <nixpkgs> https://x.org"; } # import <nixpkgs> ./y', set(), 0, 0),
        ("/* <nixpkgs> */ ''\n  cd ./src; ''${HOME}/x\n''", set(), False, False),
        # ...but an antiquotation is.
        ('"${toString ./data}"', set(), False, True),
        ("{ a = x / y; b = x < y; }", set(), False, False),
    ],
)
def test_what_a_default_nix_needs(
    text: str, search_paths: set[str], fetches: bool, local_files: bool
) -> None:
    found = needs(text)
    assert found.search_paths == search_paths
    assert found.fetches == bool(fetches)
    assert found.local_files == bool(local_files)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", ""),
        ("https://nixos.org/channels/nixos-23.11/", "https://nixos.org/channels/nixos-23.11"),
        ("/srv/mirror/nixpkgs/", "/srv/mirror/nixpkgs"),
    ],
)
def test_channel_setting_accepts_urls_and_directories(value: str, expected: str) -> None:
    assert nixpack.check_channel_setting(value) == expected


@pytest.mark.parametrize(
    "value", ["nixpkgs", "ftp://x.org/c", "https://u:p@x.org/c", "/a:b", "/a b", "https://x/'"]
)
def test_channel_setting_refuses_what_it_cannot_use(value: str) -> None:
    with pytest.raises(ValueError, match="Nix channel"):
        nixpack.check_channel_setting(value)


def test_substituter_setting() -> None:
    check = nixpack.check_substituter_setting
    assert check("https://cache.example.org/") == "https://cache.example.org"
    assert check("file:///srv/cache?trusted=1") == "file:///srv/cache?trusted=1"
    for bad in ("/srv/cache", "file://host/srv", "file:///a:b", "s3://bucket"):
        with pytest.raises(ValueError, match="Nix substituter"):
            check(bad)


def test_mirror_directories_are_mounted_read_only_and_urls_used_as_they_are() -> None:
    mirror = NixMirror(
        "/srv/nixpkgs",
        ("file:///srv/cache?trusted=1", "https://cache.example.org", "file:///srv/other"),
    )
    assert mirror.volumes() == [
        "/srv/nixpkgs:/run/bindery/nix/channel:ro",
        "/srv/cache:/run/bindery/nix/cache-0:ro",
        "/srv/other:/run/bindery/nix/cache-1:ro",
    ]
    assert mirror.build_substituters() == [
        "file:///run/bindery/nix/cache-0?trusted=1",
        "https://cache.example.org",
        "file:///run/bindery/nix/cache-1",
    ]
    url = NixMirror("https://nixos.org/channels/nixpkgs-unstable", ("https://c.example",))
    assert url.volumes() == []
    assert url.channel_script() == (
        "nix-channel --add https://nixos.org/channels/nixpkgs-unstable nixpkgs && "
        "nix-channel --option substituters https://c.example --update nixpkgs"
    )
    assert url.realise("binder/default.nix") == (
        "nix-shell --option substituters https://c.example binder/default.nix --command true"
    )


def test_a_directory_channel_is_copied_and_a_change_makes_a_new_step(tmp_path: Path) -> None:
    (tmp_path / "default.nix").write_text("{}: {}\n")
    mirror = NixMirror(str(tmp_path))
    before = mirror.channel_script()
    assert "tar -C /run/bindery/nix/channel --exclude=.git" in before
    (tmp_path / "lib.nix").write_text("{}\n")
    assert mirror.channel_script() != before


def test_mirror_directories_without_their_index_are_named(tmp_path: Path) -> None:
    assert "no default.nix" in NixMirror(str(tmp_path)).problem()
    (tmp_path / "default.nix").write_text("{}: {}\n")
    assert NixMirror(str(tmp_path)).problem() == ""
    cache = NixMirror(str(tmp_path), (f"file://{tmp_path}/cache",))
    assert "nix-cache-info" in cache.problem()


@pytest.mark.parametrize(
    "text",
    ["with import <nixpkgs> {}; hello\n", 'import (fetchTarball "https://x.org/n.tgz") {}\n'],
)
def test_without_a_channel_nixpkgs_or_the_network_fail_at_once_naming_the_hosts(
    repo: Path, text: str
) -> None:
    write(repo, {"default.nix": text})
    with pytest.raises(UnsupportedRepository, match=r"nixos\.org.*no mirror of it configured"):
        build(BuildContext())


def test_a_needed_file_importing_nixpkgs_counts_too(repo: Path) -> None:
    write(repo, {"default.nix": "import ./nix/shell.nix", "nix/shell.nix": "import <nixpkgs>"})
    with pytest.raises(UnsupportedRepository, match=r"nixos\.org"):
        build(BuildContext())


def test_builtins_only_builds_in_the_environment_without_a_mirror(repo: Path) -> None:
    write(repo, {"default.nix": BUILTINS_ONLY})
    _, client = build(BuildContext())
    env, content = (b["text"] for b in client.builds)
    assert "apt-get install -qq --yes --no-install-recommends nix-bin" in env
    assert "NIX_PATH" not in env
    assert "ENV NIX_BUILD_SHELL=/usr/local/lib/bindery/nix-shell/bash" in env
    assert "COPY --chown=1000:1000 src/default.nix ${REPO_DIR}/default.nix" in env
    assert env.index("COPY --chown") < env.index("nix-shell --option substituters '' default.nix")
    assert 'ENV R2D_ENTRYPOINT="/usr/local/bin/nix-shell-wrapper"' in content
    assert "nix-shell" not in content.replace("nix-shell-wrapper", "")
    assert all(not b.get("volumes") for b in client.builds)


def test_a_default_nix_naming_other_files_is_realised_with_the_repository(repo: Path) -> None:
    write(repo, {"binder/default.nix": "import ./shell.nix", "binder/shell.nix": BUILTINS_ONLY})
    _, client = build(BuildContext())
    env, content = (b["text"] for b in client.builds)
    assert "src/binder/default.nix" not in env and "nix-shell --option" not in env
    assert "nix-shell --option substituters '' binder/default.nix --command true" in content


def test_a_configured_mirror_is_mounted_and_becomes_nix_path(repo: Path, tmp_path: Path) -> None:
    channel = tmp_path / "channel"
    cache = tmp_path / "cache"
    for folder, index in ((channel, "default.nix"), (cache, "nix-cache-info")):
        folder.mkdir()
        (folder / index).write_text("\n")
    write(repo, {"default.nix": "with import <nixpkgs> {}; shell\n"})
    context = BuildContext(nix_channel=str(channel), nix_substituters=(f"file://{cache}",))
    pack, client = build(context)
    env = client.builds[0]["text"]
    assert "ENV NIX_PATH=nixpkgs=/home/${NB_USER}/.nix-defexpr/channels/nixpkgs" in env
    assert "tar -C /run/bindery/nix/channel" in env
    assert "--option substituters file:///run/bindery/nix/cache-0 default.nix" in env
    expected = [f"{channel}:/run/bindery/nix/channel:ro", f"{cache}:/run/bindery/nix/cache-0:ro"]
    assert [b["volumes"] for b in client.builds] == [expected, expected]
    assert any("local channel directory" in note for note in pack.notes())


def test_the_wrapper_runs_start_then_the_command_inside_nix_shell(tmp_path: Path) -> None:
    """The real script, with a stand-in nix-shell that runs --command as nix-shell does."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nix-shell").write_text(
        '#!/bin/bash\necho "file=$1"\nunset PATH\nPATH=/bin::/usr/bin\nexport FROM_NIX=1\n'
        'eval "$3"\n'
    )
    (tmp_path / "binder").mkdir()
    (tmp_path / "binder/start").write_text('#!/bin/bash\necho "start got: $*"\nexec "$@"\n')
    script = tmp_path / "wrapper"
    script.write_text(nixpack.wrapper("binder/default.nix", "binder/start"))
    for path in (bin_dir / "nix-shell", tmp_path / "binder/start", script):
        path.chmod(0o755)
    out = subprocess.run(
        [str(script), "sh", "-c", 'echo "$FROM_NIX $PATH"; printf "<%s>" "$@"', "_", "a b", "$c"],
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "REPO_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.splitlines() == [
        f"file={tmp_path}/binder/default.nix",
        'start got: sh -c echo "$FROM_NIX $PATH"; printf "<%s>" "$@" _ a b $c',
        "1 /bin:/usr/bin",
        "<a b><$c>",
    ]
