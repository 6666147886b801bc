"""Data repositories (Zenodo, Figshare, Dataverse, CKAN) become images, fetched by repo2docker's
own content providers from a local server answering like those services' APIs.

The full build (podman, registry, repo2docker) runs for a Zenodo record; the other providers'
fetches run on their own, into a directory, against the same server. Hostile records (file names
walking out of the checkout, downloads from another host) fail the fetch and write nothing.
"""

import asyncio
import dataclasses
import subprocess
import tarfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from repo2docker.contentproviders.base import ContentProviderException

from bindery.builder import datarepos
from bindery.builder.buildprocess import FailureReason, run_build
from bindery.builder.job import BuildOptions, BuildRequest
from bindery.builder.sources import ProviderHosts, check_source
from tests.integration.builder.conftest import Log
from tests.integration.builder.test_build import manifest_status
from tests.support.fakeproviders import FakeProviders
from tests.support.sandbox import podman_run, sandbox_podman

DATA = b"station,temperature\nbern,21.5\n"


@pytest.fixture
async def fake() -> AsyncIterator[FakeProviders]:
    server = FakeProviders()
    await server.start()
    yield server
    await server.stop()


def hosts_of(fake: FakeProviders) -> ProviderHosts:
    return ProviderHosts(
        zenodo_url=fake.url("/zenodo"),
        figshare_url=fake.url("/figshare"),
        figshare_api_url=fake.url("/figshare/v2"),
        figshare_download_url=fake.url("/figshare/ndownloader"),
        dataverse_hosts=(f"127.0.0.1:{fake.port}",),
        dataverse_scheme="http",
        swh_api_url=fake.url("/swh/api/1"),
    )


async def fetch_into(
    fake: FakeProviders, provider: str, url: str, version: str, into: Path
) -> list[str]:
    """Validate as the builder does, then fetch (blocking requests, off the server's loop)."""
    hosts = hosts_of(fake)
    source = check_source(provider, url, version, hosts)
    await asyncio.to_thread(into.mkdir)
    return await asyncio.to_thread(lambda: list(datarepos.fetch(source, hosts, str(into))))


async def test_a_zenodo_record_builds_into_an_image_with_its_files_and_packages(
    fake: FakeProviders, options: BuildOptions, image_name: str
) -> None:
    # A requirements file of its own, so the environment is really built from this record.
    requirements = f"pyfiglet\n# {uuid.uuid4().hex}\n".encode()
    fake.zenodo_records = {"4242": 4242, "4243": 4243}
    fake.zenodo_files = {
        "4242": {"requirements.txt": requirements, "data/weather.csv": DATA},
        # The next version of the record: new data, the same environment.
        "4243": {"requirements.txt": requirements, "data/weather.csv": DATA + b"chur,19\n"},
    }
    options = dataclasses.replace(options, provider_hosts=hosts_of(fake))
    log = Log()
    request = BuildRequest(fake.url("/zenodo/records/4242"), "4242", image_name, provider="zenodo")

    result = await run_build(request, log, options)

    assert result.ok, result.message + "\n" + log.text()
    assert any(
        line.phase == "fetching" and "data/weather.csv" in line.message for line in log.lines
    )
    assert manifest_status(image_name) == 200
    out = podman_run(
        image_name,
        "python",
        "-c",
        "import os, pyfiglet; print(os.getuid(), open('data/weather.csv').read(), end='')",
    )
    assert out == "1000 " + DATA.decode()
    # Only the record's own API was asked: no doi.org, no Dataverse installation list.
    assert {s.path.split("?")[0] for s in fake.seen} == {
        "/zenodo/api/records/4242",
        "/zenodo/api/records/4242/files",
        "/zenodo/api/records/4242/files/requirements.txt/content",
        "/zenodo/api/records/4242/files/data%2Fweather.csv/content",
    }

    # A new version of the record with the same environment: only its content is added.
    second_image = image_name.replace(":latest", ":second")
    log = Log()
    try:
        request = BuildRequest(
            fake.url("/zenodo/records/4243"), "4243", second_image, push=False, provider="zenodo"
        )
        result = await run_build(request, log, options)
        assert result.ok, result.message + "\n" + log.text()
        assert podman_run(second_image, "tail", "-n1", "data/weather.csv") == "chur,19\n"
    finally:
        await asyncio.to_thread(
            subprocess.run, [*sandbox_podman(), "rmi", "--force", second_image], capture_output=True
        )
    messages = [line.message for line in log.lines]
    assert any(m.endswith("exists: adding the repository only") for m in messages), log.text()


async def test_a_record_that_cannot_be_fetched_fails_as_a_clone_failure(
    fake: FakeProviders, options: BuildOptions, image_name: str
) -> None:
    fake.zenodo_records = {"77": 77}
    fake.zenodo_files = {"77": {"../../escaped.txt": b"x", "requirements.txt": b"pyfiglet\n"}}
    options = dataclasses.replace(options, provider_hosts=hosts_of(fake))
    request = BuildRequest(
        fake.url("/zenodo/records/77"), "77", image_name, push=False, provider="zenodo"
    )

    result = await run_build(request, Log(), options)

    assert result.reason is FailureReason.CLONE_FAILED
    assert "unsafe name" in result.message and "../../escaped.txt" in result.message


