"""How much of the change feed to keep: what the live agents may still ask about.

The feed only says *when* to fetch a snapshot (the snapshot is always complete), so its history is kept
for the agents' waits: an agent that has applied revision R waits for a change after R that concerns its
host, and needs the rows after R to tell. Rows at or below the lowest revision that a live agent reports
are pruned; an agent that stopped reporting pins nothing, and a stuck one at most ``KEEP_AT_MOST`` rows.
An agent that comes back from below the pruned mark is simply woken at once (``sync.feed``): it fetches
its snapshot, as it does after every start. The newest row is always kept, so the revision never goes
back (SQLite reuses the highest rowid when it is deleted).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Connection, delete, func, insert, select, update

from neutrino.db.schema import agents, changes, settings

PRUNED_KEY = "feed_pruned_through"  # settings: every row at or below it may be gone
KEEP_AT_MOST = 200_000


def current_revision(conn: Connection) -> int:
    return int(conn.execute(select(func.coalesce(func.max(changes.c.seq), 0))).scalar_one())


def pruned_through(conn: Connection) -> int:
    value = conn.execute(select(settings.c.value).where(settings.c.key == PRUNED_KEY)).scalar()
    return int(value) if value else 0


def lowest_needed(conn: Connection, down_after: float, now: dt.datetime) -> int | None:
    """The lowest revision a live agent reports having applied (None: no live agent says)."""
    since = now - dt.timedelta(seconds=down_after)
    found = conn.execute(select(func.min(agents.c.revision)).where(
        agents.c.heartbeat_timestamp > since, agents.c.revision.is_not(None))).scalar()
    return None if found is None else int(found)


def prune(conn: Connection, down_after: float, now: dt.datetime, keep_at_most: int = KEEP_AT_MOST) -> int:
    """Delete the rows no live agent needs; returns how many went."""
    newest = current_revision(conn)
    needed = lowest_needed(conn, down_after, now)
    cut = newest - 1 if needed is None else min(needed, newest - 1)
    cut = max(cut, newest - keep_at_most)
    done = pruned_through(conn)
    if cut <= done:
        return 0
    gone = conn.execute(delete(changes).where(changes.c.seq <= cut)).rowcount
    if conn.execute(update(settings).where(settings.c.key == PRUNED_KEY).values(value=str(cut))).rowcount == 0:
        conn.execute(insert(settings).values(key=PRUNED_KEY, value=str(cut)))
    return int(gone or 0)
