"""A Dockerfile's Docker Hub images come through the registry mirror, or the build fails at once
naming Docker Hub and the setting (bindery.builder.registrymirror)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from bindery.builder.dockerfile import check_dockerfile
from bindery.builder.registrymirror import (
    MissingBaseImage,
    check_mirror_setting,
    docker_hub_name,
    fetch_base_images,
    mirrored,
)
from bindery.builder.settings import BuilderSettings


@dataclass
class FakeStore:
    images: set[str] = field(default_factory=set)
    pulls: list[tuple[str, str, bool]] = field(default_factory=list)

    def has_image(self, image: str) -> bool:
        return image in self.images

    def pull_as(self, source: str, name: str, *, tls_verify: bool) -> Iterator[str]:
        self.pulls.append((source, name, tls_verify))
        self.images.add(name)
        yield f"pulled {source}\n"


@pytest.mark.parametrize(
    ("image", "name"),
    [
        ("python", "docker.io/library/python:latest"),
        ("python:3.11-slim", "docker.io/library/python:3.11-slim"),
        ("jupyter/base-notebook:2024", "docker.io/jupyter/base-notebook:2024"),
        ("docker.io/library/debian:12", "docker.io/library/debian:12"),
        ("index.docker.io/user/x", "docker.io/user/x:latest"),
        (f"debian@sha256:{'a' * 64}", f"docker.io/library/debian@sha256:{'a' * 64}"),
        ("quay.io/jupyter/base-notebook", None),
        ("127.0.0.1:5000/bindery/env:abc", None),
        ("localhost/bindery-base:1", None),
    ],
)
def test_docker_hub_names_as_podman_resolves_them(image: str, name: str | None) -> None:
    assert docker_hub_name(image) == name


def test_the_mirror_serves_docker_hub_paths_under_its_own() -> None:
    assert mirrored("docker.io/library/python:3.11", "http://127.0.0.1:5000/hub") == (
        "127.0.0.1:5000/hub/library/python:3.11",
        False,
    )
    assert mirrored("docker.io/user/x:1", "https://mirror.example.org") == (
        "mirror.example.org/user/x:1",
        True,
    )


def test_images_come_through_the_mirror_unless_already_in_the_store() -> None:
    text = "FROM python:3.11 AS base\nFROM base\nCOPY --from=user/tools:1 /x /x\n"
    images = check_dockerfile(text)
    assert images == ["python:3.11", "user/tools:1"]
    store = FakeStore(images={"docker.io/user/tools:1"})
    log = list(fetch_base_images(images, store, "http://127.0.0.1:5000/hub"))
    assert store.pulls == [
        ("127.0.0.1:5000/hub/library/python:3.11", "docker.io/library/python:3.11", False)
    ]
    assert "through the registry mirror" in log[0]


def test_without_a_mirror_a_missing_docker_hub_image_fails_at_once_naming_the_setting() -> None:
    store = FakeStore(images={"docker.io/library/debian:12"})
    assert list(fetch_base_images(["debian:12", "quay.io/x/y:1"], store, "")) == []
    with pytest.raises(MissingBaseImage, match=r"docker\.io.*BINDERY_REGISTRY_MIRROR"):
        list(fetch_base_images(["python:3.11"], store, ""))
    assert store.pulls == []


@pytest.mark.parametrize(
    "value", ["127.0.0.1:5000", "ftp://mirror", "https://u:p@mirror.example", "https://m/?x=1"]
)
def test_the_setting_is_a_registry_url_without_credentials(value: str) -> None:
    with pytest.raises(ValueError, match="BINDERY_REGISTRY_MIRROR"):
        check_mirror_setting(value)
    with pytest.raises(ValueError, match="BINDERY_REGISTRY_MIRROR"):
        BuilderSettings(registry_mirror=value)
    assert BuilderSettings(registry_mirror="https://m.example/hub/").registry_mirror == (
        "https://m.example/hub"
    )
