"""One way for a test to wait: `eventually(condition, within=..., every=..., what=...)`.

In: a condition (a plain or async callable) that answers a falsy value until what the test waits
for has happened. Out: the condition's first truthy answer, or an AssertionError naming `what` once
`within` seconds pass. The deadline is an upper bound for a slow, shared machine, never the
mechanism: a test that waits on a signal returns as soon as the signal comes.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")


@overload
async def eventually(
    condition: Callable[[], Awaitable[T | None]],
    *,
    within: float = ...,
    every: float = ...,
    what: str,
    ignoring: tuple[type[BaseException], ...] = ...,
) -> T: ...


@overload
async def eventually(
    condition: Callable[[], T | None],
    *,
    within: float = ...,
    every: float = ...,
    what: str,
    ignoring: tuple[type[BaseException], ...] = ...,
) -> T: ...


async def eventually(
    condition: Callable[[], object],
    *,
    within: float = 60.0,
    every: float = 0.05,
    what: str,
    ignoring: tuple[type[BaseException], ...] = (),
) -> object:
    """Ask `condition` every `every` seconds until it answers truthy; fail after `within` seconds.

    Exceptions of the types in `ignoring` count as a falsy answer (a service still starting refuses
    connections); the last one is chained to the failure so its cause shows."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last_error: BaseException | None = None
    while True:
        try:
            answer = condition()
            if inspect.isawaitable(answer):
                answer = await answer
        except ignoring as error:
            answer, last_error = None, error
        if answer:
            return answer
        if loop.time() >= deadline:
            raise AssertionError(f"{what}: not within {within} s") from last_error
        await asyncio.sleep(every)
