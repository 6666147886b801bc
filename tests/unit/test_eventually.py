"""tests.support.eventually: what every waiting test relies on returns the first truthy answer of
a plain or async condition, treats the listed exceptions as "not yet", and fails naming what it
waited for once its bound passes."""

from __future__ import annotations

import pytest

from tests.support.eventually import eventually


async def test_the_first_truthy_answer_is_returned() -> None:
    answers = iter([None, [], ["found"]])
    assert await eventually(lambda: next(answers), every=0, what="a list") == ["found"]


async def test_an_async_condition_is_awaited() -> None:
    calls = 0

    async def third_time() -> int | None:
        nonlocal calls
        calls += 1
        return calls if calls == 3 else None

    assert await eventually(third_time, every=0, what="a third call") == 3


async def test_listed_exceptions_mean_not_yet_and_others_fail_at_once() -> None:
    attempts = iter([ConnectionRefusedError(), None])

    def connect() -> str:
        refused = next(attempts)
        if refused is not None:
            raise refused
        return "up"

    assert await eventually(connect, every=0, what="a server", ignoring=(OSError,)) == "up"
    with pytest.raises(ValueError):
        await eventually(lambda: int("x"), every=0, what="a number", ignoring=(OSError,))


async def test_the_bound_fails_naming_what_was_awaited_and_the_last_error() -> None:
    def refused() -> bool:
        raise ConnectionRefusedError("nobody listens")

    with pytest.raises(AssertionError, match=r"the server listening: not within 0\.05 s") as failed:
        await eventually(
            refused, within=0.05, every=0.01, what="the server listening", ignoring=(OSError,)
        )
    assert isinstance(failed.value.__cause__, ConnectionRefusedError)
