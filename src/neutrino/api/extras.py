"""Sub-resources and small collections: ``/tags`` on any resource, ``/quotas``, IP availability."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response

from neutrino.api import validate as v
from neutrino.api.http import json_response
from neutrino.api.state import Api, Binding, api_of
from neutrino.errors import BadRequest, NotFound, PolicyNotAuthorized, not_found
from neutrino.services import availability, quotas, tags

MAX_QUOTA = (1 << 31) - 1


# -- tags ---------------------------------------------------------------------------------------------
def _tagged(api: Api, collection: str) -> Binding:
    """A collection whose resources carry tags (standard attributes); agents, for one, do not."""
    b = api.binding(collection)
    if "tags" not in b.spec.attrs:
        raise NotFound("The resource could not be found.", type="HTTPNotFound")
    return b


async def _tags_body(api: Api, request: Request) -> list[str]:
    body = await api.body(request)
    if not isinstance(body, dict) or set(body) != {"tags"}:
        raise BadRequest("Invalid tags body: expected {\"tags\": [...]}", type="HTTPBadRequest")
    try:
        new: list[str] = v.list_of(v.tag)(body["tags"])
    except ValueError as exc:
        raise v.invalid("tags", str(exc)) from None
    return new


async def tags_all(request: Request) -> Response:
    api = api_of(request)
    kind = _tagged(api, request.path_params["collection"]).spec.name
    ctx = await api.context(request)
    rid = request.path_params["id"]
    if request.method == "GET":
        return json_response({"tags": await api.read(lambda c: tags.show(c, ctx, kind, rid))})
    new = await _tags_body(api, request) if request.method == "PUT" else []
    await api.write(lambda c: tags.replace(c, ctx, kind, rid, new))
    if request.method == "PUT":
        return json_response({"tags": sorted(set(new))})
    return Response(status_code=204)


async def tag_one(request: Request) -> Response:
    api = api_of(request)
    kind = _tagged(api, request.path_params["collection"]).spec.name
    ctx = await api.context(request)
    rid, tag = request.path_params["id"], request.path_params["tag"]
    try:
        v.tag(tag)
    except ValueError as exc:
        raise v.invalid("tags", str(exc)) from None
    if request.method == "GET":
        await api.read(lambda c: tags.check(c, ctx, kind, rid, tag))
        return Response(status_code=204)
    if request.method == "PUT":
        await api.write(lambda c: tags.add(c, ctx, kind, rid, tag))
        return Response(status_code=201)
    await api.write(lambda c: tags.remove(c, ctx, kind, rid, tag))
    return Response(status_code=204)


# -- quotas -------------------------------------------------------------------------------------------
def _quota_body(project_id: str, limits: dict[str, int]) -> dict[str, Any]:
    return {**limits, "project_id": project_id, "tenant_id": project_id}


async def quota_list(request: Request) -> Response:
    api = api_of(request)
    await api.admin_context(request, "get_quota")
    qcfg = api.cfg.quotas

    def run(conn: Connection) -> list[dict[str, Any]]:
        return [_quota_body(p, quotas.limits(conn, qcfg, p)) for p in quotas.projects_with_limits(conn)]

    return json_response({"quotas": await api.read(run)})


async def quota_tenant(request: Request) -> Response:
    ctx = await api_of(request).context(request)
    return json_response({"tenant": {"tenant_id": ctx.project_id, "project_id": ctx.project_id}})


def _quota_values(body: Any, known: dict[str, int]) -> tuple[dict[str, int], bool]:
    """The limits asked for, and whether they must not fall below current usage (``check_limit``, which
    the stock ``openstack quota set`` sends)."""
    if not isinstance(body, dict) or not isinstance(body.get("quota"), dict):
        raise BadRequest("Invalid quota body: expected {\"quota\": {...}}", type="HTTPBadRequest")
    values: dict[str, int] = {}
    check = False
    for key, raw in body["quota"].items():
        if key == "check_limit":
            try:
                check = v.boolean(raw)
            except ValueError as exc:
                raise v.invalid(key, str(exc)) from None
            continue
        if key not in known:
            raise v.AttributeError_(f"Unrecognized attribute(s) '{key}'")
        try:
            values[key] = v.integer(-1, MAX_QUOTA)(raw)
        except ValueError as exc:
            raise v.invalid(key, str(exc)) from None
    return values, check


async def quota_one(request: Request) -> Response:
    api = api_of(request)
    qcfg = api.cfg.quotas
    ctx = await api.context(request)
    pid = request.path_params["project_id"].removesuffix(".json")
    if request.method == "GET":
        if not ctx.is_admin and pid != ctx.project_id:
            raise PolicyNotAuthorized("rule:get_quota")
        return json_response({"quota": await api.read(lambda c: quotas.limits(c, qcfg, pid))})
    if not ctx.is_admin:
        raise PolicyNotAuthorized("rule:update_quota" if request.method == "PUT" else "rule:delete_quota")
    if request.method == "DELETE":
        await api.write(lambda c: quotas.reset(c, pid))
        return Response(status_code=204)
    values, check = _quota_values(await api.body(request), quotas.defaults(qcfg))

    def run(conn: Connection) -> dict[str, int]:
        if check:
            quotas.check_not_below_usage(conn, pid, values)
        quotas.set_limits(conn, pid, values)
        return quotas.limits(conn, qcfg, pid)

    return json_response({"quota": await api.write(run)})


async def quota_default(request: Request) -> Response:
    api = api_of(request)
    await api.context(request)
    return json_response({"quota": _quota_body(request.path_params["project_id"], quotas.defaults(api.cfg.quotas))})


async def quota_details(request: Request) -> Response:
    api = api_of(request)
    ctx = await api.context(request)
    pid = request.path_params["project_id"]
    if not ctx.is_admin and pid != ctx.project_id:
        raise PolicyNotAuthorized("rule:get_quota")
    return json_response({"quota": await api.read(lambda c: quotas.details(c, api.cfg.quotas, pid))})


# -- network IP availability --------------------------------------------------------------------------
async def ip_availabilities(request: Request) -> Response:
    api = api_of(request)
    await api.admin_context(request, "get_network_ip_availability")
    ids = request.query_params.getlist("network_id") or None
    found = await api.read(lambda c: availability.availability(c, ids))
    return json_response({"network_ip_availabilities": found})


async def ip_availability(request: Request) -> Response:
    api = api_of(request)
    await api.admin_context(request, "get_network_ip_availability")
    nid = request.path_params["id"]
    found = await api.read(lambda c: availability.availability(c, [nid]))
    if not found:
        raise not_found("Network", nid)
    return json_response({"network_ip_availability": found[0]})
