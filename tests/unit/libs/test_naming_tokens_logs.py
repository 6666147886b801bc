import re

from bindery.logs import redact
from bindery.naming import repo_slug, session_name
from bindery.tokens import session_token

VALID_REPOSITORY = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")


def test_repo_slug_is_readable_valid_and_unique() -> None:
    a = repo_slug("https://github.com/Owner/My_Repo.git")
    b = repo_slug("https://gitlab.com/Owner/My_Repo.git")
    assert a.startswith("owner-my-repo-")
    assert a != b
    for url in ["file:///tmp/x y/--a", "https://h/__/", "/", "https://h/" + "x" * 300]:
        assert VALID_REPOSITORY.match(repo_slug(url)), url


def test_session_name_is_deterministic_per_launch() -> None:
    assert session_name("https://h/o/r", "abcdef1234567") == session_name(
        "https://h/o/r", "abcdef1234567"
    )
    assert session_name("https://h/o/r", "abcdef1234567") != session_name(
        "https://h/o/r", "bbcdef1234567"
    )


def test_tokens_depend_on_secret_and_session() -> None:
    assert session_token("s" * 32, "a") == session_token("s" * 32, "a")
    assert session_token("s" * 32, "a") != session_token("t" * 32, "a")
    assert session_token("s" * 32, "a") != session_token("s" * 32, "b")


def test_tokens_in_text_are_masked() -> None:
    assert "abc123" not in redact("GET /user/x/lab?token=abc123&x=1")
    assert "abc123" not in redact("Authorization: token abc123")
