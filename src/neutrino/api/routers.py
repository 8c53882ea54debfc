"""Router actions beyond the collection handlers: interfaces, atomic extra routes, L3 agent scheduling."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response

from neutrino.api import validate as v
from neutrino.api.http import id_in_body, json_response
from neutrino.api.state import api_of
from neutrino.errors import BadRequest, NotFound
from neutrino.services import l3, routers


async def interface(request: Request) -> Response:
    api = api_of(request)
    ctx = await api.context(request)
    router_id = request.path_params["id"]
    body = await api.body(request)
    if request.path_params["action"] == "add_router_interface":
        def run(conn: Connection) -> dict[str, Any]:
            return routers.add_interface(api.core, conn, ctx, router_id, body)
    else:
        def run(conn: Connection) -> dict[str, Any]:
            return routers.remove_interface(api.core, conn, ctx, router_id, body)
    return json_response(await api.write(run))


_routes = v.list_of(v.host_route)


async def extraroutes(request: Request) -> Response:
    api = api_of(request)
    ctx = await api.context(request)
    router_id = request.path_params["id"]
    body = await api.body(request)
    if not isinstance(body, dict) or not isinstance(body.get("router"), dict) or \
            set(body["router"]) != {"routes"}:
        raise BadRequest("Invalid body: expected {\"router\": {\"routes\": [...]}}", type="HTTPBadRequest")
    try:
        given = _routes(body["router"]["routes"])
    except ValueError as exc:
        raise BadRequest(f"Invalid input for routes. Reason: {exc}.", type="HTTPBadRequest") from None
    add = request.path_params["action"] == "add_extraroutes"
    b = api.bindings["routers"]

    def run(conn: Connection) -> dict[str, Any]:
        routers.change_routes(api.core, conn, ctx, router_id, given, add)
        return b.view(conn, [b.fetch(conn, ctx, router_id)], ctx)[0]

    return json_response({"router": await api.write(run)})


async def router_action(request: Request) -> Response:
    action = request.path_params["action"]
    if action in ("add_router_interface", "remove_router_interface"):
        return await interface(request)
    if action in ("add_extraroutes", "remove_extraroutes"):
        return await extraroutes(request)
    raise NotFound("The resource could not be found.", type="HTTPNotFound")


# -- L3 agent scheduling (admin) ------------------------------------------------------------------------
async def agent_routers(request: Request) -> Response:
    api = api_of(request)
    ctx = await api.admin_context(request, "get_l3-routers")
    agent_id = request.path_params["id"]
    view = api.bindings["routers"]
    if request.method == "GET":
        def listed(conn: Connection) -> list[dict[str, Any]]:
            return view.view(conn, [view.fetch(conn, ctx, rid) for rid in l3.routers_of(conn, agent_id)], ctx)
        return json_response({"routers": await api.read(listed)})
    router_id = id_in_body(await api.body(request), "router_id")

    def add(conn: Connection) -> None:
        view.fetch(conn, ctx, router_id)
        l3.add(conn, api.core, agent_id, router_id)

    await api.write(add)
    return Response(status_code=201)


async def agent_router(request: Request) -> Response:
    api = api_of(request)
    await api.admin_context(request, "delete_l3-router")
    agent_id, router_id = request.path_params["id"], request.path_params["router_id"]
    await api.write(lambda conn: l3.remove(conn, api.core, agent_id, router_id))
    return Response(status_code=204)


async def router_agents(request: Request) -> Response:
    api = api_of(request)
    ctx = await api.admin_context(request, "get_l3-agents")
    router_id = request.path_params["id"]
    b = api.bindings["routers"]
    agents_view = api.bindings["agents"]

    def listed(conn: Connection) -> list[dict[str, Any]]:
        b.fetch(conn, ctx, router_id)
        return agents_view.view(conn, [agents_view.fetch(conn, ctx, a) for a in l3.agents_of(conn, router_id)], ctx)

    return json_response({"agents": await api.read(listed)})
