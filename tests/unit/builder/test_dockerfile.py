"""A stranger's Dockerfile: what builds as it is, and what is refused before podman sees it.

Every hostile case must fail with the line its instruction starts on; every benign one (the
shapes real Binder repositories use) must pass untouched.
"""

import pytest

from bindery.builder.dockerfile import UnsafeDockerfile, check_dockerfile

SHA256 = "a" * 64

MYBINDER_SAMPLE = """\
FROM python:3.10-slim
# install the notebook package
RUN pip install --no-cache --upgrade pip && \\
    pip install --no-cache notebook jupyterlab

# create user with a home directory
ARG NB_USER=jovyan
ARG NB_UID=1000
ENV USER ${NB_USER}
ENV HOME /home/${NB_USER}

RUN adduser --disabled-password \\
    --gecos "Default user" \\
    --uid ${NB_UID} \\
    ${NB_USER}
WORKDIR ${HOME}
COPY . ${HOME}
USER root
RUN chown -R ${NB_UID} ${HOME}
USER ${USER}
"""

MULTI_STAGE = """\
# syntax=docker/dockerfile:1
FROM python:3.11 AS build
RUN pip wheel --wheel-dir /wheels numpy
FROM golang:1.22 AS tools
RUN go install example.org/tool@latest

FROM python:3.11-slim
COPY --from=build /wheels /wheels
COPY --from=tools /go/bin/tool /usr/local/bin/tool
COPY --from=0 /wheels/ /tmp/wheels/
COPY --from=docker.io/library/busybox:1.36 /bin/busybox /bin/busybox
RUN pip install /wheels/*.whl
"""


