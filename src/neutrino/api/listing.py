"""Neutron's list conventions: filters, fields, sorting, pagination, tag filters.

``parse_list_query`` reads the query string into a ``ListQuery``; ``select_page`` turns it into one SQL
statement over the resource's table (filters and tag filters as WHERE, keyset pagination from the marker
row, ``limit`` rows); ``page_links`` builds ``<collection>_links`` by Neutron's rules.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from sqlalchemy import Connection, Select, and_, false, func, not_, or_, select, true

from neutrino.api import validate as v
from neutrino.api.attributes import ResourceSpec
from neutrino.db.schema import tags as tags_table
from neutrino.errors import not_found

MAX_LIMIT = 1 << 31
RESERVED = {"fields", "sort_key", "sort_dir", "limit", "marker", "page_reverse",
            "tags", "tags-any", "not-tags", "not-tags-any", "changed_since"}


@dataclass(frozen=True, slots=True)
class ListQuery:
    filters: Mapping[str, list[str]]
    fields: tuple[str, ...]
    sorts: tuple[tuple[str, bool], ...]  # (attr, ascending)
    limit: int | None
    marker: str | None
    page_reverse: bool
    tags_all: tuple[str, ...] = ()
    tags_any: tuple[str, ...] = ()
    not_tags_all: tuple[str, ...] = ()
    not_tags_any: tuple[str, ...] = ()
    changed_since: dt.datetime | None = None  # updated_at at or after (naive UTC, like the column)


def _changed_since(resource: ResourceSpec, values: list[str] | None) -> dt.datetime | None:
    """``changed_since=<ISO 8601>`` (standard-attr-timestamp); a time without a zone is UTC."""
    if not values:
        return None
    if "updated_at" not in resource.table.c:
        raise v.AttributeError_("[changed_since] is invalid attribute for filtering")
    try:
        return v.timestamp(values[-1])
    except ValueError as exc:
        raise v.AttributeError_(f"The query parameter changed_since is invalid: {exc}") from None


def _tags(values: list[str]) -> tuple[str, ...]:
    return tuple(t for value in values for t in value.split(",") if t)


def parse_list_query(resource: ResourceSpec, params: Sequence[tuple[str, str]], *,
                     is_admin: bool, default_limit: int = 0) -> ListQuery:
    multi: dict[str, list[str]] = {}
    for key, value in params:
        if "\x00" in key or "\x00" in value:
            raise v.AttributeError_("Query parameters cannot contain NUL characters")
        multi.setdefault(key, []).append(value)
    filters: dict[str, list[str]] = {}
    for key, values in multi.items():
        if key in RESERVED:
            continue
        attr = resource.attrs.get(key)
        usable = attr is not None and (attr.column is not None or key in resource.special_filters)
        if not usable or (attr is not None and attr.admin_read and not is_admin):
            raise v.AttributeError_(f"[{key}] is invalid attribute for filtering")
        filters[key] = values
    sort_keys = multi.get("sort_key", [])
    sort_dirs = multi.get("sort_dir", [])
    if sort_dirs and len(sort_dirs) != len(sort_keys):
        raise v.AttributeError_("The number of sort_keys and sort_dirs must be same")
    sorts = []
    for i, key in enumerate(sort_keys):
        attr = resource.attrs.get(key)
        if attr is None or attr.column is None or not attr.sortable:
            raise v.AttributeError_(f"{key} is an invalid attribute for sort_keys")
        direction = sort_dirs[i] if sort_dirs else "asc"
        if direction not in ("asc", "desc"):
            raise v.AttributeError_(f"{direction} is an invalid value for sort_dir, valid values are 'asc' and 'desc'")
        sorts.append((key, direction == "asc"))
    limit: int | None = None
    if "limit" in multi:
        raw = multi["limit"][-1]
        if not raw.strip().isdigit():
            raise v.AttributeError_(f"Limit must be an integer 0 or greater and not '{raw}'")
        # Beyond any table's size a limit means "all": clamp so the database never sees an overflow.
        limit = (min(int(raw), MAX_LIMIT) if len(raw.strip()) < 19 else MAX_LIMIT) or None
    elif default_limit:
        limit = default_limit
    page_reverse = False
    if "page_reverse" in multi:
        try:
            page_reverse = v.boolean(multi["page_reverse"][-1])
        except ValueError as exc:
            raise v.invalid("page_reverse", str(exc)) from None
    return ListQuery(
        filters=filters,
        fields=tuple(f for value in multi.get("fields", []) for f in value.split(",") if f),
        sorts=tuple(sorts),
        limit=limit,
        marker=multi["marker"][-1] if "marker" in multi else None,
        page_reverse=page_reverse,
        tags_all=_tags(multi.get("tags", [])),
        tags_any=_tags(multi.get("tags-any", [])),
        not_tags_all=_tags(multi.get("not-tags", [])),
        not_tags_any=_tags(multi.get("not-tags-any", [])),
        changed_since=_changed_since(resource, multi.get("changed_since")),
    )


def _convert(resource: ResourceSpec, key: str, value: str) -> Any:
    attr = resource.attrs[key]
    if attr.filter is None:
        return value
    try:
        return attr.filter(value)
    except ValueError as exc:
        raise v.invalid(key, str(exc)) from None


def where_clauses(resource: ResourceSpec, q: ListQuery) -> list[Any]:
    t = resource.table
    out: list[Any] = []
    for key, values in q.filters.items():
        special = resource.special_filters.get(key)
        if special is not None:
            out.append(special(values))
            continue
        column = resource.column(key)
        assert column is not None
        converted = [_convert(resource, key, value) for value in values]
        out.append(column == converted[0] if len(converted) == 1 else column.in_(converted))
    tid = t.c.id
    tag_q = select(tags_table.c.resource_id)
    if q.tags_all:
        out.append(tid.in_(tag_q.where(tags_table.c.tag.in_(q.tags_all))
                           .group_by(tags_table.c.resource_id)
                           .having(func.count() == len(set(q.tags_all)))))
    if q.tags_any:
        out.append(tid.in_(tag_q.where(tags_table.c.tag.in_(q.tags_any))))
    if q.not_tags_all:
        out.append(not_(tid.in_(tag_q.where(tags_table.c.tag.in_(q.not_tags_all))
                                .group_by(tags_table.c.resource_id)
                                .having(func.count() == len(set(q.not_tags_all))))))
    if q.not_tags_any:
        out.append(not_(tid.in_(tag_q.where(tags_table.c.tag.in_(q.not_tags_any)))))
    if q.changed_since is not None:
        out.append(t.c.updated_at >= q.changed_since)
    return out


def select_page(conn: Connection, resource: ResourceSpec, q: ListQuery, scope: Any) -> tuple[Select[Any], bool]:
    """The SELECT for one page, and whether sort order is reversed (page_reverse)."""
    t = resource.table
    stmt = select(t).where(scope, *where_clauses(resource, q))
    keys = [(resource.column(key), asc) for key, asc in q.sorts]
    if not any(col is not None and col.name == "id" for col, _ in keys):
        keys.append((t.c.id, keys[0][1] if keys else True))
    reverse = q.page_reverse
    if q.marker is not None and q.limit is not None:
        marker = conn.execute(select(t).where(t.c.id == q.marker, scope)).first()
        if marker is None:
            raise not_found(resource.name.capitalize().replace("_", ""), q.marker)
        stmt = stmt.where(_after(keys, marker, reverse))
    order = []
    for col, asc in keys:
        assert col is not None
        # NULLs first going forward on every backend (PostgreSQL would put them last), so that order by,
        # keyset condition and reverse paging agree.
        order.append(col.asc().nulls_first() if asc != reverse else col.desc().nulls_last())
    stmt = stmt.order_by(*order)
    if q.limit is not None:
        stmt = stmt.limit(q.limit)
    return stmt, reverse


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


def page_links(base_url: str, collection: str, params: Sequence[tuple[str, str]], q: ListQuery,
               items: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Neutron's rule: a full page has a link onward (even when it is the last: the next page is empty);
    a page has a link back unless it was short while paging backwards."""
    if q.limit is None or not items:
        return []
    kept = [(k, val) for k, val in params if k not in ("marker", "page_reverse", "limit")]
    short = len(items) < q.limit
    links = []
    if not (short and not q.page_reverse):
        nxt = kept + [("limit", str(q.limit)), ("marker", items[-1]["id"])]
        links.append({"rel": "next", "href": f"{base_url}/v2.0/{collection}?{urlencode(nxt)}"})
    if not (short and q.page_reverse):
        prev = kept + [("limit", str(q.limit)), ("marker", items[0]["id"]), ("page_reverse", "True")]
        links.append({"rel": "previous", "href": f"{base_url}/v2.0/{collection}?{urlencode(prev)}"})
    return links


def select_fields(item: dict[str, Any], fields: tuple[str, ...]) -> dict[str, Any]:
    if not fields:
        return item
    return {k: item[k] for k in fields if k in item}
