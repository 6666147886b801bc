"""The Nix route of default.nix repositories: the mirror settings, what a default.nix needs, and
the shell the pack writes into the image.

In: the builder's ``nix_channel`` and ``nix_substituters`` settings (checked here) and the text
of a repository's default.nix. Out: ``NixMirror`` (the build's mounts, the install and channel
steps, the realising command), ``needs`` (what a default.nix asks for beyond builtins, read from
its code with strings and comments removed) and ``wrapper`` (the start script that runs the
session's command inside ``nix-shell``, as repo2docker's nix-shell-wrapper does).

Nix is Debian's nix-bin (2.8), single-user with the store owned by the image's user, as
repo2docker's Nix images: no daemon, no sandbox (a build step has no user namespaces), no build
users. A channel -- a nixpkgs channel or tarball URL, or a host directory holding a nixpkgs
tree -- becomes ``~/.nix-defexpr/channels/nixpkgs`` in the image and ``NIX_PATH``'s
``nixpkgs``, since sessions evaluate default.nix again at start and cannot reach the mirror.
Substituters (binary caches: URLs or ``file://`` directories) serve build steps only.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from dataclasses import dataclass
from urllib.parse import urlsplit

from bindery.builder.mirrors import (
    SAFE_PATH,
    checked_directory,
    checked_url,
    checked_url_or_directory,
)

# What this Bindery would need without a mirror: repo2docker's channel and binary cache.
HOSTS = "nixos.org (the nixpkgs channel) and cache.nixos.org (its binary cache)"
# Where directories of the settings are seen inside build steps (read-only, in no layer).
CHANNEL_MOUNT = "/run/bindery/nix/channel"
CACHE_MOUNT = "/run/bindery/nix/cache"
# The channel in the image, where nix-channel puts one: NIX_PATH's nixpkgs, build and session.
CHANNEL_PATH = "/home/${NB_USER}/.nix-defexpr/channels/nixpkgs"
# nix-shell puts its shell's directory first on PATH: a directory holding only bash (a link to
# Debian's), as the bashInteractive of repo2docker's images, so /bin does not come before the
# image's venv. Also what spares nix-shell evaluating <nixpkgs> for bashInteractive.
SHELL_DIR = "/usr/local/lib/bindery/nix-shell"
WRAPPER = "/usr/local/bin/nix-shell-wrapper"


def check_channel_setting(value: str) -> str:
    """The ``nix_channel`` setting, normalised; ValueError saying what is wrong with it."""
    return checked_url_or_directory(value, "Nix channel")


def check_substituter_setting(value: str) -> str:
    """One ``nix_substituters`` entry: an http(s) binary cache URL or ``file:///DIR[?...]``."""
    value = value.strip()
    url = checked_url(value, "Nix substituter", ("http", "https", "file"))
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc:
            raise ValueError(f"Nix substituter {value!r}: write a directory as file:///DIR")
        checked_directory(parts.path, "Nix substituter directory")
    return url


