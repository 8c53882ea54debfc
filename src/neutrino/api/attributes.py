"""Attribute specs: what each API attribute accepts, who may set or see it, how it filters and sorts.

One ``Attr`` per attribute of a resource; ``parse_create``/``parse_update`` turn a request body into a
validated dict of API-named values (or a Neutron-style 400/403), so the services never see raw input.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import Table

from neutrino.api import validate as v
from neutrino.context import RequestContext
from neutrino.errors import BadRequest, PolicyNotAuthorized

MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class Attr:
    name: str
    column: str | None = None        # DB column for filtering and sorting (set by ``with_columns``)
    post: bool = False               # may be given on create
    put: bool = False                # may be given on update
    required: bool = False
    default: Any = MISSING           # applied on create when absent (callables are called)
    validate: v.Validator | None = None
    admin_write: bool = False        # a non-admin giving a non-default value gets 403
    admin_read: bool = False         # hidden from non-admins
    filter: Callable[[str], Any] | None = None  # converts a query-string value; None: use str
    sortable: bool = True            # False: no filtering or sorting by its column (JSON, computed)


def _bool_filter(value: str) -> bool:
    return v.boolean(value)


_int64 = v.integer(-(1 << 63), (1 << 63) - 1)


def _int_filter(value: str) -> int:
    return int(_int64(value))


FILTER_FOR = {"bool": _bool_filter, "int": _int_filter}


@dataclass(frozen=True, slots=True)
class ResourceSpec:
    """A top-level API resource: singular/plural names, its table, its attributes."""
    name: str
    collection: str                  # as in the URL (``security-groups``)
    table: Table
    attrs: Mapping[str, Attr]
    # Filters that need more than a column comparison: attribute -> builder(values) -> SQL condition
    # (the services' ``FILTERS``).
    special_filters: Mapping[str, Callable[[list[Any]], Any]] = field(default_factory=dict)

    @property
    def plural(self) -> str:
        """The collection's key in bodies (``security_groups``; the URL spells it with hyphens)."""
        return self.collection.replace("-", "_")


def with_columns(columns: Mapping[str, str], attrs: Mapping[str, Attr]) -> dict[str, Attr]:
    """The attributes with their filter/sort column from the service's attribute -> column map (the one
    declaration of it); an attribute marked not sortable (JSON, computed) gets none."""
    return {name: replace(a, column=columns.get(name) if a.sortable else None) for name, a in attrs.items()}


def standard_attrs(*, name_post: bool = True) -> dict[str, Attr]:
    """id, name, description, project ids, revision, timestamps, tags: on every resource."""
    s255 = v.string(255)
    return {
        "id": Attr("id", filter=str),
        "name": Attr("name", post=name_post, put=True, default="", validate=s255),
        "description": Attr("description", post=True, put=True, default="", validate=s255),
        "project_id": Attr("project_id", post=True, validate=s255),
        "tenant_id": Attr("tenant_id", post=True, validate=s255),
        "revision_number": Attr("revision_number", filter=_int_filter),
        "created_at": Attr("created_at", filter=v.timestamp),
        "updated_at": Attr("updated_at", filter=v.timestamp),
        "tags": Attr("tags", sortable=False),
    }


def _apply(spec: Attr, raw: Any) -> Any:
    if spec.validate is None:
        return raw
    try:
        return spec.validate(raw)
    except ValueError as exc:
        raise v.invalid(spec.name, str(exc)) from None


def _unwrap(body: Any, resource: ResourceSpec) -> dict[str, Any]:
    if not isinstance(body, dict) or not isinstance(body.get(resource.name), dict) or len(body) != 1:
        raise v.AttributeError_(f"Resource body required: expected {{\"{resource.name}\": {{...}}}}")
    return dict(body[resource.name])


def _check_known(resource: ResourceSpec, data: Mapping[str, Any]) -> None:
    unknown = sorted(k for k in data if k not in resource.attrs)
    if unknown:
        raise v.AttributeError_(f"Unrecognized attribute(s) '{', '.join(unknown)}'")


def parse_create(resource: ResourceSpec, item: Any, ctx: RequestContext) -> dict[str, Any]:
    """Validate one create body item (the inner dict); fill defaults; enforce write policy."""
    if not isinstance(item, dict):
        raise v.AttributeError_(f"Resource body required: expected {{\"{resource.name}\": {{...}}}}")
    _check_known(resource, item)
    out: dict[str, Any] = {}
    for key, raw in item.items():
        spec = resource.attrs[key]
        if not spec.post:
            raise v.AttributeError_(f"Attribute '{key}' not allowed in POST")
        out[key] = _apply(spec, raw)
        if spec.admin_write and not ctx.is_admin and out[key] != _default(spec):
            raise PolicyNotAuthorized(f"rule:create_{resource.name}:{key}")
    for key, spec in resource.attrs.items():
        if key in out or not spec.post:
            continue
        if spec.required:
            raise v.AttributeError_(f"Failed to parse request. Required attribute '{key}' not specified")
        if spec.default is not MISSING:
            out[key] = _default(spec)
    _project(out, ctx, resource)
    return out


def _default(spec: Attr) -> Any:
    return spec.default() if callable(spec.default) else spec.default


def _project(out: dict[str, Any], ctx: RequestContext, resource: ResourceSpec) -> None:
    project = out.pop("project_id", None)
    tenant = out.pop("tenant_id", None)
    if project is not None and tenant is not None and project != tenant:
        raise BadRequest("'project_id' and 'tenant_id' do not match", type="HTTPBadRequest")
    wanted = project or tenant or ctx.project_id
    if wanted != ctx.project_id and not ctx.is_admin:
        raise BadRequest("Specifying 'project_id' or 'tenant_id' other than the authenticated project in "
                         "request requires admin privileges", type="HTTPBadRequest")
    out["project_id"] = wanted


def parse_update(resource: ResourceSpec, body: Any, ctx: RequestContext) -> dict[str, Any]:
    data = _unwrap(body, resource)
    _check_known(resource, data)
    out: dict[str, Any] = {}
    for key, raw in data.items():
        spec = resource.attrs[key]
        if not spec.put:
            raise v.AttributeError_(f"Cannot update read-only attribute {key}")
        out[key] = _apply(spec, raw)
        if spec.admin_write and not ctx.is_admin:
            raise PolicyNotAuthorized(f"rule:update_{resource.name}:{key}")
    return out


def parse_bodies(resource: ResourceSpec, body: Any, ctx: RequestContext) -> tuple[list[dict[str, Any]], bool]:
    """A create body, single or bulk; returns validated items and whether it was bulk."""
    if isinstance(body, dict) and resource.plural in body and len(body) == 1:
        items = body[resource.plural]
        if not isinstance(items, list) or not items:
            raise v.AttributeError_(f"Resources required: expected {{\"{resource.plural}\": [...]}}")
        return [parse_create(resource, item, ctx) for item in items], True
    return [parse_create(resource, _unwrap(body, resource), ctx)], False
