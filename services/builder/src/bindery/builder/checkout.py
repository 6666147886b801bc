"""A checkout, refused when its files could lead the builder out of it; its files, read safely.

In: the directory a repository (or a data record) was fetched into, before a buildpack or podman
reads it. Out: ``check_checkout`` returns nothing, or raises ``UnsafeCheckout`` naming the
refused path relative to the checkout and why; ``read_config_file`` returns one configuration
file's text (``binder/apt.txt``), ``None`` when it is absent, or raises ``UnsafeCheckout``.

Why: the builder reads configuration files out of the checkout, and podman reads the checkout
as the build context. A symbolic link committed to a repository can name any host path
(``apt.txt -> /etc/shadow``; CVE-2024-1753 is a bind mount through one); an archive from a data
repository can carry hard links to host files, device nodes or FIFOs. Links that stay inside
the checkout are ordinary (``docs/latest -> v2``) and pass.

How: the walk never follows a link. Each link is resolved here, component by component, relative
to the checkout, with ``lstat``/``readlink`` on paths inside it only: an absolute target, or a
``..`` above the checkout's root, refuses the link at that point, before anything outside is
touched; links met on the way are followed the same way, at most 40 (the kernel's own limit).
No target's content is ever read. A link's target is not named in messages either.

The checkout's own ``.git`` directory is skipped: git's internals, not the repository's content
(a local clone hard-links its objects). A ``.git`` that is a link is checked like any link; one
that is a file (``gitdir: <path>``, how git points a checkout at a repository elsewhere) must
point inside the checkout.

The check runs once; a file could still be swapped for a link afterwards by whoever can write to
the checkout. ``read_config_file`` therefore opens each component relative to its parent's
descriptor with ``O_NOFOLLOW``, and checks the file it opened, not a path.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

# Links followed in one resolution before it counts as a loop: Linux's own limit (ELOOP).
MAX_LINKS = 40
# A `.git` file holds one `gitdir:` line; anything longer is not one git wrote.
_GITFILE_LIMIT = 4096


class UnsafeCheckout(ValueError):
    """A path in the checkout could lead the builder outside it; the message names the path."""


def check_checkout(root: Path) -> None:
    """Raise UnsafeCheckout at the first link leading outside ``root``, hard-linked file or
    special file found under ``root`` (directories in name order, depth first)."""
    pending: list[tuple[str, ...]] = [()]
    while pending:
        directory = pending.pop()
        # Entries are lstat()ed: a link to a directory is checked as a link, never walked.
        with os.scandir(root.joinpath(*directory)) as scanned:
            entries = sorted(scanned, key=lambda entry: entry.name)
        below = []
        for entry in entries:
            relative = (*directory, entry.name)
            status = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(status.st_mode):
                if relative != (".git",):
                    below.append(relative)
            elif stat.S_ISLNK(status.st_mode):
                _check_link(root, directory, entry.name)
            elif stat.S_ISREG(status.st_mode):
                _check_file(root, relative, status.st_nlink)
            else:
                raise UnsafeCheckout(
                    f"{_show(relative)} is a special file (device, FIFO or socket)"
                )
        pending.extend(reversed(below))


def _check_link(root: Path, directory: tuple[str, ...], name: str) -> None:
    relative = (*directory, name)
    target = os.readlink(root.joinpath(*relative))
    if target.startswith("/"):
        raise UnsafeCheckout(f"{_show(relative)} is a symbolic link to an absolute path")
    problem = _resolve_inside(root, directory, target)
    if problem:
        raise UnsafeCheckout(f"{_show(relative)} is a symbolic link that {problem}")


def _resolve_inside(root: Path, directory: tuple[str, ...], target: str) -> str | None:
    """Follow ``target`` from ``directory`` as the kernel would, without leaving ``root``.

    Returns why it cannot stay inside, or None. Every path looked at is ``root`` joined with
    components already resolved to non-links, so no lookup here passes through a link."""
    current = list(directory)
    pending = list(reversed(target.split("/")))
    followed = 0
    exists = True
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":
            if not current:
                return "leads outside the repository"
            current.pop()
            continue
        current.append(name)
        if not exists:
            continue  # below a missing component the rest resolves as text
        try:
            mode = os.lstat(root.joinpath(*current)).st_mode
        except (FileNotFoundError, NotADirectoryError):
            exists = False
            continue
        if stat.S_ISLNK(mode):
            followed += 1
            if followed > MAX_LINKS:
                return "loops"
            link = os.readlink(root.joinpath(*current))
            current.pop()
            if link.startswith("/"):
                return "leads outside the repository (through a link to an absolute path)"
            pending.extend(reversed(link.split("/")))
    return None


def _check_file(root: Path, relative: tuple[str, ...], links: int) -> None:
    if links > 1:
        raise UnsafeCheckout(
            f"{_show(relative)} has {links} hard links: it may be a host file's other name"
        )
    if relative[-1] == ".git":
        _check_gitfile(root, relative)


def _check_gitfile(root: Path, relative: tuple[str, ...]) -> None:
    text = read_config_file(root, "/".join(relative), _GITFILE_LIMIT)
    if text is None or not text.startswith("gitdir:"):
        return
    gitdir = text.removeprefix("gitdir:").strip()
    if gitdir.startswith("/") or _resolve_inside(root, relative[:-1], gitdir):
        raise UnsafeCheckout(f"{_show(relative)} points git at a directory outside the repository")


def read_config_file(root: Path, relative: str, limit: int) -> str | None:
    """The text of ``root/relative`` (``binder/apt.txt``), or None when it is absent.

    Raises UnsafeCheckout when a component is a symbolic link, the file is not a regular file
    with a single link, holds more than ``limit`` bytes (refused rather than cut: half a
    configuration file can mean something else) or is not UTF-8 text; ValueError when
    ``relative`` is not a plain path inside the checkout (a caller's mistake). Every component
    is opened relative to its parent's descriptor with O_NOFOLLOW, so a link swapped in after
    ``check_checkout`` cannot make the builder read a host file."""
    names = _components(relative)
    directory = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for index, name in enumerate(names[:-1]):
            try:
                below = os.open(
                    name,
                    os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                    dir_fd=directory,
                )
            except FileNotFoundError:
                return None
            except OSError as error:
                # A link (ENOTDIR with O_DIRECTORY, ELOOP without), or a file where a
                # directory would be, which means the configuration file is absent.
                if error.errno not in (errno.ENOTDIR, errno.ELOOP):
                    raise
                _refuse_link(directory, name, names[: index + 1])
                return None
            os.close(directory)
            directory = below
        data = _read_file(directory, names, limit)
    finally:
        os.close(directory)
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafeCheckout(f"{_show(names)} is not UTF-8 text") from None


def _components(relative: str) -> tuple[str, ...]:
    names = tuple(name for name in relative.split("/") if name not in ("", "."))
    if not names or relative.startswith("/") or ".." in names:
        raise ValueError(f"not a path inside a checkout: {relative!r}")
    return names


def _refuse_link(directory: int, name: str, relative: tuple[str, ...]) -> None:
    try:
        mode = os.stat(name, dir_fd=directory, follow_symlinks=False).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISLNK(mode):
        raise UnsafeCheckout(f"{_show(relative)} is a symbolic link")


def _read_file(directory: int, names: tuple[str, ...], limit: int) -> bytes | None:
    name = names[-1]
    # Look before opening: opening a device can act on it, a FIFO can block.
    try:
        before = os.stat(name, dir_fd=directory, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None
    _refuse_unless_single_file(names, before)
    try:
        descriptor = os.open(
            name,
            os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC,
            dir_fd=directory,
        )
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise UnsafeCheckout(f"{_show(names)} is a symbolic link") from None
        raise
    with os.fdopen(descriptor, "rb") as opened:
        after = os.fstat(opened.fileno())
        # The file opened is the one looked at, still a single regular file.
        _refuse_unless_single_file(names, after)
        if (after.st_dev, after.st_ino) != (before.st_dev, before.st_ino):
            raise UnsafeCheckout(f"{_show(names)} changed while it was being read")
        data = opened.read(limit + 1)
    if len(data) > limit:
        raise UnsafeCheckout(f"{_show(names)} is larger than {limit} bytes")
    return data


def _refuse_unless_single_file(names: tuple[str, ...], status: os.stat_result) -> None:
    if stat.S_ISLNK(status.st_mode):
        raise UnsafeCheckout(f"{_show(names)} is a symbolic link")
    if not stat.S_ISREG(status.st_mode):
        raise UnsafeCheckout(f"{_show(names)} is not a regular file")
    if status.st_nlink > 1:
        raise UnsafeCheckout(
            f"{_show(names)} has {status.st_nlink} hard links: it may be a host file's other name"
        )


def _show(relative: tuple[str, ...]) -> str:
    # A stranger chose these names: repr() escapes newlines and control characters in logs.
    return repr("/".join(relative))
