"""The change feed's wake-up side: agents wait here for a change that concerns their host.

The ordered ``changes`` table is the truth; everything here only decides *when* to look at it. One
pump per server reads the rows after the last one it read (``seq`` order is commit order, see
``db.feed``) and hands each to the waiters it concerns (``sync.interest``). The pump reads when this
server wrote (``notify()``), when PostgreSQL delivers a NOTIFY from any server's write (one LISTEN
connection per server, reconnected after a failure), and every ``poll_seconds`` regardless (a lost
notification, or no LISTEN at all, costs at most that).

A waiter first checks the rows already after its revision (its own read, after registering, so a row
is either in that read or handed to it by the pump), then waits. It answers with the seq of the newest
change that concerns it, or with ``after`` itself when its time runs out; a waiter whose ``after`` lies
below the pruned part of the feed (``sync.retention``) is answered at once with the current revision.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection

from neutrino.errors import ServiceUnavailable
from neutrino.sync import interest, retention
from neutrino.sync.interest import Change, Scope

log = logging.getLogger("neutrino.feed")
Run = Callable[[Callable[[Connection], Any]], Awaitable[Any]]
READ_LIMIT = 2000  # rows per read; a waiter further behind than this is woken at once


class FeedClosed(ServiceUnavailable):
    """This server is stopping: the agent asks another one (or this one again, once it is back)."""

    def __init__(self) -> None:
        super().__init__("This server is shutting down; ask another one.")


@dataclass(eq=False)
class _Waiter:
    after: int
    scope: Scope | None = None  # None: every change
    armed: bool = False         # the scope is known; until then what the pump offers is kept
    early: list[Change] = field(default_factory=list)
    done: asyncio.Future[int] = field(default_factory=lambda: asyncio.get_running_loop().create_future())

    def arm(self, scope: Scope | None) -> None:
        self.scope, self.armed = scope, True
        early, self.early = self.early, []
        self.offer(early)

    def offer(self, changes: list[Change]) -> None:
        if self.done.done():
            return
        if not self.armed:
            self.early += changes
            return
        seq = interest.newest_concerning((c for c in changes if c.seq > self.after), self.scope)
        if seq:
            self.done.set_result(seq)


@dataclass(frozen=True, slots=True)
class FeedState:
    """What ``neutrino status`` shows of a server's feed."""
    listening: bool
    tail: int
    waiters: int
    wakeups: int


class Feed:
    def __init__(self, read: Run, listen_url: str | None = None, poll_seconds: float = 1.0,
                 listen_poll_seconds: float = 10.0) -> None:
        self._read = read
        self._listen_url = listen_url
        self._poll = poll_seconds          # the pump's re-read period without LISTEN
        self._listen_poll = listen_poll_seconds  # ... and with it
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kick: asyncio.Event | None = None
        self._tail: int | None = None
        self._waiters: set[_Waiter] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._closed = False
        self.listening = False
        self.wakeups = 0  # waits answered with a change

    # -- life cycle ------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the pump (and the listener) on the running loop; idempotent."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._kick = asyncio.Event()
        self._tasks.append(asyncio.create_task(self._pump(), name="feed-pump"))
        if self._listen_url:
            self._tasks.append(asyncio.create_task(self._listen(self._listen_url), name="feed-listen"))

    def notify(self) -> None:
        """Something was written (from any thread): read the feed now."""
        loop, kick = self._loop, self._kick
        if loop is not None and kick is not None and not loop.is_closed():
            loop.call_soon_threadsafe(kick.set)

    def close(self) -> None:
        """The server is stopping: every wait ends now with FeedClosed (the agents ask another server)."""
        self._closed = True
        for w in list(self._waiters):
            if not w.done.done():
                w.done.set_exception(FeedClosed())
        for task in self._tasks:
            task.cancel()

    def state(self) -> FeedState:
        return FeedState(self.listening, self._tail or 0, len(self._waiters), self.wakeups)

    # -- waiting ---------------------------------------------------------------------------------------------
    async def wait(self, after: int, timeout: float, host: str | None = None) -> int:
        """The seq of the newest change after ``after`` that concerns ``host`` (any change: None), as soon as
        there is one; ``after`` when ``timeout`` runs out first."""
        if self._closed:
            raise FeedClosed()
        self.start()
        waiter = _Waiter(after)
        self._waiters.add(waiter)  # before the check: a row is in its read or offered by the pump

        def check(conn: Connection) -> tuple[Scope | None, int, bool]:
            scope = interest.of_host(conn, host) if host else None
            found = interest.read(conn, after, READ_LIMIT)
            behind = len(found) >= READ_LIMIT or after < retention.pruned_through(conn)
            return scope, interest.newest_concerning(found, scope), behind

        try:
            scope, seq, behind = await self._read(check)
            if behind:
                seq = max(seq, await self._read(retention.current_revision), after + 1)
            waiter.arm(scope)
            if not seq:
                await asyncio.wait({waiter.done}, timeout=timeout)
                seq = waiter.done.result() if waiter.done.done() else 0
            if seq:
                self.wakeups += 1
            return seq or after
        finally:
            self._waiters.discard(waiter)
            if waiter.done.done():
                waiter.done.exception()  # retrieved: a close() during the check is not "never retrieved"
            else:
                waiter.done.cancel()
            if self._closed:
                raise FeedClosed()

    # -- reading ---------------------------------------------------------------------------------------------
    async def _pump(self) -> None:
        assert self._kick is not None
        while not self._closed:
            try:
                await self._read_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database is away: read on from the same row at the next kick or poll
                log.warning("reading the change feed failed: %s", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self._listen_poll if self.listening else self._poll)
            self._kick.clear()

    async def _read_once(self) -> None:
        assert self._kick is not None
        if self._tail is None:
            self._tail = await self._read(retention.current_revision)
            return
        while True:
            tail = self._tail

            def after_tail(conn: Connection, tail: int = tail) -> list[Change]:
                return interest.read(conn, tail, READ_LIMIT)

            found: list[Change] = await self._read(after_tail)
            if not found:
                return
            self._tail = found[-1].seq
            for w in list(self._waiters):
                w.offer(found)
            if len(found) < READ_LIMIT:
                return

    async def _listen(self, url: str) -> None:
        """LISTEN on the database: every server's committed writes kick the pump. Reconnects forever."""
        import psycopg

        from neutrino.db.feed import CHANNEL

        assert self._kick is not None
        conninfo = libpq_url(url)
        backoff = 0.5
        while not self._closed:
            try:
                async with await psycopg.AsyncConnection.connect(conninfo, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self.listening = True
                    backoff = 0.5
                    self._kick.set()  # whatever was written while nobody listened
                    async for note in conn.notifies():
                        with contextlib.suppress(ValueError):
                            if self._tail is not None and int(note.payload) <= self._tail:
                                continue
                        self._kick.set()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self.listening:
                    log.warning("lost the LISTEN connection (%s); polling every %.1f s until it is back",
                                exc, self._poll)
            finally:
                self.listening = False
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


def libpq_url(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as libpq takes it (no ``+driver``)."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