@pytest.mark.parametrize(
    "text",
    [
        pytest.param(
            "FROM python:3.11\nRUN pip install x\nCOPY . /home/jovyan\nUSER jovyan", id="r2d"
        ),
        pytest.param(MYBINDER_SAMPLE, id="mybinder-docs-sample"),
        pytest.param(MULTI_STAGE, id="multi-stage"),
        pytest.param("FROM python:3.11\nCOPY --chown=1000:1000 . ${HOME}", id="chown-literal"),
        pytest.param(
            "FROM jupyter/base-notebook\nARG NB_USER\nCOPY --chown=${NB_USER}:users . ${HOME}",
            id="chown-variable",
        ),
        pytest.param(
            "FROM python:3.11\nADD --chown=jovyan:users --chmod=644 data.csv /home/jovyan/",
            id="add-chown-chmod",
        ),
        pytest.param("FROM python:3.11\nADD archive.tar.gz /opt/", id="add-local-archive"),
        pytest.param("FROM python:3.11\nCOPY $SRC/notebooks /home/jovyan/", id="copy-variable-src"),
        pytest.param(
            "FROM python:3.11\nRUN apt-get update && \\\n"
            "    # tools for the notebooks\n"
            "    apt-get install -y git && \\\n"
            "\n"
            "    rm -rf /var/lib/apt/lists/*\n",
            id="continuation-with-comment-and-blank",
        ),
        pytest.param("\n\n# a comment\n   # indented comment\nFROM alpine\n", id="comments"),
        pytest.param(
            "# syntax=docker/dockerfile:1.4\nFROM alpine\nRUN echo hi", id="syntax-directive"
        ),
        pytest.param(
            "# escape=`\nFROM mcr.microsoft.com/windows/servercore\nRUN dir `\n    C:\\\\",
            id="escape-backtick",
        ),
        pytest.param("#escape=\\\nFROM alpine\nRUN echo a \\\n b", id="escape-backslash"),
        pytest.param("FROM alpine\nRUN --mount=type=tmpfs,target=/tmp/build make", id="tmpfs"),
        pytest.param(
            "FROM alpine\nRUN --mount=type=tmpfs,target=/scratch,tmpfs-size=1000000,ro true",
            id="tmpfs-options",
        ),
        pytest.param("FROM alpine\nRUN --network=none make test", id="network-none"),
        pytest.param("FROM alpine\nRUN --network=default pip install x", id="network-default"),
        pytest.param(
            "FROM --platform=$BUILDPLATFORM golang:1.22 AS build\nRUN go build\n"
            "FROM --platform=linux/amd64 alpine\nCOPY --from=build /app /app",
            id="platform",
        ),
        pytest.param(
            "ARG BASE_CONTAINER=jupyter/minimal-notebook:latest\nFROM $BASE_CONTAINER",
            id="from-heading-arg",
        ),
        pytest.param("ARG PY=3.11\nFROM python:${PY}-slim", id="from-braced-arg"),
        pytest.param("ARG TAG\nFROM python:${TAG:-3.11}", id="from-arg-fallback"),
        pytest.param("FROM python:3.11 AS base\nFROM base\nRUN true", id="from-stage"),
        pytest.param("ARG STAGE=base\nFROM python:3.11 AS base\nFROM $STAGE", id="from-stage-arg"),
        pytest.param("FROM localhost:5000/team/base:1.0\nRUN true", id="registry-port"),
        pytest.param(f"FROM python@sha256:{SHA256}", id="digest"),
        pytest.param(
            f"FROM quay.io/jupyter/scipy-notebook:2024-05-27@sha256:{SHA256}", id="tag-digest"
        ),
        pytest.param('FROM scratch\nCOPY app /app\nCMD ["/app"]', id="scratch"),
        pytest.param(
            "FROM python:3.11\nHEALTHCHECK --interval=30s --timeout=3s --retries=3 "
            "CMD curl -f http://localhost:8888/ || exit 1",
            id="healthcheck",
        ),
        pytest.param(
            'FROM python:3.11\nCOPY ["environment.yml", "/tmp/env/"]\n'
            'SHELL ["/bin/bash", "-c"]\nENTRYPOINT ["tini", "--"]\nCMD ["jupyter", "lab"]',
            id="json-forms",
        ),
        pytest.param(
            'FROM python:3.11\nLABEL maintainer="José <j@example.org>"\nEXPOSE 8888\n'
            "VOLUME /data\nWORKDIR /srv\nSTOPSIGNAL SIGTERM\nMAINTAINER someone\n"
            'ENV A=1 B="two words"\nARG X="quoted"',
            id="metadata",
        ),
        pytest.param("FROM python:3.11\nONBUILD COPY . /app\nONBUILD RUN make", id="onbuild"),
        pytest.param("from python:3.11\nrun echo hi\nCopy . /srv", id="lower-case"),
        pytest.param("FROM alpine\r\nRUN echo \\\r\n  hi\r\n", id="crlf"),
        pytest.param("\ufeffFROM alpine\nRUN true", id="byte-order-mark"),
        pytest.param("FROM alpine\nRUN echo \\", id="continuation-at-eof"),
        pytest.param('FROM alpine\nRUN grep x <<< "$y" && echo $((1 << 4))', id="here-string"),
        pytest.param(
            "FROM alpine\nRUN echo hi --mount=type=bind,source=/,target=/h", id="late-dashes"
        ),
        pytest.param('FROM alpine\nRUN ["--mount=type=bind"]', id="json-not-flag"),
        pytest.param(
            "FROM alpine\nRUN echo a \\\n--mount=type=bind,source=/ ", id="joined-not-flag"
        ),
        pytest.param("FROM alpine\nRUN echo '# escape=`'", id="escape-text-not-comment"),
        pytest.param("", id="empty"),
        # Fetched by buildah on the host, under the build user's network rules (the public
        # internet only: scripts/isolation.sh refuses loopback, private ranges and metadata).
        "FROM alpine\nADD https://example.org/data.csv /data/",
        'FROM alpine\nADD ["https://example.org/x", "/x"]',
        "FROM alpine\nONBUILD ADD https://example.org/x /x",
    ],
)
def test_benign_dockerfiles_pass(text: str) -> None:
    check_dockerfile(text)


