"""Engine creation and the two kinds of transaction.

SQLite (the embedded default) runs in WAL mode; readers never block, and writers take one in-process
lock and ``BEGIN IMMEDIATE`` so a read-modify-write (IPAM, MAC, quota) can never interleave with another.
PostgreSQL runs READ COMMITTED; code that allocates locks its parent row with ``lock_row`` (or, with no
parent row to lock, a named lock: ``lock_name``) and the unique keys in the schema are the last line of
defence, with the whole transaction retried on a unique violation or serialization failure.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import orjson
from sqlalchemy import Connection, Engine, Table, create_engine, event, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.pool import QueuePool

from neutrino.db import feed

log = logging.getLogger(__name__)
T = TypeVar("T")


class Database:
    def __init__(self, url: str, *, pool_size: int = 16) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self._write_lock = threading.Lock()
        if self.is_sqlite:
            path = url.split("///", 1)[1] if "///" in url else ""
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(
                url, poolclass=QueuePool, pool_size=pool_size, max_overflow=pool_size,
                connect_args={"check_same_thread": False, "timeout": 30},
                json_serializer=_json_dumps, json_deserializer=orjson.loads,
            )
            event.listen(self.engine, "connect", _sqlite_connect)
            event.listen(self.engine, "begin", _sqlite_begin)
        else:
            url = url.replace("postgresql://", "postgresql+psycopg://", 1)
            self.engine = create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True,
                                        json_serializer=_json_dumps, json_deserializer=orjson.loads)

    @contextmanager
    def read(self) -> Iterator[Connection]:
        """A read-only transaction (a consistent snapshot)."""
        with self.engine.connect() as conn, conn.begin():
            yield conn

    @contextmanager
    def _write_once(self) -> Iterator[Connection]:
        """One write transaction; the change feed rows it records are written last (``db.feed``)."""
        if self.is_sqlite:
            with self._write_lock, self.engine.connect() as conn:
                conn = feed.collect(conn.execution_options(neutrino_write=True))
                with conn.begin():
                    yield conn
                    feed.flush(conn)
        else:
            with self.engine.connect() as conn, conn.begin():
                conn = feed.collect(conn)
                yield conn
                feed.flush(conn)

    def write(self, fn: Callable[[Connection], T], *, attempts: int = 8) -> T:
        """Run ``fn`` in one write transaction, retrying it whole on races the database detected."""
        for attempt in range(attempts):
            try:
                with self._write_once() as conn:
                    return fn(conn)
            except (IntegrityError, OperationalError, DBAPIError) as exc:
                if attempt + 1 == attempts or not _retriable(exc):
                    raise
                log.debug("retrying write after %s", type(exc.orig).__name__ if exc.orig else exc)
                time.sleep(0.002 * (attempt + 1))
        raise AssertionError("unreachable")

    def dispose(self) -> None:
        self.engine.dispose()


def lock_row(conn: Connection, table: Table, row_id: str) -> None:
    """Hold ``row_id`` of ``table`` until the transaction ends (``SELECT … FOR UPDATE``), so that
    read-then-insert work under it (IPAM, MACs) queues instead of colliding. A no-op on SQLite, whose
    writers are already serialized (one in-process lock + ``BEGIN IMMEDIATE``)."""
    if conn.dialect.name == "sqlite":
        return
    conn.execute(select(table.c.id).where(table.c.id == row_id).with_for_update())


def lock_name(conn: Connection, name: str) -> None:
    """Hold the lock called ``name`` until the transaction ends (a transaction-scoped advisory lock), for
    read-then-insert work with no parent row to lock (a network's segment id); writers of every server
    queue on it. A no-op on SQLite, whose writers are already serialized."""
    if conn.dialect.name == "sqlite":
        return
    key = int.from_bytes(hashlib.sha256(f"neutrino:{name}".encode()).digest()[:8], "big") >> 1  # a bigint
    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _retriable(exc: DBAPIError) -> bool:
    text = str(exc.orig or exc).lower()
    return any(word in text for word in (
        "unique", "duplicate key", "could not serialize", "deadlock", "database is locked",
    ))


def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
    dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA cache_size=-32000")
    cur.close()


def _sqlite_begin(conn: Connection) -> None:
    write = conn.get_execution_options().get("neutrino_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
