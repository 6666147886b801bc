"""The build job: one model the service makes and the build process checks again."""

import json

import pytest

from bindery.builder import buildchild
from bindery.builder.job import BuildJob, BuildOptions, BuildRequest
from bindery.builder.pythons import Pythons

SHA = "5b1503fb6fd79906a6d75af32d4a014b5f31dc61"
IMAGE = "127.0.0.1:5000/b/r:t"


def test_the_build_process_reads_back_the_job_the_service_made() -> None:
    pythons = Pythons((("3.11", "localhost/b:1"),), "3.11")
    options = BuildOptions(pythons=pythons, ca_bundle="/ca.crt", nix_substituters=("https://c",))
    job = BuildJob(BuildRequest("https://example.org/r.git", SHA, IMAGE), options)
    again = BuildJob.from_json(job.to_json())
    assert again == job
    assert again.source.url == "https://example.org/r.git" and again.request.push


def test_the_registry_mirror_reaches_the_buildpacks() -> None:
    request = BuildRequest("https://example.org/r.git", SHA, IMAGE)
    job = BuildJob(request, BuildOptions(registry_mirror="http://127.0.0.1:5000/hub/"))
    context = buildchild.make_app(BuildJob.from_json(job.to_json())).extra_build_kwargs["bindery"]
    assert context.registry_mirror == "http://127.0.0.1:5000/hub"
    assert context.env_repository == "127.0.0.1:5000/b/env"


@pytest.mark.parametrize(
    ("repo", "ref", "image", "problem"),
    [
        ("-oProxyCommand=x", SHA, "r/i:t", "URL"),
        ("--upload-pack=touch /pwned", SHA, "r/i:t", "URL"),
        ("/etc", SHA, "r/i:t", "URL"),
        ("file:///srv/repo", SHA, "r/i:t", "URL"),
        ("https://h/r x", SHA, "r/i:t", "URL"),
        ("https://h/r", "main", "r/i:t", "SHA"),
        ("https://h/r", "--orphan", "r/i:t", "SHA"),
        ("https://h/r", SHA, "-r/i:t", "image"),
        ("https://h/r", SHA, "R/i t", "image"),
    ],
)
def test_validation_rejects_what_strangers_could_abuse(
    repo: str, ref: str, image: str, problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        BuildJob(BuildRequest(repo, ref, image), BuildOptions())


def test_validation_accepts_a_commit_of_an_allowed_scheme() -> None:
    local = BuildRequest("file:///srv/repo", SHA, IMAGE)
    assert BuildJob(local, BuildOptions(allowed_schemes=("file",))).source.url == local.repo_url
    BuildJob(BuildRequest("https://h/o/r.git", SHA, IMAGE), BuildOptions())


def test_settings_checked_by_the_service_are_checked_again() -> None:
    with pytest.raises(ValueError, match="registry"):
        BuildOptions(registry_mirror="ftp://mirror")
    with pytest.raises(ValueError, match="image"):
        BuildOptions(pythons=Pythons((("3.11", "-b:1"),), "3.11"))


@pytest.mark.parametrize(
    "change",
    [
        {"request": {"repo_url": "ext::sh -c touch% /pwned"}},
        {"request": {"image": "-i"}},
        {"options": {"registry_mirror": "ftp://mirror"}},
        {"options": {"allowed_schemes": ["https"]}, "request": {"repo_url": "file:///etc"}},
        {"options": {"unknown": 1}},
    ],
)
def test_the_build_process_refuses_a_job_the_service_would_not_make(
    change: dict[str, dict[str, object]], capsys: pytest.CaptureFixture[str]
) -> None:
    job = json.loads(
        BuildJob(BuildRequest("https://h/o/r.git", SHA, IMAGE), BuildOptions()).to_json()
    )
    for part, values in change.items():
        job[part].update(values)
    assert buildchild.run(json.dumps(job).encode()) == 1
    final = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (final["phase"], final["reason"]) == ("failed", "invalid_request")
    assert buildchild.run(b"not json") == 1