@dataclass(frozen=True)
class NixMirror:
    """Checked settings: ``channel`` ("" for none) and ``substituters``."""

    channel: str = ""
    substituters: tuple[str, ...] = ()

    @property
    def channel_is_directory(self) -> bool:
        return self.channel.startswith("/")

    def _cache_directories(self) -> list[tuple[str, str]]:
        """(host directory, mount) of each file:// substituter."""
        paths = [urlsplit(url).path for url in self.substituters if url.startswith("file:")]
        return [(path, f"{CACHE_MOUNT}-{n}") for n, path in enumerate(paths)]

    def volumes(self) -> list[str]:
        """``podman build --volume`` values: the mirror's directories, read-only."""
        mounts = [(self.channel, CHANNEL_MOUNT)] if self.channel_is_directory else []
        return [f"{src}:{dst}:ro" for src, dst in mounts + self._cache_directories()]

    def build_substituters(self) -> list[str]:
        """The substituters as build steps see them (directories at their mounts)."""
        mounts = iter(self._cache_directories())
        urls = []
        for url in self.substituters:
            if url.startswith("file:"):
                query = urlsplit(url).query
                urls.append(f"file://{next(mounts)[1]}" + (f"?{query}" if query else ""))
            else:
                urls.append(url)
        return urls

    def problem(self) -> str:
        """Why this mirror cannot serve a build, or ``""``."""
        if self.channel_is_directory and not os.path.isfile(
            os.path.join(self.channel, "default.nix")
        ):
            return (
                "The Nix channel directory configured for this Bindery holds no default.nix (a "
                "nixpkgs tree has one at its top): ask its operator to check the mirror."
            )
        for directory, _ in self._cache_directories():
            if not os.path.isfile(os.path.join(directory, "nix-cache-info")):
                return (
                    "A Nix binary cache directory configured for this Bindery holds no "
                    "nix-cache-info: ask its operator to check the mirror."
                )
        return ""

    def describe(self) -> str:
        """For the build log (a directory's path is the host's own, so it is not named)."""
        if not self.channel:
            channel = "no nixpkgs channel configured (default.nix uses builtins only)"
        elif self.channel_is_directory:
            channel = "nixpkgs from this Bindery's local channel directory"
        else:
            channel = f"nixpkgs from {self.channel}"
        caches = len(self.substituters) or "none"
        return f"Nix: {channel}; binary caches: {caches}."

    def options(self) -> str:
        """nix command-line options of build steps: the substituters (the image's nix.conf has
        none, as sessions reach no mirror)."""
        return "--option substituters " + shlex.quote(" ".join(self.build_substituters()))

    def channel_script(self) -> str:
        """The step (as the image's user) that puts nixpkgs at CHANNEL_PATH; "" for none."""
        if not self.channel:
            return ""
        if self.channel_is_directory:
            # A directory is copied (without a checkout's .git); its fingerprint in the step
            # makes a changed mirror a new layer, not podman's cached copy of the old one.
            return (
                f": channel {directory_fingerprint(self.channel)} && "
                f"mkdir -p {CHANNEL_PATH} && "
                f"tar -C {CHANNEL_MOUNT} --exclude=.git -c . | tar -C {CHANNEL_PATH} -x"
            )
        return (
            f"nix-channel --add {shlex.quote(self.channel)} nixpkgs && "
            f"nix-channel {self.options()} --update nixpkgs"
        )

    def realise(self, nix_file: str) -> str:
        """The step building what ``nix-shell nix_file`` needs (its shellHook runs too)."""
        return f"nix-shell {self.options()} {shlex.quote(nix_file)} --command true"


