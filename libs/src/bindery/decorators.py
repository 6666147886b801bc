"""Decorators over coroutine functions, shared by metrics (gauges) and telemetry (spans).

In: a factory of context managers. Out: a decorator that runs every call of a coroutine
function inside a fresh context from that factory, keeping the function's signature for mypy.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Coroutine
from contextlib import AbstractContextManager
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")

Async = Callable[P, Coroutine[Any, Any, R]]


def around(
    context: Callable[[], AbstractContextManager[object]],
) -> Callable[[Async[P, R]], Async[P, R]]:
    """Decorator: each call of the coroutine function runs inside a new `context()`."""

    def decorate(func: Async[P, R]) -> Async[P, R]:
        @functools.wraps(func)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            with context():
                return await func(*args, **kwargs)

        return wrapper

    return decorate
