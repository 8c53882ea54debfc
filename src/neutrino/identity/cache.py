"""A bounded in-memory cache of validated tokens, keyed by a hash of the token (never the token itself).

An entry is trusted until its own deadline (the earlier of the token's expiry and the recheck interval),
so an expired token is never served from the cache. When full, expired entries go first, then the oldest
tenth. Used from the event loop only, so it needs no lock.

Time comes from a ``Clock`` (wall-clock seconds since the epoch, as token expiries are), ``time.time``
unless a test passes a fake one that it advances instead of sleeping.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")

Clock = Callable[[], float]  # wall-clock seconds since the epoch


def utc(clock: Clock) -> dt.datetime:
    """The clock's time as the naive UTC datetime (whole seconds) the identity tables store."""
    return dt.datetime.fromtimestamp(int(clock()), dt.UTC).replace(tzinfo=None)


def token_key(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class TokenCache(Generic[T]):
    def __init__(self, size: int, clock: Clock = time.time) -> None:
        self.size = max(1, size)
        self.clock = clock
        self._entries: dict[str, tuple[T, float]] = {}  # key -> (value, trusted until), oldest first

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> T | None:
        hit = self._entries.get(key)
        if hit is None:
            return None
        if hit[1] <= self.clock():
            del self._entries[key]
            return None
        return hit[0]

    def put(self, key: str, value: T, until: float) -> None:
        self._entries.pop(key, None)
        if len(self._entries) >= self.size:
            self._evict()
        self._entries[key] = (value, until)

    def drop(self, key: str) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def _evict(self) -> None:
        now = self.clock()
        for key in [k for k, (_, until) in self._entries.items() if until <= now]:
            del self._entries[key]
        if len(self._entries) < self.size:
            return
        for key in list(self._entries)[:len(self._entries) - self.size + 1 + self.size // 10]:
            del self._entries[key]
