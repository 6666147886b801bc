"""A checkout's files: links that leave it, hard links and special files are refused; its
configuration files are read without following a link swapped in after the check."""

import os
import socket
import stat
import threading
from pathlib import Path

import pytest

from bindery.builder.checkout import UnsafeCheckout, check_checkout, read_config_file

SECRET = "TOPSECRET-host-content"


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """A checkout beside a host file and directory that must stay out of reach."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "shadow").write_text(SECRET)
    root = tmp_path / "checkout"
    (root / "binder").mkdir(parents=True)
    (root / "binder" / "apt.txt").write_text("git\n")
    (root / "docs" / "v2").mkdir(parents=True)
    (root / "docs" / "v2" / "index.md").write_text("# docs\n")
    (root / "README.md").write_text("hello\n")
    return root, host


def _link(root: Path, name: str, target: str) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


@pytest.mark.parametrize(
    "links",
    [
        pytest.param({}, id="no-links"),
        pytest.param({"latest": "docs/v2"}, id="dir-link"),
        pytest.param({"docs/latest": "v2"}, id="sibling-dir-link"),
        pytest.param({"readme": "README.md"}, id="file-link"),
        pytest.param({"docs/v2/readme": "../../README.md"}, id="up-and-back"),
        pytest.param({"a": "b", "b": "README.md"}, id="chain-inside"),
        pytest.param({"self": "."}, id="link-to-root"),
        pytest.param({"here": "./docs/./v2/"}, id="dots-and-slashes"),
        pytest.param({"dangling": "missing.txt"}, id="dangling-inside"),
        pytest.param({"d": "docs/v2", "x": "d/../.."}, id="physical-parent-stays-inside"),
        pytest.param({"docs/v2/l": "../../docs/v2/../v2/index.md"}, id="wander-inside"),
        pytest.param({"docs/deep/x": "../../binder/apt.txt"}, id="nested"),
    ],
)
def test_links_inside_pass(layout: tuple[Path, Path], links: dict[str, str]) -> None:
    root, _ = layout
    for name, target in links.items():
        _link(root, name, target)
    check_checkout(root)


@pytest.mark.parametrize(
    ("links", "named", "why"),
    [
        pytest.param(
            {"binder/apt.txt.lnk": "/etc/shadow"}, "binder/apt.txt.lnk", "absolute", id="absolute"
        ),
        pytest.param({"a": "../host/shadow"}, "a", "outside", id="dotdot"),
        pytest.param(
            {"docs/v2/x": "../../../host/shadow"}, "docs/v2/x", "outside", id="deep-dotdot"
        ),
        pytest.param({"up": ".."}, "up", "outside", id="parent"),
        pytest.param({"a": "b", "b": "../host"}, "a", "outside", id="chain-out"),
        pytest.param({"a": "b", "b": "/etc"}, "a", "absolute", id="chain-to-absolute"),
        pytest.param(
            {"d": "docs", "x": "d/../../host/shadow"}, "x", "outside", id="through-dir-link"
        ),
        pytest.param(
            {"d": "docs/v2", "x": "d/../../../host"}, "x", "outside", id="physical-parent-out"
        ),
        pytest.param(
            {"docs/v2/y": "../../../checkout/README.md"}, "docs/v2/y", "outside", id="out-and-back"
        ),
        pytest.param({"a": "b", "b": "a"}, "a", "loops", id="loop"),
        pytest.param({"x": "missing/../../host"}, "x", "outside", id="dangling-then-out"),
        pytest.param({".git": "../host"}, ".git", "outside", id="git-is-link"),
    ],
)
def test_links_leaving_are_refused(
    layout: tuple[Path, Path], links: dict[str, str], named: str, why: str
) -> None:
    root, _ = layout
    for name, target in links.items():
        _link(root, name, target)
    with pytest.raises(UnsafeCheckout) as refused:
        check_checkout(root)
    message = str(refused.value)
    assert repr(named) in message
    assert why in message
    assert SECRET not in message


def test_a_link_to_an_outside_directory_is_not_walked(layout: tuple[Path, Path]) -> None:
    root, host = layout
    os.mkfifo(host / "fifo")
    _link(root, "ext", str(host))
    with pytest.raises(UnsafeCheckout, match="'ext' is a symbolic link to an absolute path"):
        check_checkout(root)


def test_a_link_loop_through_the_root_is_not_walked(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    _link(root, "docs/v2/again", "../..")
    check_checkout(root)  # terminates: the link is checked, not descended


def test_the_message_escapes_control_characters_in_names(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    _link(root, "evil\nname", "/etc/passwd")
    with pytest.raises(UnsafeCheckout) as refused:
        check_checkout(root)
    assert "\n" not in str(refused.value)
    assert "evil\\nname" in str(refused.value)


def test_a_hard_link_to_a_host_file_is_refused(layout: tuple[Path, Path]) -> None:
    root, host = layout
    os.link(host / "shadow", root / "binder" / "environment.yml")
    with pytest.raises(UnsafeCheckout) as refused:
        check_checkout(root)
    assert "'binder/environment.yml' has 2 hard links" in str(refused.value)
    assert SECRET not in str(refused.value)


def test_hard_links_inside_are_refused_too(layout: tuple[Path, Path]) -> None:
    # From inside, a second name of a repository file and of a host file look the same.
    root, _ = layout
    os.link(root / "README.md", root / "docs" / "README.md")
    with pytest.raises(UnsafeCheckout, match="hard links"):
        check_checkout(root)


def test_a_fifo_is_refused(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    os.mkfifo(root / "docs" / "pipe")
    with pytest.raises(UnsafeCheckout, match="'docs/pipe' is a special file"):
        check_checkout(root)


def test_a_socket_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "c"
    root.mkdir()
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(root / "s"))
        with pytest.raises(UnsafeCheckout, match="'s' is a special file"):
            check_checkout(root)


def test_a_device_is_refused(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    try:
        os.mknod(root / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    with pytest.raises(UnsafeCheckout, match="'null' is a special file"):
        check_checkout(root)


def test_the_git_directory_is_skipped(layout: tuple[Path, Path]) -> None:
    # A local clone hard-links git's objects; git's internals are not the repository's content.
    root, host = layout
    objects = root / ".git" / "objects"
    objects.mkdir(parents=True)
    os.link(host / "shadow", objects / "pack")
    check_checkout(root)


def test_a_nested_git_directory_is_walked(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    _link(root, "vendor/lib/.git/config", "/etc/passwd")
    with pytest.raises(UnsafeCheckout, match=r"vendor/lib/\.git/config"):
        check_checkout(root)


@pytest.mark.parametrize(
    ("where", "gitdir", "refused"),
    [
        (".git", "gitdir: /srv/elsewhere/.git\n", True),
        (".git", "gitdir: ../host\n", True),
        ("sub/.git", "gitdir: ../.git/modules/sub\n", False),
        ("sub/.git", "gitdir: ../../.git\n", True),
        ("sub/.git", "not a gitfile\n", False),
    ],
)
def test_a_git_file_must_point_inside(
    layout: tuple[Path, Path], where: str, gitdir: str, refused: bool
) -> None:
    root, _ = layout
    (root / where).parent.mkdir(parents=True, exist_ok=True)
    (root / where).write_text(gitdir)
    if refused:
        with pytest.raises(UnsafeCheckout, match="points git at a directory outside"):
            check_checkout(root)
    else:
        check_checkout(root)


def test_an_empty_checkout_passes(tmp_path: Path) -> None:
    check_checkout(tmp_path)


# --- read_config_file -------------------------------------------------------------------------


def test_reads_a_configuration_file(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    assert read_config_file(root, "binder/apt.txt", 1000) == "git\n"
    assert read_config_file(root, "README.md", 1000) == "hello\n"
    assert read_config_file(root, "./binder//apt.txt", 1000) == "git\n"


@pytest.mark.parametrize(
    "relative", ["binder/environment.yml", "missing/apt.txt", "README.md/apt.txt"]
)
def test_an_absent_file_is_none(layout: tuple[Path, Path], relative: str) -> None:
    root, _ = layout
    assert read_config_file(root, relative, 1000) is None


@pytest.mark.parametrize(
    ("links", "relative"),
    [
        ({"binder/environment.yml": "/etc/passwd"}, "binder/environment.yml"),
        ({"binder/environment.yml": "apt.txt"}, "binder/environment.yml"),  # inside, still a link
        ({".binder": "../host"}, ".binder/shadow"),
        ({".binder": "binder"}, ".binder/apt.txt"),
        ({"x/y": "/etc"}, "x/y/passwd"),
    ],
)
def test_a_link_on_the_way_is_refused(
    layout: tuple[Path, Path], links: dict[str, str], relative: str
) -> None:
    root, _ = layout
    for name, target in links.items():
        _link(root, name, target)
    with pytest.raises(UnsafeCheckout, match="is a symbolic link") as refused:
        read_config_file(root, relative, 1000)
    assert SECRET not in str(refused.value)


def test_a_link_swapped_in_after_the_check_is_not_followed(layout: tuple[Path, Path]) -> None:
    root, host = layout
    check_checkout(root)
    (root / "binder" / "apt.txt").unlink()
    (root / "binder" / "apt.txt").symlink_to(host / "shadow")
    with pytest.raises(UnsafeCheckout, match=r"'binder/apt\.txt' is a symbolic link"):
        read_config_file(root, "binder/apt.txt", 1000)
    (root / "binder" / "apt.txt").unlink()
    os.rename(root / "binder", root / "binder.real")
    (root / "binder").symlink_to(host)
    with pytest.raises(UnsafeCheckout, match="'binder' is a symbolic link"):
        read_config_file(root, "binder/apt.txt", 1000)


def test_a_hard_link_is_refused(layout: tuple[Path, Path]) -> None:
    root, host = layout
    os.link(host / "shadow", root / "binder" / "requirements.txt")
    with pytest.raises(UnsafeCheckout, match="hard links") as refused:
        read_config_file(root, "binder/requirements.txt", 1000)
    assert SECRET not in str(refused.value)


def test_a_fifo_is_refused_without_blocking(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    os.mkfifo(root / "binder" / "postBuild")
    outcome: list[BaseException] = []

    def read() -> None:
        try:
            read_config_file(root, "binder/postBuild", 1000)
        except BaseException as error:
            outcome.append(error)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=10)
    assert not reader.is_alive(), "reading a FIFO blocked"
    assert isinstance(outcome[0], UnsafeCheckout)
    assert "not a regular file" in str(outcome[0])


def test_a_directory_is_refused(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    (root / "binder" / "runtime.txt").mkdir()
    with pytest.raises(UnsafeCheckout, match="not a regular file"):
        read_config_file(root, "binder/runtime.txt", 1000)


def test_the_limit(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    (root / "binder" / "requirements.txt").write_text("x" * 100)
    assert read_config_file(root, "binder/requirements.txt", 100) == "x" * 100
    with pytest.raises(UnsafeCheckout, match="larger than 99 bytes"):
        read_config_file(root, "binder/requirements.txt", 99)


def test_text_that_is_not_utf8_is_refused(layout: tuple[Path, Path]) -> None:
    root, _ = layout
    (root / "binder" / "apt.txt").write_bytes(b"\xff\xfe g\x00i\x00t\x00")
    with pytest.raises(UnsafeCheckout, match="not UTF-8"):
        read_config_file(root, "binder/apt.txt", 1000)


@pytest.mark.parametrize(
    "relative", ["/etc/passwd", "../host/shadow", "binder/../../host", "", "."]
)
def test_a_path_leaving_the_checkout_is_a_caller_error(
    layout: tuple[Path, Path], relative: str
) -> None:
    root, _ = layout
    with pytest.raises(ValueError, match="not a path inside a checkout"):
        read_config_file(root, relative, 1000)
