"""A repository's Dockerfile, refused before building when it asks for what no sandbox contains.

In: the text of a stranger's Dockerfile (a repository's ``Dockerfile`` or ``binder/Dockerfile``),
decoded, before ``podman build`` sees it. Out: the registry images it names (for
bindery.builder.registrymirror to fetch), or ``UnsafeDockerfile`` saying what is refused, why in
a few words, and the line where that instruction starts (``exc.line``).

Why: buildah 1.28 / podman 4.3 have known build-time escapes -- CVE-2024-9675
(``RUN --mount=type=cache,id=../../..`` mounts the host's root) and CVE-2024-1753 (a bind mount
whose source is a committed symlink). Builds run rootless as the sandbox user (bindery.builder.
sandbox), which bounds what an escape reaches; this check keeps the known ones from starting.

How: the text is cut into instructions the way buildah's parser (openshift/imagebuilder's copy
of the classic Docker parser, not BuildKit's) cuts it: leading ``# escape=`` directive, comment
and blank lines dropped inside continuations, continued lines joined without a space, flags taken
from the front of the arguments. Wherever two parsers could read the same text differently, the
text is refused instead of guessed at: an escape directive anywhere but line 1, control
characters, and quotes, backslashes, spaces hidden in non-ASCII bytes or a missing ``=`` in flags.

Refused, per instruction (what stays allowed is listed; anything else is refused):

- ``RUN --mount``: only ``type=tmpfs`` (a fresh in-memory directory) with tmpfs options. Bind
  (also the default when ``type=`` is absent), cache, secret (the builder's own ``pipca`` and
  ``pipindex`` secrets are no business of a repository's) and ssh mounts are refused.
- ``RUN --network``: only ``default`` and ``none`` (host, ``container:``, ``ns:`` join
  namespaces the build must not see). ``RUN --security`` (insecure = all capabilities).
- Flags: only those buildah 1.28 knows for the instruction -- ``FROM --platform``; ``RUN
  --mount`` (and ``--network``, which 1.28 itself rejects); ``COPY --from --chown --chmod``;
  ``ADD --chown --chmod``; ``HEALTHCHECK --interval --timeout --start-period --retries``.
  ``ADD --checksum --link --keep-git-dir`` and ``COPY --link --parents --exclude`` are later
  BuildKit features 1.28 does not implement (and ``--checksum``/``--keep-git-dir`` go with
  remote sources, fetched from the host's network). Every flag is ``--name=value`` in plain
  ASCII without quotes or backslashes. A ``$`` (a build argument or environment variable,
  expanded by the engine after this check) is refused in flag values, except in ``--chown``,
  ``--chmod`` and ``FROM --platform``, whose values only name a user, a mode or an image
  variant inside the build and cannot name a host path, mount or network
  (``COPY --chown=${NB_USER}`` is common in Binder repositories).
- ``FROM`` and ``COPY --from``: an earlier stage, ``scratch``, or a registry image reference.
  Image transports (``docker-archive:``, ``oci-archive:``, ``dir:``, ``containers-storage:``,
  ...) read images from the builder's host, not a registry, and are refused. ``FROM $BASE``
  is evaluated with the defaults of the ``ARG`` lines before the first ``FROM``.
- ``COPY``/``ADD`` sources from the build context: no absolute paths, no ``..`` components.
  buildah's copier already confines them to the context; this refuses the intent early.
  Variables in sources and destinations are the engine's business (``COPY . ${HOME}``), except
  in ``ADD`` sources, which can become URLs. ``ADD`` of http(s) URLs is allowed: buildah fetches
  them on the host as the build user, whose network rules (scripts/isolation.sh) are the build
  steps' (the public internet, no loopback or private range). Other remotes (git) are refused.
- Here-documents (``RUN <<EOF``): buildah 1.28 does not implement them, so the body's lines
  would run as instructions; refused rather than built differently from what the author meant.
- ``ONBUILD``: its trigger is checked like any instruction (it runs in whatever build uses the
  image as a base), and may not be ONBUILD, FROM or MAINTAINER.
- Unknown instructions.

Not covered here: ONBUILD triggers inherited from a base image (``FROM someone/image``) are in
that image's configuration, not in this text. They run in the sandbox like every step
(docs/security.md).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

INSTRUCTIONS = frozenset(
    {
        "add",
        "arg",
        "cmd",
        "copy",
        "entrypoint",
        "env",
        "expose",
        "from",
        "healthcheck",
        "label",
        "maintainer",
        "onbuild",
        "run",
        "shell",
        "stopsignal",
        "user",
        "volume",
        "workdir",
    }
)

# The flags buildah 1.28.2 implements, per instruction (its own error messages list them);
# none elsewhere. RUN --network is not one of them ("RUN only supports the --mount flag"):
# it is let through for its two contained values, for the buildah after 1.28 that takes it.
FLAGS: dict[str, frozenset[str]] = {
    "from": frozenset({"platform"}),
    "run": frozenset({"mount", "network"}),
    "copy": frozenset({"from", "chown", "chmod"}),
    "add": frozenset({"chown", "chmod"}),
    "healthcheck": frozenset({"interval", "timeout", "start-period", "retries"}),
}

# Why some flags are refused, beyond "buildah 1.28 does not know it".
_REFUSED_FLAGS = {
    "security": "--security=insecure runs the step with every capability",
    "checksum": "a remote ADD, fetched from the builder's host",
    "keep-git-dir": "a git ADD, fetched from the builder's host",
    "link": "a BuildKit feature buildah 1.28 does not implement",
    "parents": "a BuildKit feature buildah 1.28 does not implement",
    "exclude": "a BuildKit feature buildah 1.28 does not implement",
}

# Flags whose expanded value stays inside the build: a user, a file mode, an image variant.
_VARIABLE_FLAGS = frozenset(
    {("copy", "chown"), ("copy", "chmod"), ("add", "chown"), ("add", "chmod"), ("from", "platform")}
)

NETWORKS = frozenset({"default", "none"})

# tmpfs mount options: where, how big, which mode, read-only or not; none names a source.
TMPFS_OPTIONS = frozenset(
    {
        "type",
        "target",
        "dst",
        "destination",
        "size",
        "tmpfs-size",
        "mode",
        "tmpfs-mode",
        "ro",
        "readonly",
        "rw",
        "nosuid",
        "nodev",
        "noexec",
        "tmpcopyup",
        "notmpcopyup",
    }
)

_MOUNT_REFUSALS = {
    "bind": "a bind mount's source can reach the host through a symlink (CVE-2024-1753)",
    "cache": "a cache mount's id can name a host directory (CVE-2024-9675)",
    "secret": "a secret mount reads the builder's own build secrets",
    "ssh": "an ssh mount hands the build the builder's SSH agent",
}

# containers/image transports: each reads an image from somewhere other than a registry.
TRANSPORTS = frozenset(
    {
        "atomic",
        "containers-storage",
        "dir",
        "docker",
        "docker-archive",
        "docker-daemon",
        "oci",
        "oci-archive",
        "ostree",
        "sif",
        "tarball",
    }
)

# The values imagebuilder gives the automatic platform arguments; only their characters matter.
_BUILTIN_ARGS = {
    "TARGETPLATFORM": "linux/amd64",
    "TARGETOS": "linux",
    "TARGETARCH": "amd64",
    "TARGETVARIANT": "",
    "BUILDPLATFORM": "linux/amd64",
    "BUILDOS": "linux",
    "BUILDARCH": "amd64",
    "BUILDVARIANT": "",
}

# Line 1 may set the escape character; the match is ASCII-only, like Go's lower-casing is here.
_ESCAPE_DIRECTIVE = re.compile(r"#[ \t]*escape[ \t]*=[ \t]*([\\`])[ \t]*", re.IGNORECASE | re.ASCII)
# Anything that a parser could take for an escape directive (BuildKit accepts one after
# `# syntax=`, imagebuilder does not): refused everywhere but as line 1's exact directive.
_ESCAPE_LOOKALIKE = re.compile(r"#\s*escape\s*=", re.IGNORECASE)
# Every C0/C1 control but tab: Go and Python disagree on which of them are spaces or line ends.
_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f-\x9f]")
_BLANKS = re.compile(r"[ \t]+")
_FLAG = re.compile(r"--([a-z][a-z0-9-]*)(=?)(.*)", re.ASCII | re.DOTALL)
# Printable ASCII without quotes, backslash, backtick (either escape character) or `$`.
_PLAIN_VALUE = re.compile(r"[!#%&()*+,\-./0-9:;<=>?@A-Z\[\]^_a-z{|}~]*")
_VARIABLE_VALUE = re.compile(r"[!#$%&()*+,\-./0-9:;<=>?@A-Z\[\]^_a-z{|}~]*")
_MOUNT_VALUE = re.compile(r"[A-Za-z0-9_./:+-]*")
# `<<EOF`, `<<-EOF`, `<< "EOF"`, `3<<EOF`; not the here-string `<<<`.
_HEREDOC = re.compile(r"(?<!<)<<(?!<)-?[ \t]*[\"']?[A-Za-z_]")
_REMOTE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://|[^/@]+@[^/:]+:")
# Remote ADD sources buildah fetches itself, from the host, as the build user: the sandbox's
# network rules (scripts/isolation.sh) give it the public internet only, as build steps.
_HTTP = re.compile(r"https?://", re.I)

# A registry reference, [domain[:port]/]path[:tag][@digest] (distribution's grammar, any case)
_LABEL = r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?"
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(
    rf"(?:{_LABEL}(?:\.{_LABEL})*(?::[0-9]+)?/)?{_COMPONENT}(?:/{_COMPONENT})*"
    r"(?::\w[\w.-]{0,127})?(?:@[a-z][a-z0-9]*(?:[-_+.][a-z][a-z0-9]*)*:[0-9a-f]{32,})?",
    re.IGNORECASE | re.ASCII,
)
# `$NAME`, `${NAME}`, `${NAME:-word}`, `${NAME:+word}`: what FROM's expansion here understands.
_VARIABLE = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::(?P<op>[-+])(?P<word>[^${}\"'\\`]*))?\}"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


class UnsafeDockerfile(ValueError):
    """The Dockerfile uses a feature no sandbox contains; the message says which, why, where."""

    def __init__(self, line: int, what: str) -> None:
        super().__init__(f"line {line}: {what}")
        self.line = line


@dataclass(frozen=True)
class Flag:
    name: str
    value: str


@dataclass(frozen=True)
class Instruction:
    line: int
    keyword: str  # lower-case, one of INSTRUCTIONS
    flags: tuple[Flag, ...]
    args: str


@dataclass
class _Stages:
    """What earlier instructions tell later ones: stage names, and ARG defaults FROM may use."""

    names: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    """Registry images FROM and COPY --from name (expanded), in order: the build pulls them."""
    # None: declared with a default this check cannot evaluate (quotes, escapes, variables).
    heading_args: dict[str, str | None] = field(default_factory=dict)


def check_dockerfile(text: str) -> list[str]:
    """Raise UnsafeDockerfile at the first instruction that cannot be contained; return the
    registry images the build will use (FROM, COPY --from), each once, in order."""
    lines = _physical_lines(text)
    escape = _escape_character(lines)
    stages = _Stages()
    for number, line in _logical_lines(lines, escape):
        _check(_split(number, line), stages)
    return list(dict.fromkeys(stages.images))


# --- From text to instructions, as imagebuilder reads it ----------------------------------------


def _physical_lines(text: str) -> list[str]:
    text = text.removeprefix("\ufeff")  # imagebuilder drops a UTF-8 byte-order mark
    lines = [line.removesuffix("\r") for line in text.split("\n")]  # Go's line scanner
    for number, line in enumerate(lines, start=1):
        if _CONTROL.search(line):
            raise UnsafeDockerfile(
                number, "control character: parsers disagree on which are spaces or line ends"
            )
    return lines


def _escape_character(lines: list[str]) -> str:
    escape = "\\"
    for number, line in enumerate(lines, start=1):
        stripped = line.lstrip()
        if number == 1 and (directive := _ESCAPE_DIRECTIVE.fullmatch(stripped)):
            escape = directive.group(1)
        elif _ESCAPE_LOOKALIKE.match(stripped):
            raise UnsafeDockerfile(
                number,
                "escape directive that is not line 1's exact `# escape=\\` or `# escape=``: "
                "parsers disagree on whether and how it counts",
            )
    return escape


def _logical_lines(lines: list[str], escape: str) -> Iterator[tuple[int, str]]:
    """(first line number, instruction text), continuations joined as imagebuilder joins them:
    the escape character (and blanks after it) at a line's end removed, the next line appended
    as it is, comment and blank lines inside a continuation skipped."""
    continued = re.compile(re.escape(escape) + r"[ \t]*\Z")
    index = 0
    while index < len(lines):
        number = index + 1
        line = lines[index].lstrip()
        index += 1
        if line.startswith("#"):
            line = ""  # a comment, even one ending with the escape character, continues nothing
        more = bool(continued.search(line))
        line = continued.sub("", line)
        if not more and not line:
            continue
        while more and index < len(lines):
            part = lines[index]
            index += 1
            if not part.strip() or part.lstrip().startswith("#"):
                continue
            more = bool(continued.search(part))
            line += continued.sub("", part)
        yield number, line


def _split(number: int, line: str) -> Instruction:
    keyword, *rest = _BLANKS.split(line.strip(), maxsplit=1)
    if not keyword.isascii() or keyword.lower() not in INSTRUCTIONS:
        raise UnsafeDockerfile(number, f"unknown instruction {keyword[:40]!r}")
    keyword = keyword.lower()
    flags, args = _flags(number, keyword, rest[0] if rest else "")
    return Instruction(number, keyword, flags, args)


def _flags(number: int, keyword: str, rest: str) -> tuple[tuple[Flag, ...], str]:
    """The `--name=value` words at the front of the arguments, as imagebuilder takes them."""
    flags: list[Flag] = []
    for match in re.finditer(r"[^ \t]+", rest):
        word = match.group()
        if not word.startswith("--"):
            return tuple(flags), rest[match.start() :].strip()
        flags.append(_flag(number, keyword, word))
    return tuple(flags), ""


def _flag(number: int, keyword: str, word: str) -> Flag:
    shown = f"{keyword.upper()} {word[:60]}"
    parsed = _FLAG.fullmatch(word)
    if word == "--" or parsed is None:
        raise UnsafeDockerfile(number, f"{shown} is refused: not a --name=value flag")
    name, equals, value = parsed.groups()
    if name in _REFUSED_FLAGS:
        raise UnsafeDockerfile(number, f"{shown} is refused: {_REFUSED_FLAGS[name]}")
    if name not in FLAGS.get(keyword, frozenset()):
        raise UnsafeDockerfile(
            number, f"{shown} is refused: not a flag buildah 1.28 has for {keyword.upper()}"
        )
    if not equals:
        # imagebuilder 1.28 rejects it; later ones read the next word as its value.
        raise UnsafeDockerfile(number, f"{shown} is refused: a flag needs =value in the same word")
    if (keyword, name) in _VARIABLE_FLAGS:
        allowed = _VARIABLE_VALUE
    elif "$" in value:
        raise UnsafeDockerfile(
            number, f"{shown} is refused: a variable in a flag is expanded after this check"
        )
    else:
        allowed = _PLAIN_VALUE
    if not allowed.fullmatch(value):
        raise UnsafeDockerfile(
            number,
            f"{shown} is refused: quotes, escapes and non-ASCII characters in a flag are "
            "read differently by different parsers",
        )
    return Flag(name, value)


# --- Checks per instruction ----------------------------------------------------------------------


def _check(instruction: Instruction, stages: _Stages) -> None:
    keyword = instruction.keyword
    if keyword == "from":
        _check_from(instruction, stages)
    elif keyword == "arg" and not stages.names:
        _record_heading_args(instruction, stages)
    elif keyword == "onbuild":
        _check_onbuild(instruction)
    else:
        _check_step(instruction, stages)


def _check_step(instruction: Instruction, stages: _Stages) -> None:
    """The instructions that may also be ONBUILD triggers."""
    if instruction.keyword == "run":
        _check_run(instruction)
    elif instruction.keyword in ("copy", "add"):
        _check_copy(instruction, stages)


def _check_run(instruction: Instruction) -> None:
    for flag in instruction.flags:
        if flag.name == "mount":
            _check_mount(instruction.line, flag.value)
        elif flag.name == "network" and flag.value not in NETWORKS:
            raise UnsafeDockerfile(
                instruction.line,
                f"RUN --network={flag.value} is refused: only default or none keep the step "
                "out of other network namespaces",
            )
    _refuse_heredoc(instruction)


def _check_mount(number: int, value: str) -> None:
    options: dict[str, str] = {}
    for option in value.split(","):
        key, _, setting = option.partition("=")
        if key in options:
            raise UnsafeDockerfile(
                number, f"RUN --mount with {key!r} twice is refused: engines pick different ones"
            )
        options[key] = setting
    kind = options.get("type")
    if kind is None:
        raise UnsafeDockerfile(
            number,
            f"RUN --mount without type= (a bind mount) is refused: {_MOUNT_REFUSALS['bind']}",
        )
    if kind in _MOUNT_REFUSALS:
        raise UnsafeDockerfile(
            number, f"RUN --mount=type={kind} is refused: {_MOUNT_REFUSALS[kind]}"
        )
    if kind != "tmpfs":
        raise UnsafeDockerfile(
            number, f"RUN --mount=type={kind} is refused: only tmpfs mounts are contained"
        )
    for key, setting in options.items():
        if key not in TMPFS_OPTIONS:
            raise UnsafeDockerfile(
                number,
                f"RUN --mount=type=tmpfs with {key!r} is refused: not a tmpfs option "
                "(a tmpfs mount has no source)",
            )
        if not _MOUNT_VALUE.fullmatch(setting) or ".." in setting.split("/"):
            raise UnsafeDockerfile(
                number,
                f"RUN --mount=type=tmpfs with {key}={setting!r} is refused: not a plain value",
            )


def _check_copy(instruction: Instruction, stages: _Stages) -> None:
    keyword = instruction.keyword.upper()
    source_from = next((flag.value for flag in instruction.flags if flag.name == "from"), None)
    if source_from is not None:
        _check_image(instruction.line, source_from, stages, "COPY --from")
    _refuse_heredoc(instruction)
    words = _words(instruction.args)
    for source in words[:-1]:
        # The engine removes quotes and escapes from these words: judge what remains.
        plain = re.sub(r"[\"'\\`]", "", source)
        if keyword == "ADD" and "$" in source:
            raise UnsafeDockerfile(
                instruction.line,
                f"ADD source {source[:60]!r} is refused: a variable can expand to a URL",
            )
        if keyword == "ADD" and _REMOTE.match(plain) and not _HTTP.match(plain):
            raise UnsafeDockerfile(
                instruction.line,
                f"ADD of {plain[:60]!r} is refused: only http(s) URLs are fetched; clone "
                "repositories in a RUN step",
            )
        if source_from is None and (plain.startswith("/") or ".." in plain.split("/")):
            raise UnsafeDockerfile(
                instruction.line,
                f"{keyword} source {source[:60]!r} is refused: sources stay inside the repository",
            )


def _words(args: str) -> list[str]:
    """COPY/ADD arguments: a JSON array of strings, or else words between blanks."""
    if args.startswith("["):
        try:
            parsed = json.loads(args)
        except ValueError:
            parsed = None
        if isinstance(parsed, list) and all(isinstance(word, str) for word in parsed):
            return parsed
    return _BLANKS.split(args) if args else []


def _refuse_heredoc(instruction: Instruction) -> None:
    if _HEREDOC.search(instruction.args):
        raise UnsafeDockerfile(
            instruction.line,
            f"here-document in {instruction.keyword.upper()} is refused: buildah 1.28 does not "
            "implement them and would run its lines as instructions",
        )


def _check_from(instruction: Instruction, stages: _Stages) -> None:
    words = _BLANKS.split(instruction.args) if instruction.args else []
    if not (len(words) == 1 or (len(words) == 3 and words[1].lower() == "as")):
        raise UnsafeDockerfile(instruction.line, "FROM takes an image and an optional AS name")
    _check_image(instruction.line, words[0], stages, "FROM")
    if len(words) == 3:
        stages.names.append(words[2].lower())


def _check_image(number: int, image: str, stages: _Stages, what: str) -> None:
    if "$" in image:
        image = _expand_heading_args(number, image, stages)
    if image.lower() in stages.names or image.lower() == "scratch":
        return
    transport = image.partition(":")[0].lower()
    if ":" in image and transport in TRANSPORTS:
        raise UnsafeDockerfile(
            number,
            f"{what} {image[:80]!r} is refused: the {transport}: transport reads an image from "
            "the builder's host, not a registry",
        )
    if not _REFERENCE.fullmatch(image):
        raise UnsafeDockerfile(
            number, f"{what} {image[:80]!r} is refused: not a stage name or registry image"
        )
    stages.images.append(image)


def _expand_heading_args(number: int, image: str, stages: _Stages) -> str:
    """FROM's variables, from the defaults of the ARG lines before the first FROM (the builder's
    own build arguments, which may override them, are trusted)."""

    def value(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("plain")
        if name in stages.heading_args:
            current = stages.heading_args[name]
            if current is None:
                raise UnsafeDockerfile(
                    number, f"FROM ${name} is refused: its ARG default cannot be evaluated here"
                )
        else:
            current = _BUILTIN_ARGS.get(name, "")
        if match.group("op") == "-":
            return current or match.group("word")
        if match.group("op") == "+":
            return match.group("word") if current else ""
        return current

    expanded = _VARIABLE.sub(value, image)
    if "$" in expanded:
        raise UnsafeDockerfile(
            number, f"FROM {image[:80]!r} is refused: a variable form this check cannot evaluate"
        )
    return expanded


def _record_heading_args(instruction: Instruction, stages: _Stages) -> None:
    for word in _BLANKS.split(instruction.args) if instruction.args else []:
        name, _, default = word.partition("=")
        # Quotes, escapes and variables in a default are the engine's to evaluate, not ours.
        evaluable = _PLAIN_VALUE.fullmatch(default) is not None
        stages.heading_args[name] = default if evaluable else None


def _check_onbuild(instruction: Instruction) -> None:
    if not instruction.args:
        raise UnsafeDockerfile(instruction.line, "ONBUILD needs an instruction")
    # Triggers run in another build, where this one's stage names mean nothing.
    _check_trigger(_split(instruction.line, instruction.args), _Stages())


def _check_trigger(trigger: Instruction, stages: _Stages) -> None:
    if trigger.keyword in ("onbuild", "from", "maintainer"):
        raise UnsafeDockerfile(
            trigger.line, f"ONBUILD {trigger.keyword.upper()} is refused: not a valid trigger"
        )
    _check_step(trigger, stages)
