"""Builder settings that keep operator secrets and unauthenticated hosts out of builds."""

import pytest
from pydantic import ValidationError

from bindery.builder.settings import BuilderSettings
from bindery.settings import Profile


def test_outside_the_local_profile_builds_fetch_over_https_only() -> None:
    assert BuilderSettings(profile=Profile.PRODUCTION).allowed_schemes() == ("https",)
    assert "file" in BuilderSettings(profile=Profile.LOCAL).allowed_schemes()


@pytest.mark.parametrize(
    "url", ["https://user:secret@mirror.example.org/simple", "https://token@mirror.example.org/"]
)
def test_an_index_url_with_credentials_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="must not hold credentials"):
        BuilderSettings(index_url=url)


def test_an_index_url_without_credentials_is_kept() -> None:
    url = "https://mirror.example.org/simple"
    assert BuilderSettings(index_url=url).index_url == url