CVE_2024_9675 = """\
FROM alpine
# reads the host through a cache id
RUN --mount=type=cache,id=../../../../../..,target=/host \\
    cat /host/etc/shadow
"""

CVE_2024_1753 = """\
FROM alpine AS base
RUN ln -s / /hostroot

FROM alpine
RUN --mount=type=bind,from=base,source=/hostroot,target=/h,rw \\
    cat /h/etc/shadow
"""


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        pytest.param(CVE_2024_9675, 3, ["type=cache", "CVE-2024-9675"], id="cve-2024-9675"),
        pytest.param(CVE_2024_1753, 5, ["type=bind", "CVE-2024-1753"], id="cve-2024-1753"),
        pytest.param(
            "FROM alpine\nRUN --mount=type=bind,source=hostroot,target=/h ls /h",
            2,
            ["type=bind", "CVE-2024-1753"],
            id="bind-context-symlink",
        ),
        pytest.param(
            "FROM alpine\nRUN --mount=source=x,target=/h ls",
            2,
            ["without type=", "bind"],
            id="mount-default-bind",
        ),
        pytest.param(
            "FROM alpine\nRUN --mount=type=secret,id=pipca cat /run/secrets/pipca",
            2,
            ["type=secret", "secrets"],
            id="secret",
        ),
        pytest.param(
            "FROM alpine\nRUN --mount=type=secret,id=x,src=/etc/shadow ls",
            2,
            ["secret"],
            id="secret-src",
        ),
        pytest.param("FROM alpine\nRUN --mount=type=ssh ssh-add -l", 2, ["type=ssh"], id="ssh"),
        pytest.param(
            "FROM alpine\nRUN --mount=type=volume,target=/v ls", 2, ["type=volume"], id="volume"
        ),
        pytest.param(
            "FROM alpine\nRUN --mount=type=TMPFS,target=/t ls", 2, ["type=TMPFS"], id="type-case"
        ),
        pytest.param(
            "FROM alpine\nRUN --mount=type=tmpfs,source=/etc,target=/t ls",
            2,
            ["'source'", "tmpfs"],
            id="tmpfs-source",
        ),
        pytest.param(
            "FROM alpine\nRUN --mount=type=tmpfs,from=base,target=/t ls",
            2,
            ["'from'"],
            id="tmpfs-from",
        ),
        pytest.param(
            "FROM alpine\nRUN --mount=type=tmpfs,type=bind,source=/,target=/h ls",
            2,
            ["'type' twice"],
            id="duplicate-type",
        ),
        pytest.param(
            "FROM alpine\nRUN --mount=target=/h,type=tmpfs,target=/x ls",
            2,
            ["twice"],
            id="duplicate-target",
        ),
        pytest.param(
            "FROM alpine\nRUN --mount=type=tmpfs,target=/a/../../b ls",
            2,
            ["plain value"],
            id="tmpfs-dotdot",
        ),
        pytest.param(
            "FROM alpine\nRUN --network=host curl 127.0.0.1",
            2,
            ["--network=host"],
            id="network-host",
        ),
        pytest.param(
            "FROM alpine\nRUN --network=container:gateway ls",
            2,
            ["--network"],
            id="network-container",
        ),
        pytest.param(
            "FROM alpine\nRUN --network=ns:/proc/1/ns/net ls", 2, ["--network"], id="network-ns"
        ),
        pytest.param(
            "FROM alpine\nRUN --security=insecure ls", 2, ["--security", "capabilit"], id="security"
        ),
        pytest.param(
            "FROM alpine\nRUN --privileged=true ls", 2, ["RUN --privileged"], id="unknown-run-flag"
        ),
        pytest.param("FROM alpine\nCOPY --link . /x", 2, ["COPY --link"], id="copy-link"),
        pytest.param(
            "FROM alpine\nCOPY --parents=true a/b /x", 2, ["--parents"], id="copy-parents"
        ),
        pytest.param("FROM alpine\nCOPY --exclude=*.md . /x", 2, ["--exclude"], id="copy-exclude"),
        pytest.param(
            f"FROM alpine\nADD --checksum=sha256:{SHA256} https://example.org/x /x",
            2,
            ["--checksum"],
            id="add-checksum",
        ),
        pytest.param(
            "FROM alpine\nADD --keep-git-dir=true https://example.org/r.git /r",
            2,
            ["--keep-git-dir"],
            id="git-dir",
        ),
        pytest.param("FROM alpine\nADD --from=base /x /y", 2, ["ADD --from"], id="add-from"),
        pytest.param("FROM --after=base alpine", 1, ["FROM --after"], id="from-after"),
        pytest.param("FROM alpine\nENV --x=1 A=B", 2, ["ENV --x"], id="env-flag"),
        pytest.param("FROM alpine\nONBUILD --x=1 RUN ls", 2, ["ONBUILD --x"], id="onbuild-flag"),
        pytest.param("FROM alpine\nRUN --mount=$M ls", 2, ["variable"], id="mount-variable"),
        pytest.param(
            "FROM alpine\nARG T=cache\nRUN --mount=type=${T},id=../..,target=/h ls",
            3,
            ["variable"],
            id="mount-braced-variable",
        ),
        pytest.param("FROM alpine\nRUN --network=$NET ls", 2, ["variable"], id="network-variable"),
        pytest.param(
            "FROM alpine AS a\nFROM alpine\nCOPY --from=$S / /x",
            3,
            ["variable"],
            id="from-variable",
        ),
        pytest.param(
            'FROM alpine\nRUN --mount="type=bind,source=/,target=/h" ls',
            2,
            ["quotes"],
            id="quoted-mount",
        ),
        pytest.param("FROM alpine\nRUN --network='host' ls", 2, ["quotes"], id="quoted-network"),
        pytest.param(
            "FROM alpine\nRUN --mount=type=b\\ind,source=/,target=/h ls",
            2,
            ["escapes"],
            id="backslash-flag",
        ),
        pytest.param('FROM alpine\nCOPY --chown="root" . /x', 2, ["quotes"], id="quoted-chown"),
        pytest.param(
            "FROM alpine\nRUN --network=none\u00e0--mount=type=bind,source=/,target=/h ls",
            2,
            ["non-ASCII"],
            id="non-ascii-splits-in-go",
        ),
        pytest.param(
            "FROM alpine\nRUN --mount type=bind,source=/,target=/h cat /h/etc/shadow",
            2,
            ["=value"],
            id="flag-value-next-word",
        ),
        pytest.param(
            "FROM alpine\nRUN -- --mount=type=bind ls", 2, ["--name=value"], id="bare-dashes"
        ),
        pytest.param("FROM alpine\nRUN --MOUNT=type=bind ls", 2, ["--name=value"], id="flag-case"),
        pytest.param(
            "FROM alpine\nRUN \\\n  --mount=type=cache,id=../../..,target=/h ls",
            2,
            ["type=cache"],
            id="flag-after-continuation",
        ),
        pytest.param(
            "FROM alpine\nRUN \\\n# a comment line\n\n--mount=type=bind,source=/,target=/h ls",
            2,
            ["type=bind"],
            id="flag-after-comment-in-continuation",
        ),
        pytest.param(
            "FROM alpine\nRUN --network=none \\\n    --mount=type=bind,source=x,target=/h ls",
            2,
            ["type=bind"],
            id="second-flag-on-next-line",
        ),
        pytest.param(
            "# escape=`\nFROM alpine\nRUN `\n  --mount=type=cache,id=../..,target=/h ls",
            3,
            ["type=cache"],
            id="backtick-continuation",
        ),
        pytest.param(
            "FROM alpine\nRUN\\\n--mount=type=bind,source=/,target=/h ls",
            2,
            ["unknown instruction"],
            id="joined-without-space",
        ),
        pytest.param(
            "# syntax=docker/dockerfile:1\n# escape=`\nFROM alpine",
            2,
            ["escape directive"],
            id="escape-after-syntax",
        ),
        pytest.param("FROM alpine\n# escape=`\nRUN ls", 2, ["escape directive"], id="escape-late"),
        pytest.param("# escape=x\nFROM alpine", 1, ["escape directive"], id="escape-invalid"),
        pytest.param(
            "# escape=` trailing\nFROM alpine", 1, ["escape directive"], id="escape-trailing"
        ),
        pytest.param(
            "# escape=`\n# escape=\\\nFROM alpine", 2, ["escape directive"], id="escape-twice"
        ),
        pytest.param(
            "FROM alpine\nRUN <<EOF\napk add git\nEOF", 2, ["here-document"], id="heredoc-run"
        ),
        pytest.param(
            "FROM alpine\nRUN cat <<-'EOT' > /x\nhi\nEOT", 2, ["here-document"], id="heredoc-quoted"
        ),
        pytest.param(
            "FROM alpine\nCOPY <<EOF /etc/motd\nhi\nEOF", 2, ["here-document"], id="heredoc-copy"
        ),
        pytest.param(
            "FROM alpine\nRUN python3 <<PY\nprint(1)\nPY", 2, ["here-document"], id="heredoc-late"
        ),
        pytest.param("FROM alpine\nFOO bar", 2, ["unknown instruction"], id="unknown-instruction"),
        pytest.param(
            "FROM alpine\nRU\u039d ls", 2, ["unknown instruction"], id="non-ascii-instruction"
        ),
        pytest.param(
            "FROM alpine\nONBUILD RUN --mount=type=cache,id=../..,target=/h ls",
            2,
            ["type=cache"],
            id="onbuild-cache",
        ),
        pytest.param(
            "FROM alpine\nONBUILD ONBUILD RUN ls", 2, ["ONBUILD ONBUILD"], id="onbuild-onbuild"
        ),
        pytest.param("FROM alpine\nONBUILD FROM busybox", 2, ["ONBUILD FROM"], id="onbuild-from"),
        pytest.param("FROM alpine\nONBUILD", 2, ["needs an instruction"], id="onbuild-empty"),
        pytest.param(
            "FROM alpine\nCOPY /etc/passwd /x", 2, ["source", "/etc/passwd"], id="copy-absolute"
        ),
        pytest.param("FROM alpine\nCOPY ../secrets /x", 2, ["source"], id="copy-dotdot"),
        pytest.param("FROM alpine\nCOPY a/../../b /x", 2, ["source"], id="copy-inner-dotdot"),
        pytest.param(
            'FROM alpine\nCOPY ["/etc/shadow", "/x"]', 2, ["source"], id="copy-json-absolute"
        ),
        pytest.param(
            'FROM alpine\nCOPY "/etc/passwd" /x', 2, ["source"], id="copy-quoted-absolute"
        ),
        pytest.param(
            "FROM alpine\nCOPY \\/etc/passwd /x", 2, ["source"], id="copy-escaped-absolute"
        ),
        pytest.param(
            "FROM alpine\nCOPY ok.txt $X/../../y /x", 2, ["source"], id="copy-variable-dotdot"
        ),
        pytest.param("FROM alpine\nADD /etc/shadow /x", 2, ["source"], id="add-absolute"),
        pytest.param(
            "FROM alpine\nADD git@github.com:a/b.git /src", 2, ["ADD of"], id="add-git-ssh"
        ),
        pytest.param("FROM alpine\nARG URL=https://x\nADD $URL /x", 3, ["URL"], id="add-variable"),
        pytest.param(
            "FROM oci-archive:/var/lib/images/x.tar",
            1,
            ["oci-archive: transport"],
            id="oci-archive",
        ),
        pytest.param(
            "FROM docker-archive:image.tar", 1, ["docker-archive: transport"], id="docker-archive"
        ),
        pytest.param("FROM dir:/etc", 1, ["dir: transport"], id="dir"),
        pytest.param("FROM containers-storage:alpine", 1, ["transport"], id="containers-storage"),
        pytest.param("FROM docker://alpine", 1, ["transport"], id="docker-transport"),
        pytest.param(
            "FROM alpine\nCOPY --from=oci:/srv/x / /h",
            2,
            ["COPY --from", "transport"],
            id="copy-from-oci",
        ),
        pytest.param("FROM alpine\nCOPY --from=../x / /h", 2, ["COPY --from"], id="copy-from-path"),
        pytest.param("ARG B=dir:/etc\nFROM $B", 2, ["dir: transport"], id="from-arg-transport"),
        pytest.param('ARG B="dir:/etc"\nFROM $B', 2, ["cannot be evaluated"], id="from-arg-quoted"),
        pytest.param(
            "ARG A=x\nARG B=$A\nFROM $B", 3, ["cannot be evaluated"], id="from-arg-nested"
        ),
        pytest.param("ARG B=x\nFROM ${B:?err}", 2, ["cannot evaluate"], id="from-arg-unknown-form"),
        pytest.param('FROM "alpine"', 1, ["not a stage name or registry image"], id="from-quoted"),
        pytest.param("FROM alpine extra words", 1, ["FROM takes"], id="from-malformed"),
        pytest.param("FROM alpine\nRUN echo\x0bhi", 2, ["control character"], id="vertical-tab"),
        pytest.param("FROM alpine\nRUN echo\x00", 2, ["control character"], id="nul"),
        pytest.param(
            "FROM alpine\nRUN echo a\rRUN --network=host ls", 2, ["control character"], id="bare-cr"
        ),
        pytest.param(
            "FROM alpine\nRUN echo \u0085 ls", 2, ["control character"], id="c1-next-line"
        ),
        pytest.param(
            "FROM alpine\nHEALTHCHECK --interval=$I CMD true",
            2,
            ["variable"],
            id="healthcheck-variable",
        ),
    ],
)
def test_hostile_dockerfiles_are_refused(text: str, line: int, words: list[str]) -> None:
    with pytest.raises(UnsafeDockerfile) as refused:
        check_dockerfile(text)
    message = str(refused.value)
    assert refused.value.line == line
    assert message.startswith(f"line {line}: ")
    for word in words:
        assert word in message, message