def directory_fingerprint(directory: str) -> str:
    """16 hex digits over every file's relative path, size and modification time."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if d != ".git")
        for name in sorted(files):
            path = os.path.join(root, name)
            stat = os.lstat(path)
            relative = os.path.relpath(path, directory)
            digest.update(f"{relative}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


INSTALL_SCRIPT = rf"""
apt-get -qq update && \
apt-get install -qq --yes --no-install-recommends nix-bin > /dev/null && \
apt-get -qq clean && \
rm -rf /var/lib/apt/lists/* && \
install -d -o ${{NB_USER}} -g ${{NB_USER}} -m 0755 /nix && \
mkdir -p /etc/nix {SHELL_DIR} && \
ln -s /bin/bash {SHELL_DIR}/bash && \
printf '%s\n' 'sandbox = false' 'build-users-group =' 'substituters =' > /etc/nix/nix.conf && \
nix --version
"""
"""Root's step: Nix single-user for the image's user. The sandbox needs user namespaces, which
build steps lack; with no build users, builds run as the store's owner."""

# Nix's lexer: path literals (./a, a/b, ~/a, /a), <search paths>, URIs. Strings and comments are
# removed before these are looked for.
_PATH = re.compile(r"(?<![A-Za-z0-9._+-])(~|[A-Za-z0-9._+-]*)(/[A-Za-z0-9._+-]+)+/?")
_SEARCH_PATH = re.compile(r"<[A-Za-z0-9._+-]+(/[A-Za-z0-9._+-]+)*>")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:[A-Za-z0-9%/?:@&=+$,_.!~*'-]+")
# What fetches from the network in the language itself (nixpkgs' fetchers need <nixpkgs>).
_FETCH = re.compile(
    r"\b(fetchTarball|fetchurl|fetchGit|fetchMercurial|fetchTree|fetchClosure|getFlake)\b"
)


def nix_code(text: str) -> str:
    """``text`` with comments and the literal parts of strings blanked out (antiquotations
    ``${...}`` are code and stay): what is left is what Nix reads as code."""
    out: list[str] = []
    contexts = ["code"]  # "code", or the opening quote of the string we are in
    depths = [0]  # the brace depth of each code context
    i, n = 0, len(text)
    while i < n:
        context = contexts[-1]
        if context == "code":
            if text[i] == "#":
                end = text.find("\n", i)
                i = n if end < 0 else end
            elif text.startswith("/*", i):
                end = text.find("*/", i + 2)
                i = n if end < 0 else end + 2
            elif text[i] == '"' or text.startswith("''", i):
                contexts.append('"' if text[i] == '"' else "''")
                out.append(" ")
                i += len(contexts[-1])
            elif text[i] == "}" and depths[-1] == 0 and len(contexts) > 1:
                # The end of an antiquotation: back into its string.
                contexts.pop()
                depths.pop()
                i += 1
            else:
                depths[-1] += {"{": 1, "}": -1}.get(text[i], 0)
                out.append(text[i])
                i += 1
        elif text.startswith("${", i):
            contexts.append("code")
            depths.append(0)
            out.append(" ")
            i += 2
        elif context == '"' and text[i] == "\\":
            i += 2
        elif context == "''" and (text.startswith("'''", i) or text.startswith("''$", i)):
            i += 3
        elif context == "''" and text.startswith("''\\", i):
            i += 4
        elif text.startswith(context, i):
            contexts.pop()
            out.append(" ")
            i += len(context)
        else:
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class Needs:
    """What a Nix file's code asks for beyond builtins."""

    search_paths: frozenset[str]
    """``<nixpkgs>`` and friends, without the brackets."""
    fetches: bool
    """A fetcher or a URL: the network."""
    local_files: bool
    """Path literals: other files (of the repository, or the host's)."""

    @property
    def hosts(self) -> bool:
        """Needs something only a channel or the network gives."""
        return bool(self.search_paths) or self.fetches


def needs(text: str) -> Needs:
    code = nix_code(text)
    without_uris = _URI.sub(" ", code)
    return Needs(
        search_paths=frozenset(m.group(0)[1:-1] for m in _SEARCH_PATH.finditer(code)),
        fetches=bool(_FETCH.search(code) or _URI.search(code)),
        local_files=bool(_PATH.search(_SEARCH_PATH.sub(" ", without_uris))),
    )


WRAPPER_TEMPLATE = """\
#!/bin/bash
# Bindery: the session's command -- after the repository's start script, if it has one -- runs
# inside nix-shell of the repository's default.nix, as in repo2docker's Nix images, so the
# shell's variables and packages are what Jupyter and its kernels see.
command=("$@")
if [ -f "${{REPO_DIR}}/{start}" ]; then
    command=("${{REPO_DIR}}/{start}" "$@")
fi
# One word each (printf %q). nix-shell leaves PATH unexported when the shell's derivation has no
# stdenv, with an empty entry (the working directory): both put right.
exec nix-shell "${{REPO_DIR}}/{nix_file}" --command \\
    "PATH=\\${{PATH//::/:}}; export PATH; exec $(printf '%q ' "${{command[@]}}")"
"""


def wrapper(nix_file: str, start: str) -> str:
    """The start script; paths relative to the repository (binder/default.nix, binder/start)."""
    for path in (nix_file, start):
        if not SAFE_PATH.fullmatch("/" + path):
            raise ValueError(f"unexpected repository path {path!r}")
    return WRAPPER_TEMPLATE.format(nix_file=nix_file, start=start)
