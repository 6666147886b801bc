"""default.nix repositories built for real with Debian's Nix (issue 3): a shell of builtins only
without any mirror, <nixpkgs> from a channel directory the test makes (the builder's nix_channel
setting), a store path substituted from a binary cache directory (nix_substituters), and the
session's command run inside the nix-shell through the image's own entrypoint.

The channel here is a stand-in with the two attributes the repository uses: these tests prove
that Bindery wires the configured mirror through, not anything about Nixpkgs itself."""

import asyncio
import dataclasses
import subprocess
import time
import uuid
from pathlib import Path

from bindery.builder.buildprocess import FailureReason, run_build
from bindery.builder.job import BuildOptions, BuildRequest
from tests.integration.builder.conftest import Log
from tests.support.gitrepo import make_repo, notebook
from tests.support.sandbox import podman_run, sandbox_podman

# The variable is a store path: nix-shell built the derivation it names while building the image.
PROBE = """\
import os, sys
path = os.environ["GREETING"]
print(sys.executable)
print(path)
print(open(path).read().strip())
print(os.environ.get("FROM_START"))
"""


def shell_nix(inputs: str, marker: str) -> str:
    """A default.nix of builtins only: a shell whose GREETING is the derivation ``inputs``."""
    return f"""# {marker}
let
{inputs}
in derivation {{
  name = "bindery-nix-shell";
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo unused > $out" ];
  GREETING = greeting;
}}
"""


GREETING = """\
  greeting = derivation {
    name = "bindery-greeting";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo hello from a nix build > $out" ];
  };"""

# Builds only where the cache maker allows it: anywhere else it must be substituted.
CACHED = """\
  greeting = derivation {
    name = "bindery-cached";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "[ -e /tmp/cache-maker ] && echo made for the cache > $out" ];
  };"""


async def build(repo_files: dict[str, str], repo: Path, image: str, options: BuildOptions) -> str:
    sha = make_repo(repo, {**repo_files, "index.ipynb": notebook("1")})
    log = Log()
    started = time.monotonic()
    result = await run_build(BuildRequest(f"file://{repo}", sha, image, push=False), log, options)
    assert result.ok, result.message + "\n" + log.text()
    print(f"built {repo.name} in {time.monotonic() - started:.1f} s")
    return log.text()


async def test_a_builtins_only_shell_builds_without_a_mirror_and_runs_the_session_inside_it(
    tmp_path: Path, options: BuildOptions, image_name: str
) -> None:
    files = {
        "default.nix": shell_nix(GREETING, uuid.uuid4().hex),
        "start": '#!/bin/bash\nexport FROM_START=yes\nexec "$@"\n',
    }
    log = await build(files, tmp_path / "builtins", image_name, options)

    assert "Nix: no nixpkgs channel configured" in log
    # The image's entrypoint: repo2docker's, then start inside nix-shell of default.nix.
    out = podman_run(image_name, "python3", "-c", PROBE).splitlines()
    assert out[0] == "/srv/venv/bin/python3"  # the venv still comes first on PATH
    assert out[1].startswith("/nix/store/") and out[1].endswith("-bindery-greeting")
    assert out[2:] == ["hello from a nix build", "yes"]


async def test_nixpkgs_comes_from_the_configured_channel_directory(
    tmp_path: Path, readable_tmp: Path, options: BuildOptions, image_name: str
) -> None:
    channel = readable_tmp / "channel"
    channel.mkdir(mode=0o755)
    channel.chmod(0o755)
    (channel / "default.nix").write_text(
        "{ ... }: {\n"
        + GREETING.replace("hello from a nix build", "hello from the configured channel")
        + '\n  shell = attrs: derivation ({ name = "shell"; system = builtins.currentSystem;'
        ' builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; } // attrs);\n}\n'
    )
    files = {
        "default.nix": f"# {uuid.uuid4().hex}\nwith import <nixpkgs> {{}};\n"
        "shell { GREETING = greeting; }\n"
    }
    log = await build(
        files,
        tmp_path / "channelled",
        image_name,
        dataclasses.replace(options, nix_channel=str(channel)),
    )

    assert "Nix: nixpkgs from this Bindery's local channel directory" in log
    # At start the session evaluates default.nix again, with the channel copied into the image
    # (the mirror itself was mounted during the build only).
    out = podman_run(image_name, "python3", "-c", PROBE).splitlines()
    assert out[2] == "hello from the configured channel"


async def test_a_store_path_comes_from_the_configured_binary_cache(
    tmp_path: Path, readable_tmp: Path, options: BuildOptions, image_name: str
) -> None:
    # Distinct names: a build of an image that exists is skipped.
    maker_image, uncached_image = (image_name.replace(":latest", tag) for tag in (":mk", ":no"))
    builtins_repo = {"default.nix": shell_nix(GREETING, "cache maker")}
    await build(builtins_repo, tmp_path / "maker", maker_image, options)
    cache = readable_tmp / "cache"
    cache.mkdir()
    cache.chmod(0o777)  # written by the image's user
    repo_files = {"default.nix": shell_nix(CACHED, uuid.uuid4().hex)}
    maker = readable_tmp / "in"
    maker.mkdir()
    maker.chmod(0o755)  # read by the image's user
    (maker / "cached.nix").write_text(repo_files["default.nix"])
    await asyncio.to_thread(
        subprocess.run,
        [
            *sandbox_podman(),
            "run",
            "--rm",
            f"--volume={cache}:/cache",
            f"--volume={maker}:/in:ro",
            "--entrypoint=/bin/bash",
            maker_image,
            "-c",
            "touch /tmp/cache-maker && nix-shell /in/cached.nix --command true && "
            "nix --extra-experimental-features nix-command copy --to file:///cache "
            "$(nix-instantiate --eval -E '(import /in/cached.nix).GREETING.outPath' | tr -d '\"')",
        ],
        check=True,
    )

    # Without the cache the step that builds it fails: the cache is what makes the build work.
    sha = make_repo(tmp_path / "cached", {**repo_files, "index.ipynb": notebook("1")})
    request = BuildRequest(f"file://{tmp_path / 'cached'}", sha, uncached_image, push=False)
    uncached = await run_build(request, Log(), options)
    assert not uncached.ok and uncached.reason is FailureReason.STEP_FAILED
    assert "bindery-cached.drv' failed" in uncached.message

    configured = dataclasses.replace(options, nix_substituters=(f"file://{cache}?trusted=1",))
    await build(repo_files, tmp_path / "cached-again", image_name, configured)

    out = podman_run(image_name, "python3", "-c", PROBE).splitlines()
    assert out[2] == "made for the cache"
    await asyncio.to_thread(
        subprocess.run,
        [*sandbox_podman(), "rmi", "--force", maker_image],
        capture_output=True,
        check=False,
    )
