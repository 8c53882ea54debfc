"""Neutron's list conventions: filters, fields, sorting, pagination, tag filters.

``parse_list_query`` reads the query string into a ``ListQuery``; ``page_of`` hands it to
``services.listing`` in column terms (which makes it one SQL statement); ``page_links`` builds
``<collection>_links`` by Neutron's rules.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any
from urllib.parse import urlencode

from neutrino.api import validate as v
from neutrino.api.attributes import ResourceSpec
from neutrino.services.listing import Filter, Page

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


def page_of(resource: ResourceSpec, q: ListQuery) -> Page:
    """The query in column terms, for ``services.listing`` (values are converted as the SQL is built, in
    query-string order, so the first bad value is the one reported)."""
    filters = []
    for key, values in q.filters.items():
        column = None if key in resource.special_filters else resource.attrs[key].column
        filters.append(Filter(key, column, values, partial(_convert, resource, key)))
    return Page(
        filters=tuple(filters),
        sorts=tuple((str(resource.attrs[key].column), asc) for key, asc in q.sorts),
        limit=q.limit, marker=q.marker, page_reverse=q.page_reverse,
        tags_all=q.tags_all, tags_any=q.tags_any, not_tags_all=q.not_tags_all, not_tags_any=q.not_tags_any,
        changed_since=q.changed_since,
    )


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