async def test_a_build_request_for_a_host_not_configured_is_invalid(
    fake: FakeProviders, options: BuildOptions, image_name: str
) -> None:
    request = BuildRequest(
        fake.url("/zenodo/records/1"), "1", image_name, push=False, provider="zenodo"
    )
    # The default hosts (zenodo.org): the loopback server is no Zenodo of this builder's.
    result = await run_build(request, Log(), options)
    assert result.reason is FailureReason.INVALID_REQUEST
    assert "https://zenodo.org/records/<id>" in result.message
    assert fake.seen == []


async def test_a_figshare_article_version_is_fetched(fake: FakeProviders, tmp_path: Path) -> None:
    fake.figshare_files = {"9782777.v2": {"requirements.txt": b"pyfiglet\n", "w.csv": DATA}}
    url = fake.url("/figshare/articles/_/9782777/2")

    await fetch_into(fake, "figshare", url, "9782777.v2", tmp_path / "out")

    assert (tmp_path / "out/w.csv").read_bytes() == DATA
    assert (tmp_path / "out/requirements.txt").read_bytes() == b"pyfiglet\n"


async def test_a_dataverse_dataset_is_fetched_with_its_folders(
    fake: FakeProviders, tmp_path: Path
) -> None:
    pid = "doi:10.7910/DVN/TJCLKP"
    fake.dataverse = {pid: {"id": 3035124, "latestVersion": {"versionNumber": 1}}}
    fake.dataverse_files = {pid: {"requirements.txt": b"pyfiglet\n", "data/w.csv": DATA}}
    url = fake.url("/dataset.xhtml?persistentId=doi%3A10.7910%2FDVN%2FTJCLKP")

    await fetch_into(fake, "dataverse", url, "3035124.v1.0", tmp_path / "out")

    assert (tmp_path / "out/data/w.csv").read_bytes() == DATA
    assert (tmp_path / "out/requirements.txt").read_bytes() == b"pyfiglet\n"


async def test_a_dataverse_file_walking_up_is_refused(fake: FakeProviders, tmp_path: Path) -> None:
    pid = "doi:10.7910/DVN/EVIL"
    fake.dataverse = {pid: {"id": 1, "latestVersion": {}}}
    fake.dataverse_files = {pid: {"../../outside.txt": b"x"}}
    url = fake.url("/dataset.xhtml?persistentId=doi%3A10.7910%2FDVN%2FEVIL")

    (tmp_path / "a").mkdir()
    with pytest.raises(ContentProviderException, match="unsafe name"):
        await fetch_into(fake, "dataverse", url, "1.v1.0", tmp_path / "a" / "out")

    assert not (tmp_path / "outside.txt").exists()


async def test_a_ckan_dataset_is_fetched_from_its_own_site_only(
    fake: FakeProviders, tmp_path: Path
) -> None:
    fake.ckan_modified = {"weather": "2024-01-01T00:00:00.000000"}
    fake.downloads = {"weather.csv": DATA}
    fake.ckan_resources = {"weather": [{"id": "r1", "url": fake.url("/files/weather.csv")}]}
    url = fake.url("/ckan/site/dataset/weather")

    await fetch_into(fake, "ckan", url, "weather.v1704067200", tmp_path / "out")
    assert (tmp_path / "out/weather.csv").read_bytes() == DATA

    # A resource on another host (here the metadata address of cloud machines) is not fetched.
    fake.ckan_resources["weather"].append({"id": "r2", "url": "http://169.254.169.254/latest"})
    with pytest.raises(ContentProviderException, match=r"169\.254\.169\.254"):
        await fetch_into(fake, "ckan", url, "weather.v1704067200", tmp_path / "again")
    # A resource id chosen to walk out of the checkout fails before anything is written.
    fake.ckan_resources["weather"] = [{"id": "../../x", "url": fake.url("/files/")}]
    with pytest.raises(ContentProviderException, match="unsafe"):
        await fetch_into(fake, "ckan", url, "weather.v1704067200", tmp_path / "third")


REVISION = "a" * 40
DIRECTORY = "d" * 40  # the directory the fake's revisions point to


async def test_a_software_heritage_revision_is_fetched_from_the_vault(
    fake: FakeProviders, tmp_path: Path
) -> None:
    fake.swh_objects = {f"revision/{REVISION}"}
    fake.swh_directories = {DIRECTORY: [("requirements.txt", b"pyfiglet\n"), ("d/w.csv", DATA)]}

    await fetch_into(fake, "swhid", f"swh:1:rev:{REVISION}", REVISION, tmp_path / "out")

    assert (tmp_path / "out/d/w.csv").read_bytes() == DATA
    assert (tmp_path / "out/requirements.txt").read_bytes() == b"pyfiglet\n"


async def test_an_archive_linking_outside_the_checkout_is_refused(
    fake: FakeProviders, tmp_path: Path
) -> None:
    # Unpacked as is, then copied following links, this would put the host's file in the image.
    link = tarfile.TarInfo(f"{DIRECTORY}/passwd")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    fake.swh_directories = {DIRECTORY: [("requirements.txt", b"x\n"), link]}

    with pytest.raises(ContentProviderException, match="link to an absolute path"):
        await fetch_into(fake, "swhid", f"swh:1:dir:{DIRECTORY}", DIRECTORY, tmp_path / "out")

    assert not (tmp_path / "out/passwd").exists()
