"""The version documents, extensions, and the generic collection handlers (list, show, create, update,
delete) every resource in ``Api.bindings`` shares."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response

from neutrino.api import discovery, listing
from neutrino.api.attributes import parse_bodies, parse_update
from neutrino.api.http import json_response
from neutrino.api.state import Api, Binding, api_of
from neutrino.errors import NotFound
from neutrino.services.listing import read_page


async def root(request: Request) -> Response:
    return json_response(discovery.versions(api_of(request).base_url))


async def v2(request: Request) -> Response:
    api = api_of(request)
    await api.context(request)
    return json_response(discovery.resources(api.base_url))


async def extensions(request: Request) -> Response:
    await api_of(request).context(request)
    return json_response({"extensions": [e.as_dict() for e in discovery.EXTENSIONS]})


async def extension(request: Request) -> Response:
    await api_of(request).context(request)
    ext = discovery.BY_ALIAS.get(request.path_params["alias"])
    if ext is None:
        raise NotFound(f"Extension with alias {request.path_params['alias']} does not exist",
                       type="HTTPNotFound")
    return json_response({"extension": ext.as_dict()})


async def collection(request: Request) -> Response:
    api = api_of(request)
    b = api.binding(request.path_params["collection"])
    if request.method == "GET":
        return await list_(api, request, b)
    return await create(api, request, b)


async def member(request: Request) -> Response:
    api = api_of(request)
    b = api.binding(request.path_params["collection"])
    rid = request.path_params["id"].removesuffix(".json")
    if request.method == "GET":
        return await show(api, request, b, rid)
    if request.method == "PUT":
        return await update(api, request, b, rid)
    return await delete(api, request, b, rid)


async def list_(api: Api, request: Request, b: Binding) -> Response:
    ctx = await api.context(request)
    params = list(request.query_params.multi_items())
    q = listing.parse_list_query(b.spec, params, is_admin=ctx.is_admin,
                                 default_limit=api.cfg.api.default_page_limit)
    page = listing.page_of(b.spec, q)
    kind = "".join(part.capitalize() for part in b.spec.name.split("_"))
    if b.list_needs is not None and b.before_list is not None:
        needs, before = b.list_needs, b.before_list
        if await api.read(lambda conn: needs(conn, ctx)):
            await api.write(lambda conn: before(api.core, conn, ctx))

    def run(conn: Connection) -> list[dict[str, Any]]:
        rows = read_page(conn, b.spec.table, kind, page, b.scope(ctx), b.spec.special_filters)
        return b.view(conn, rows, ctx)

    items = await api.read(run)
    body: dict[str, Any] = {b.spec.plural: [listing.select_fields(i, q.fields) for i in items]}
    links = listing.page_links(api.base_url, b.spec.collection, params, q, items)
    if links:
        body[f"{b.spec.plural}_links"] = links
    return json_response(body)


async def show(api: Api, request: Request, b: Binding, rid: str) -> Response:
    ctx = await api.context(request)
    fields = tuple(f for value in request.query_params.getlist("fields") for f in value.split(",") if f)
    item = await api.read(lambda conn: b.view(conn, [b.fetch(conn, ctx, rid)], ctx)[0])
    return json_response({b.spec.name: listing.select_fields(item, fields)})


async def create(api: Api, request: Request, b: Binding) -> Response:
    ctx = await api.context(request)
    items, bulk = parse_bodies(b.spec, await api.body(request), ctx)

    def run(conn: Connection) -> list[dict[str, Any]]:
        ids = [b.create(api.core, conn, ctx, dict(item)) for item in items]
        rows = [b.fetch(conn, ctx, rid) for rid in ids]
        return b.view(conn, rows, ctx)

    created = await api.write(run)
    if bulk:
        return json_response({b.spec.plural: created}, 201)
    return json_response({b.spec.name: created[0]}, 201)


async def update(api: Api, request: Request, b: Binding, rid: str) -> Response:
    ctx = await api.context(request)
    data = parse_update(b.spec, await api.body(request), ctx)
    if_match = request.headers.get("if-match")

    def run(conn: Connection) -> dict[str, Any]:
        b.update(api.core, conn, ctx, rid, data, if_match)
        return b.view(conn, [b.fetch(conn, ctx, rid)], ctx)[0]

    return json_response({b.spec.name: await api.write(run)})


async def delete(api: Api, request: Request, b: Binding, rid: str) -> Response:
    ctx = await api.context(request)
    if_match = request.headers.get("if-match")
    await api.write(lambda conn: b.delete(api.core, conn, ctx, rid, if_match))
    return Response(status_code=204)
