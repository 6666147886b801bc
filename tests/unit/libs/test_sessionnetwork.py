"""What sessions get of the operator's CA bundle and package index (bindery.sessionnetwork), from
the settings the builder and the scheduler share."""

from __future__ import annotations

from pathlib import Path

import pytest

from bindery.builder.settings import BuilderSettings
from bindery.scheduler.settings import SchedulerSettings
from bindery.sessionnetwork import CA_PATH, CA_VARIABLES, SessionNetwork
from bindery.settings import PackageIndexSettings


def test_builder_and_scheduler_read_the_same_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BINDERY_INDEX_URL", "https://mirror.example/simple")
    monkeypatch.setenv("BINDERY_CA_BUNDLE", "/srv/ca.pem")
    for settings in (BuilderSettings(), SchedulerSettings()):
        assert isinstance(settings, PackageIndexSettings)
        assert settings.index_url == "https://mirror.example/simple"
        assert settings.ca_bundle == "/srv/ca.pem"


def test_sessions_get_the_bundle_and_an_index_without_credentials(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("pem")
    settings = SchedulerSettings(ca_bundle=str(bundle), index_url="https://mirror.example/simple")
    network = settings.session_network()
    assert network == SessionNetwork(str(bundle), "https://mirror.example/simple")
    env = network.environment()
    assert {name: env[name] for name in CA_VARIABLES} == dict.fromkeys(CA_VARIABLES, CA_PATH)
    assert env["PIP_INDEX_URL"] == env["UV_DEFAULT_INDEX"] == "https://mirror.example/simple"
    assert "PIP_TRUSTED_HOST" not in env  # https needs no exception


def test_an_index_with_credentials_never_reaches_sessions(
    capsys: pytest.CaptureFixture[str],
) -> None:
    settings = SchedulerSettings(index_url="https://user:s3cret@mirror.example/simple")
    network = settings.session_network()
    assert network.index_url == ""
    assert "s3cret" not in repr(network.environment())
    assert "sessions.index_withheld" in capsys.readouterr().out
    with pytest.raises(ValueError, match="credentials"):
        SessionNetwork(index_url="https://user:s3cret@mirror.example/simple")


def test_a_missing_bundle_mounts_nothing_and_changes_no_trust() -> None:
    network = SchedulerSettings(ca_bundle="/nonexistent/ca.pem").session_network()
    assert network == SessionNetwork()
    assert network.environment() == {}


def test_a_plain_http_index_has_its_host_trusted_by_pip_and_uv() -> None:
    env = SessionNetwork(index_url="http://10.1.2.3:3141/root/pypi/+simple/").environment()
    assert env["PIP_TRUSTED_HOST"] == env["UV_INSECURE_HOST"] == "10.1.2.3:3141"
