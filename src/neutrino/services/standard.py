"""Standard attributes every resource shares: timestamps, revision numbers, tags, and the change feed.

Every write of a resource goes through ``stamp_new``/``bump`` (revision + updated_at) and ``emit``
(one row in the ordered ``changes`` feed, in the same transaction), so agents and API clients see one
consistent history.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, Table, delete, insert, select, update

from neutrino.db import feed
from neutrino.db.schema import tags
from neutrino.errors import InvalidInput, PreconditionFailed, not_found

# API attribute -> column for the attributes every resource shares. Each service extends it with its own
# (``COLUMNS``): the one declaration the API derives its filter and sort columns from and updates write by.
COLUMNS = {"id": "id", "name": "name", "description": "description", "project_id": "project_id",
           "tenant_id": "project_id", "revision_number": "revision_number", "created_at": "created_at",
           "updated_at": "updated_at"}


def columns_of(data: dict[str, Any], columns: dict[str, str]) -> dict[str, Any]:
    """The values of ``data`` (API-named) that are stored as they are, by column."""
    return {columns[attr]: value for attr, value in data.items() if attr in columns}


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


def iso(ts: dt.datetime) -> str:
    return ts.isoformat(timespec="seconds") + "Z"  # isoformat is ~5x cheaper than strftime


def fetch_visible(conn: Connection, table: Table, scope: Any, kind: str, row_id: str) -> Any:
    """The row if ``scope`` lets the caller see it; NetworkNotFound & co. otherwise."""
    row = conn.execute(select(table).where(table.c.id == row_id, scope)).first()
    if row is None:
        raise not_found(kind, row_id)
    return row


def stamp_new(values: dict[str, Any]) -> dict[str, Any]:
    ts = now()
    values.setdefault("created_at", ts)
    values.setdefault("updated_at", ts)
    values.setdefault("revision_number", 0)
    return values


def check_revision(current: int, if_match: str | None) -> None:
    """``If-Match: revision_number=N`` must name the current revision (412 otherwise)."""
    if not if_match:
        return
    for part in if_match.split(","):
        part = part.strip()
        if part.startswith("revision_number="):
            try:
                wanted = int(part.split("=", 1)[1])
            except ValueError:
                continue
            if wanted != current:
                raise PreconditionFailed(f"Constrained to {wanted}, but current revision is {current}")


def changed(row: Any, values: dict[str, Any]) -> dict[str, Any]:
    """The subset of ``values`` that differs from ``row``: an update that changes nothing is no update
    (no new revision, no updated_at, nothing for the agents), as in Neutron."""
    return {k: v for k, v in values.items() if getattr(row, k) != v}


def bump(conn: Connection, table: Table, row_id: str, values: dict[str, Any] | None = None) -> None:
    """Apply ``values`` and advance revision_number and updated_at."""
    conn.execute(update(table).where(table.c.id == row_id).values(
        **(values or {}), revision_number=table.c.revision_number + 1, updated_at=now()))


def emit(conn: Connection, resource: str, resource_id: str, op: str, *,
         network_id: str | None = None, host: str | None = None) -> None:
    """A row of the change feed, written when the transaction commits (``db.feed``). ``network_id`` and
    ``host`` say which agents it concerns (``sync.interest``): name them whenever the change has them."""
    feed.record(conn, {"resource": resource, "resource_id": resource_id, "op": op, "network_id": network_id,
                       "host": host, "at": now()})


CHUNK = 900  # ids per IN (...) list; above it, read the whole (indexed) table once


def load_tags(conn: Connection, ids: Iterable[str]) -> dict[str, list[str]]:
    ids = list(ids)
    out: dict[str, list[str]] = {}
    if not ids:
        return out
    cols = select(tags.c.resource_id, tags.c.tag).order_by(tags.c.resource_id, tags.c.tag)
    if len(ids) > CHUNK:
        wanted = set(ids)
        for rid, tag in conn.execute(cols):
            if rid in wanted:
                out.setdefault(rid, []).append(tag)
        return out
    for rid, tag in conn.execute(cols.where(tags.c.resource_id.in_(ids))):
        out.setdefault(rid, []).append(tag)
    return out


MAX_TAGS = 50  # per resource, as Neutron


def set_tags(conn: Connection, resource_type: str, resource_id: str, new: Iterable[str]) -> None:
    wanted = sorted(set(new))
    if len(wanted) > MAX_TAGS:
        raise InvalidInput(f"Number of tags exceeds the limit of {MAX_TAGS} per {resource_type}")
    delete_tags(conn, [resource_id])
    rows = [{"resource_id": resource_id, "resource_type": resource_type, "tag": t} for t in wanted]
    if rows:
        conn.execute(insert(tags), rows)


def delete_tags(conn: Connection, resource_ids: Sequence[str]) -> None:
    """The tags of these resources (tags have no foreign key: every delete of a tagged row calls this)."""
    if len(resource_ids) == 1:
        conn.execute(delete(tags).where(tags.c.resource_id == resource_ids[0]))
    elif resource_ids:
        conn.execute(delete(tags).where(tags.c.resource_id.in_(resource_ids)))


def standard_view(row: Any, tag_map: dict[str, list[str]]) -> dict[str, Any]:
    """The attributes every resource shows, from its row."""
    return {
        "id": row.id,
        "name": row.name,
        "description": row.description,
        "project_id": row.project_id,
        "tenant_id": row.project_id,
        "revision_number": row.revision_number,
        # datetimes stay objects: the JSON encoder writes them as 2026-01-01T00:00:00Z in C.
        "created_at": row.created_at,
        "updated_at": row.updated_at,
        "tags": tag_map.get(row.id, []),
    }