def test_refusal_is_a_value_error_naming_the_cve() -> None:
    with pytest.raises(
        ValueError, match=r"line 3: RUN --mount=type=cache is refused: .*CVE-2024-9675"
    ):
        check_dockerfile(CVE_2024_9675)


def test_first_refusal_wins() -> None:
    text = "FROM alpine\nRUN ls\nRUN --network=host ls\nRUN --mount=type=cache,target=/c ls"
    with pytest.raises(UnsafeDockerfile) as refused:
        check_dockerfile(text)
    assert refused.value.line == 3


def test_the_builders_own_mounts_are_refused_in_a_repository() -> None:
    # The builder's generated Dockerfiles mount its secrets and uv cache; a repository may not.
    text = (
        "FROM python:3.11\n"
        "RUN --mount=type=secret,id=pipca,target=/run/secrets/pipca,mode=0444"
        " --mount=type=cache,target=/home/jovyan/.cache/uv,uid=1000,gid=1000 pip install x"
    )
    with pytest.raises(UnsafeDockerfile, match="type=secret"):
        check_dockerfile(text)


def test_a_long_dockerfile_reports_the_right_line() -> None:
    benign = "".join(f"RUN echo {n} \\\n    && true\n# comment {n}\n\n" for n in range(50))
    text = "FROM alpine\n" + benign + "RUN --mount=type=bind,source=x,target=/y ls\n"
    with pytest.raises(UnsafeDockerfile) as refused:
        check_dockerfile(text)
    assert refused.value.line == 2 + 50 * 4
