"""Builder settings that keep operator secrets and unauthenticated hosts out of builds."""

import pytest
from pydantic import ValidationError

from bindery.builder.app import index_forwarder
from bindery.builder.indexforward import STEP_HOST
from bindery.builder.settings import BuilderSettings
from bindery.settings import Profile


def test_outside_the_local_profile_builds_fetch_over_https_only() -> None:
    assert BuilderSettings(profile=Profile.PRODUCTION).allowed_schemes() == ("https",)
    assert "file" in BuilderSettings(profile=Profile.LOCAL).allowed_schemes()


def test_an_index_with_credentials_reaches_builds_through_the_forwarder() -> None:
    """Build steps get the forwarder's address, never the credentials (tests/integration/
    builder/test_build.py shows a private index served that way)."""
    settings = BuilderSettings(index_url="https://user:s3cret@mirror.example.org/pypi/simple")
    forwarder = index_forwarder(settings)
    assert forwarder is not None
    assert forwarder.url_for(STEP_HOST) == "http://10.0.2.2:8596/pypi/simple"
    assert "s3cret" not in forwarder.url_for(STEP_HOST)
    assert forwarder.index.origin == "https://mirror.example.org"


def test_an_index_without_credentials_is_handed_to_builds_as_it_is() -> None:
    url = "https://mirror.example.org/simple"
    settings = BuilderSettings(index_url=url)
    assert index_forwarder(settings) is None
    assert settings.index_url == url


def test_an_index_url_must_be_http() -> None:
    with pytest.raises(ValidationError, match="http"):
        BuilderSettings(index_url="file:///srv/index")
