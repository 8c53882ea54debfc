"""The writing side of the change feed: rows of ``changes`` recorded by a write transaction.

A write collects its changes and inserts them just before it commits (``Database.write``). On
PostgreSQL it first takes one transaction-scoped advisory lock, so ``seq`` values become visible in
their order: a transaction that draws seq 10 commits before one that draws 11, and a reader that has
seen 11 can never see 10 appear later (a feed read ``seq > N`` misses nothing). The lock is held only
from that insert to the commit. In the same transaction it NOTIFYs ``CHANNEL`` with the highest seq,
which PostgreSQL delivers to every listening server after the commit, in commit order.
SQLite needs neither: its writers are serialized (one lock, ``BEGIN IMMEDIATE``) and there is only one
server process.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, insert, text

from neutrino.db.schema import changes

CHANNEL = "neutrino_changes"
# pg_advisory_xact_lock key: "neutrino" + the feed, any constant no other lock of ours uses.
LOCK_KEY = 0x6E65757472696E6F % (1 << 62)
PENDING = "neutrino_changes"  # execution option: the list a write collects its changes in


def collect(conn: Connection) -> Connection:
    """Make ``conn`` (one write transaction) collect its changes until ``flush``."""
    return conn.execution_options(**{PENDING: []})


def record(conn: Connection, values: dict[str, Any]) -> None:
    """One change: kept for ``flush`` in a collecting transaction, else written at once."""
    pending = conn.get_execution_options().get(PENDING)
    if pending is None:
        _write(conn, [values])
    else:
        pending.append(values)


def flush(conn: Connection) -> None:
    """Write what the transaction collected (call last, just before the commit)."""
    pending: list[dict[str, Any]] | None = conn.get_execution_options().get(PENDING)
    if pending:
        rows, pending[:] = list(pending), []
        _write(conn, rows)


def _write(conn: Connection, rows: list[dict[str, Any]]) -> None:
    if conn.dialect.name != "postgresql":
        conn.execute(insert(changes), rows)
        return
    # One round trip from taking the lock to the NOTIFY: the lock is held until the commit, and every
    # writer of every server queues for it, so each statement more inside it (and each return to a
    # GIL-contended server thread in between) costs every writer of the cluster.
    conn.execute(_PG_WRITE, {"key": LOCK_KEY, "channel": CHANNEL,
                             **{col: [r[col] for r in rows] for col in _COLUMNS}})


_COLUMNS = ("resource", "resource_id", "op", "network_id", "host", "at")
# The lock is in the FROM clause: every row (so every nextval of seq) comes after it.
_PG_WRITE = text("""
WITH written AS (
    INSERT INTO changes (resource, resource_id, op, network_id, host, at)
    SELECT r.resource, r.resource_id, r.op, r.network_id, r.host, r.at
    FROM (SELECT pg_advisory_xact_lock(:key)) AS locked,
         unnest(CAST(:resource AS varchar[]), CAST(:resource_id AS varchar[]), CAST(:op AS varchar[]),
                CAST(:network_id AS varchar[]), CAST(:host AS varchar[]), CAST(:at AS timestamp[]))
             AS r(resource, resource_id, op, network_id, host, at)
    RETURNING seq)
SELECT pg_notify(:channel, CAST(max(seq) AS text)) FROM written
""")
