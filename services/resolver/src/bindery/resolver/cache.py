"""Remembered lookups: spec -> resolution (or failure), with expiry, a size bound, and one
lookup in flight per spec.

In: a key and a coroutine factory that does the lookup. Out: the cached value, the cached
failure (re-raised), or the result of the one lookup that concurrent callers share, so a link
clicked by a whole class at once costs the provider one request.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from bindery.resolver.errors import ResolveError

V = TypeVar("V")


class LookupCache(Generic[V]):
    def __init__(
        self,
        size: int,
        negative_ttl: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._size = size
        self._negative_ttl = negative_ttl
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, V | ResolveError]] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[V]] = {}

    def _cached(self, key: str) -> V | ResolveError | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    def _store(self, key: str, value: V | ResolveError, ttl: float) -> None:
        if ttl <= 0:
            return
        self._entries[key] = (self._clock() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._size:
            self._entries.popitem(last=False)

    async def get(
        self, key: str, lookup: Callable[[], Awaitable[V]], ttl: Callable[[V], float]
    ) -> V:
        """`ttl(value)` says how long a success stays; failures stay `negative_ttl`."""
        cached = self._cached(key)
        if isinstance(cached, ResolveError):
            raise cached
        if cached is not None:
            return cached
        pending = self._inflight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._inflight[key] = future
        try:
            value = await lookup()
        except ResolveError as exc:
            self._store(key, exc, self._negative_ttl)
            future.set_exception(exc)
            raise
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            # Not a verdict on the spec (a crash): share it with the waiters, remember nothing.
            future.set_exception(exc)
            raise
        finally:
            del self._inflight[key]
            if future.done() and not future.cancelled():
                future.exception()  # waiters may be gone: never "exception never retrieved"
        self._store(key, value, ttl(value))
        future.set_result(value)
        return value
