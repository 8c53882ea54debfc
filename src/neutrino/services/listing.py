"""One page of a collection as one SELECT: filters, tag filters, ``changed_since``, keyset pagination.

``api/listing.py`` reads Neutron's query string into a ``Page`` in column terms; this module turns it
into SQL over the resource's table, within the caller's visibility scope.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Row, Select, Table, and_, false, func, not_, or_, select, true

from neutrino.db.schema import tags as tags_table
from neutrino.errors import BadRequest, not_found

# A resource's own filters (more than a column comparison): name -> builder(values) -> SQL condition.
SpecialFilters = Mapping[str, Callable[[list[Any]], Any]]


def invalid(attr: str, reason: str) -> BadRequest:
    """A filter value the resource cannot use (the same 400 the API gives for a malformed value)."""
    return BadRequest(f"Invalid input for {attr}. Reason: {reason}.", type="HTTPBadRequest")


@dataclass(frozen=True, slots=True)
class Filter:
    name: str                       # the API attribute
    column: str | None              # compared with the values; None: the resource's special filter ``name``
    values: list[str]               # as given in the query string
    convert: Callable[[str], Any]   # query-string value -> column value (raises the API's 400)


@dataclass(frozen=True, slots=True)
class Page:
    filters: tuple[Filter, ...] = ()
    sorts: tuple[tuple[str, bool], ...] = ()  # (column, ascending)
    limit: int | None = None
    marker: str | None = None
    page_reverse: bool = False
    tags_all: tuple[str, ...] = ()
    tags_any: tuple[str, ...] = ()
    not_tags_all: tuple[str, ...] = ()
    not_tags_any: tuple[str, ...] = ()
    changed_since: dt.datetime | None = None  # updated_at at or after (naive UTC, like the column)


def _tagged(tid: Any, wanted: tuple[str, ...], every: bool) -> Any:
    stmt = select(tags_table.c.resource_id).where(tags_table.c.tag.in_(wanted))
    if every:
        stmt = stmt.group_by(tags_table.c.resource_id).having(func.count() == len(set(wanted)))
    return tid.in_(stmt)


def where_clauses(table: Table, page: Page, special: SpecialFilters) -> list[Any]:
    out: list[Any] = []
    for f in page.filters:
        converted = [f.convert(value) for value in f.values]
        if f.column is None:
            out.append(special[f.name](converted))
            continue
        column = table.c[f.column]
        out.append(column == converted[0] if len(converted) == 1 else column.in_(converted))
    tid = table.c.id
    if page.tags_all:
        out.append(_tagged(tid, page.tags_all, True))
    if page.tags_any:
        out.append(_tagged(tid, page.tags_any, False))
    if page.not_tags_all:
        out.append(not_(_tagged(tid, page.not_tags_all, True)))
    if page.not_tags_any:
        out.append(not_(_tagged(tid, page.not_tags_any, False)))
    if page.changed_since is not None:
        out.append(table.c.updated_at >= page.changed_since)
    return out


def select_page(conn: Connection, table: Table, kind: str, page: Page, scope: Any,
                special: SpecialFilters) -> tuple[Select[Any], bool]:
    """The SELECT for one page, and whether sort order is reversed (page_reverse)."""
    stmt = select(table).where(scope, *where_clauses(table, page, special))
    keys = [(table.c[column], asc) for column, asc in page.sorts]
    if not any(col.name == "id" for col, _ in keys):
        keys.append((table.c.id, keys[0][1] if keys else True))
    reverse = page.page_reverse
    if page.marker is not None and page.limit is not None:
        marker = conn.execute(select(table).where(table.c.id == page.marker, scope)).first()
        if marker is None:
            raise not_found(kind, page.marker)
        stmt = stmt.where(_after(keys, marker, reverse))
    # NULLs first going forward on every backend (PostgreSQL would put them last), so that order by,
    # keyset condition and reverse paging agree.
    stmt = stmt.order_by(*(col.asc().nulls_first() if asc != reverse else col.desc().nulls_last()
                           for col, asc in keys))
    if page.limit is not None:
        stmt = stmt.limit(page.limit)
    return stmt, reverse


def read_page(conn: Connection, table: Table, kind: str, page: Page, scope: Any,
              special: SpecialFilters) -> list[Row[Any]]:
    """The rows of one page, in the order asked for."""
    stmt, reverse = select_page(conn, table, kind, page, scope, special)
    rows = list(conn.execute(stmt).all())
    if reverse:
        rows.reverse()
    return rows


def _after(keys: list[tuple[Any, bool]], marker: Any, reverse: bool) -> Any:
    """Rows strictly after the marker in sort order (lexicographic over the sort keys, NULL lowest)."""
    ors = []
    eqs: list[Any] = []
    for col, asc in keys:
        value = marker._mapping[col.name]
        forward = asc != reverse
        if value is None:
            beyond = col.is_not(None) if forward else false()
            same = col.is_(None)
        elif isinstance(value, bool):  # no < on booleans in SQL: false sorts before true
            beyond = col == (not value) if forward != value else false()
            same = col == value
        else:
            beyond = col > value if forward else or_(col < value, col.is_(None))
            same = col == value
        ors.append(and_(*eqs, beyond))
        eqs.append(same)
    return or_(*ors) if ors else true()
