"""Sub-resources and small collections: ``/tags`` on any resource, ``/quotas``, IP availability."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, func, select
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from neutrino.api import validate as v
from neutrino.db.schema import ipallocations, networks, subnets
from neutrino.errors import BadRequest, NotFound, PolicyNotAuthorized, not_found
from neutrino.ipam.pools import Pool, pool_size
from neutrino.services import quotas, standard
from neutrino.services.core import require_owner, require_writer

if TYPE_CHECKING:
    from neutrino.api.app import Api, Binding, Handler


MAX_QUOTA = (1 << 31) - 1


def routes(api: Api, guarded: Callable[[Handler], Handler]) -> list[BaseRoute]:
    from neutrino.api.app import _binding, json_response

    def tagged(collection: str) -> Binding:
        """A collection whose resources carry tags (standard attributes); agents, for one, do not."""
        b = _binding(api, collection)
        if "tags" not in b.spec.attrs:
            raise NotFound("The resource could not be found.", type="HTTPNotFound")
        return b

    def owned(conn: Connection, b: Binding, request: Request, write: bool, ctx: Any) -> Any:
        row = b.fetch(conn, ctx, request.path_params["id"])
        if write:
            require_writer(ctx, f"update_{b.spec.name}")
            require_owner(ctx, row.project_id, f"update_{b.spec.name}:tags")
        return row

    def current(conn: Connection, rid: str) -> list[str]:
        return standard.load_tags(conn, [rid]).get(rid, [])

    async def tags_all(request: Request) -> Response:
        b = tagged(request.path_params["collection"])
        ctx = await api.context(request)
        rid = request.path_params["id"]
        if request.method == "GET":
            found = await api.read(lambda c: (owned(c, b, request, False, ctx), current(c, rid))[1])
            return json_response({"tags": found})
        new: list[str] = []
        if request.method == "PUT":
            body = await api.body(request)
            if not isinstance(body, dict) or set(body) != {"tags"}:
                raise BadRequest("Invalid tags body: expected {\"tags\": [...]}", type="HTTPBadRequest")
            try:
                new = v.list_of(v.tag)(body["tags"])
            except ValueError as exc:
                raise v.invalid("tags", str(exc)) from None

        def run(conn: Connection) -> None:
            owned(conn, b, request, True, ctx)
            standard.set_tags(conn, b.spec.name, rid, new)
            standard.bump(conn, b.spec.table, rid)
            standard.emit(conn, b.spec.name, rid, "update")

        await api.write(run)
        if request.method == "PUT":
            return json_response({"tags": sorted(set(new))})
        return Response(status_code=204)

    async def tag_one(request: Request) -> Response:
        b = tagged(request.path_params["collection"])
        ctx = await api.context(request)
        rid, tag = request.path_params["id"], request.path_params["tag"]
        try:
            v.tag(tag)
        except ValueError as exc:
            raise v.invalid("tags", str(exc)) from None

        def missing() -> NotFound:
            return NotFound(f"Tag {tag} could not be found for {b.spec.name} {rid}.", type="TagNotFound")

        if request.method == "GET":
            found = await api.read(lambda c: (owned(c, b, request, False, ctx), current(c, rid))[1])
            if tag not in found:
                raise missing()
            return Response(status_code=204)

        def run(conn: Connection) -> None:
            owned(conn, b, request, True, ctx)
            have = current(conn, rid)
            if request.method == "DELETE" and tag not in have:
                raise missing()
            new = [t for t in have if t != tag] + ([tag] if request.method == "PUT" else [])
            if sorted(set(new)) != have:
                standard.set_tags(conn, b.spec.name, rid, new)
                standard.bump(conn, b.spec.table, rid)
                standard.emit(conn, b.spec.name, rid, "update")

        await api.write(run)
        return Response(status_code=201 if request.method == "PUT" else 204)

    # -- quotas ---------------------------------------------------------------------------------------
    qcfg = api.cfg.quotas

    def quota_body(project_id: str, limits: dict[str, int]) -> dict[str, Any]:
        return {**limits, "project_id": project_id, "tenant_id": project_id}

    async def quota_list(request: Request) -> Response:
        ctx = await api.context(request)
        if not ctx.is_admin:
            raise PolicyNotAuthorized("rule:get_quota")

        def run(conn: Connection) -> list[dict[str, Any]]:
            return [quota_body(p, quotas.limits(conn, qcfg, p)) for p in quotas.projects_with_limits(conn)]

        return json_response({"quotas": await api.read(run)})

    async def quota_tenant(request: Request) -> Response:
        ctx = await api.context(request)
        return json_response({"tenant": {"tenant_id": ctx.project_id, "project_id": ctx.project_id}})

    async def quota_one(request: Request) -> Response:
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
        body = await api.body(request)
        if not isinstance(body, dict) or not isinstance(body.get("quota"), dict):
            raise BadRequest("Invalid quota body: expected {\"quota\": {...}}", type="HTTPBadRequest")
        known = quotas.defaults(qcfg)
        values: dict[str, int] = {}
        for key, raw in body["quota"].items():
            if key not in known:
                raise v.AttributeError_(f"Unrecognized attribute(s) '{key}'")
            try:
                values[key] = v.integer(-1, MAX_QUOTA)(raw)
            except ValueError as exc:
                raise v.invalid(key, str(exc)) from None

        def run(conn: Connection) -> dict[str, int]:
            quotas.set_limits(conn, pid, values)
            return quotas.limits(conn, qcfg, pid)

        return json_response({"quota": await api.write(run)})

    async def quota_default(request: Request) -> Response:
        await api.context(request)
        return json_response({"quota": quota_body(request.path_params["project_id"], quotas.defaults(qcfg))})

    async def quota_details(request: Request) -> Response:
        ctx = await api.context(request)
        pid = request.path_params["project_id"]
        if not ctx.is_admin and pid != ctx.project_id:
            raise PolicyNotAuthorized("rule:get_quota")
        return json_response({"quota": await api.read(lambda c: quotas.details(c, qcfg, pid))})

    # -- network IP availability ----------------------------------------------------------------------
    def availability(conn: Connection, network_ids: list[str] | None) -> list[dict[str, Any]]:
        stmt = select(networks).order_by(networks.c.created_at, networks.c.id)
        if network_ids is not None:
            stmt = stmt.where(networks.c.id.in_(network_ids))
        nets = conn.execute(stmt).all()
        used: dict[str, int] = dict(conn.execute(select(ipallocations.c.subnet_id, func.count())
                                 .group_by(ipallocations.c.subnet_id)).all())
        by_net: dict[str, list[Any]] = {}
        for s in conn.execute(select(subnets).order_by(subnets.c.created_at, subnets.c.id)):
            by_net.setdefault(s.network_id, []).append(s)
        out = []
        for n in nets:
            subs = [{"subnet_id": s.id, "subnet_name": s.name, "cidr": s.cidr, "ip_version": s.ip_version,
                     "total_ips": pool_size([Pool(ipaddress.ip_address(p["start"]), ipaddress.ip_address(p["end"]))
                                             for p in s.allocation_pools]),
                     "used_ips": used.get(s.id, 0)} for s in by_net.get(n.id, [])]
            out.append({"network_id": n.id, "network_name": n.name, "project_id": n.project_id,
                        "tenant_id": n.project_id, "total_ips": sum(s["total_ips"] for s in subs),
                        "used_ips": sum(s["used_ips"] for s in subs), "subnet_ip_availability": subs})
        return out

    async def ip_availabilities(request: Request) -> Response:
        ctx = await api.context(request)
        if not ctx.is_admin:
            raise PolicyNotAuthorized("rule:get_network_ip_availability")
        ids = request.query_params.getlist("network_id") or None
        return json_response({"network_ip_availabilities": await api.read(lambda c: availability(c, ids))})

    async def ip_availability(request: Request) -> Response:
        ctx = await api.context(request)
        if not ctx.is_admin:
            raise PolicyNotAuthorized("rule:get_network_ip_availability")
        nid = request.path_params["id"]
        found = await api.read(lambda c: availability(c, [nid]))
        if not found:
            raise not_found("Network", nid)
        return json_response({"network_ip_availability": found[0]})

    return [
        Route("/v2.0/quotas", guarded(quota_list), methods=["GET"]),
        Route("/v2.0/quotas/tenant", guarded(quota_tenant), methods=["GET"]),
        Route("/v2.0/quotas/{project_id}/default", guarded(quota_default), methods=["GET"]),
        Route("/v2.0/quotas/{project_id}/details", guarded(quota_details), methods=["GET"]),
        Route("/v2.0/quotas/{project_id}/details.json", guarded(quota_details), methods=["GET"]),
        Route("/v2.0/quotas/{project_id}", guarded(quota_one), methods=["GET", "PUT", "DELETE"]),
        Route("/v2.0/network-ip-availabilities", guarded(ip_availabilities), methods=["GET"]),
        Route("/v2.0/network-ip-availabilities/{id}", guarded(ip_availability), methods=["GET"]),
        Route("/v2.0/{collection}/{id}/tags", guarded(tags_all), methods=["GET", "PUT", "DELETE"]),
        Route("/v2.0/{collection}/{id}/tags/{tag}", guarded(tag_one), methods=["GET", "PUT", "DELETE"]),
    ]
