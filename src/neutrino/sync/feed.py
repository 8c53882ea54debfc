"""The change feed's wake-up side: agents wait here for the global revision to pass theirs.

Writers call ``notify()`` after every committed write (from any thread); waiters re-read the revision
from the database, so several API servers sharing PostgreSQL stay correct — a waiter also re-checks on
its own every ``poll_seconds`` for writes made by another server process.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable


class Feed:
    def __init__(self, revision: Callable[[], Awaitable[int]], poll_seconds: float = 1.0) -> None:
        self._revision = revision
        self._poll = poll_seconds
        self._loop: asyncio.AbstractEventLoop | None = None
        self._event: asyncio.Event | None = None
        self._closed = False

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._event = asyncio.Event()

    def notify(self) -> None:
        loop, event = self._loop, self._event
        if loop is not None and event is not None and not loop.is_closed():
            loop.call_soon_threadsafe(event.set)

    def close(self) -> None:
        """The server is stopping: every wait answers now (the agents ask the next server or again)."""
        self._closed = True
        self.notify()

    async def wait(self, after: int, timeout: float) -> int:
        """The current revision, as soon as it is above ``after`` (or when ``timeout`` runs out)."""
        if self._event is None:
            self.bind(asyncio.get_running_loop())
        assert self._event is not None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self._event.clear()
            rev = await self._revision()
            remaining = deadline - loop.time()
            if rev > after or remaining <= 0 or self._closed:
                return rev
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), min(remaining, self._poll))
