"""Agents: the admin API (``/v2.0/agents``, DHCP scheduling) and the channel agents use (``/agent-api/v1``).

The agent channel is what a remote ``neutrino agent`` speaks: report state (register + heartbeat), wait
for the feed to pass a revision, fetch the full snapshot for its host, report port status. It is
admin-only; ``neutrino up`` runs its agent in-process and calls the same service functions directly.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, select
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from neutrino.api import validate as v
from neutrino.api.attributes import Attr, ResourceSpec
from neutrino.db.schema import agents, dhcp_bindings, networks
from neutrino.errors import BadRequest, Conflict, NotFound, PolicyNotAuthorized
from neutrino.services import agents as agent_service
from neutrino.services import dhcp, ports
from neutrino.services import networks as net_service
from neutrino.sync import snapshot

if TYPE_CHECKING:
    from neutrino.api.app import Api, Handler

AGENT = ResourceSpec(
    name="agent",
    collection="agents",
    table=agents,
    attrs={
        "id": Attr("id", "id"),
        "agent_type": Attr("agent_type", "agent_type"),
        "binary": Attr("binary", "binary"),
        "topic": Attr("topic", "topic"),
        "host": Attr("host", "host"),
        "admin_state_up": Attr("admin_state_up", "admin_state_up", put=True, validate=v.boolean,
                               filter=lambda x: v.boolean(x)),
        "description": Attr("description", "description", put=True, validate=v.string(255)),
        "alive": Attr("alive", sortable=False),
        "availability_zone": Attr("availability_zone", "availability_zone"),
        "configurations": Attr("configurations", sortable=False),
        "created_at": Attr("created_at", "created_at"),
        "started_at": Attr("started_at", "started_at"),
        "heartbeat_timestamp": Attr("heartbeat_timestamp", "heartbeat_timestamp"),
        "resources_synced": Attr("resources_synced", sortable=False),
    },
)


def routes(api: Api, guarded: Callable[[Handler], Handler]) -> list[BaseRoute]:
    from neutrino.api.app import json_response

    down_after = api.cfg.agent.agent_down_seconds
    view = agent_service.make_view(down_after)

    async def admin_ctx(request: Request, action: str) -> Any:
        ctx = await api.context(request)
        if not ctx.is_admin:
            raise PolicyNotAuthorized(f"rule:{action}")
        return ctx

    def dhcp_agent(conn: Connection, agent_id: str) -> Any:
        row = conn.execute(select(agents).where(agents.c.id == agent_id)).first()
        if row is None:
            raise NotFound(f"Agent {agent_id} could not be found.", type="AgentNotFound")
        if row.agent_type != agent_service.AgentType.DHCP.value:
            raise Conflict(f"Agent {agent_id} is not a DHCP Agent or has been disabled.", type="InvalidDHCPAgent")
        return row

    async def agent_networks(request: Request) -> Response:
        ctx = await admin_ctx(request, "get_dhcp-networks")
        agent_id = request.path_params["id"]
        if request.method == "GET":
            def listed(conn: Connection) -> list[dict[str, Any]]:
                dhcp_agent(conn, agent_id)
                rows = conn.execute(select(networks).join(dhcp_bindings, dhcp_bindings.c.network_id == networks.c.id)
                                    .where(dhcp_bindings.c.agent_id == agent_id)
                                    .order_by(networks.c.created_at)).all()
                return net_service.view(conn, rows, ctx)
            return json_response({"networks": await api.read(listed)})
        body = await api.body(request)
        if not isinstance(body, dict) or not isinstance(body.get("network_id"), str):
            raise BadRequest("Invalid body: expected {\"network_id\": ...}", type="HTTPBadRequest")
        network_id = body["network_id"]

        def add(conn: Connection) -> None:
            dhcp_agent(conn, agent_id)
            net_service.fetch(conn, ctx, network_id)
            if conn.execute(select(dhcp_bindings).where(dhcp_bindings.c.agent_id == agent_id,
                                                        dhcp_bindings.c.network_id == network_id)).first():
                raise Conflict(f"The network {network_id} has been already hosted by the DHCP Agent {agent_id}.",
                               type="NetworkHostedByDHCPAgent")
            dhcp.add_network(conn, api.core, agent_id, network_id)

        await api.write(add)
        return Response(status_code=201)

    async def agent_network(request: Request) -> Response:
        await admin_ctx(request, "delete_dhcp-network")
        agent_id, network_id = request.path_params["id"], request.path_params["network_id"]

        def remove(conn: Connection) -> None:
            dhcp_agent(conn, agent_id)
            if not conn.execute(select(dhcp_bindings).where(dhcp_bindings.c.agent_id == agent_id,
                                                            dhcp_bindings.c.network_id == network_id)).first():
                raise Conflict(f"The network {network_id} is not hosted by the DHCP agent {agent_id}.",
                               type="NetworkNotHostedByDhcpAgent")
            dhcp.remove_network(conn, api.core, agent_id, network_id)

        await api.write(remove)
        return Response(status_code=204)

    async def network_agents(request: Request) -> Response:
        ctx = await admin_ctx(request, "get_dhcp-agents")
        network_id = request.path_params["id"]

        def listed(conn: Connection) -> list[dict[str, Any]]:
            net_service.fetch(conn, ctx, network_id)
            rows = conn.execute(select(agents).join(dhcp_bindings, dhcp_bindings.c.agent_id == agents.c.id)
                                .where(dhcp_bindings.c.network_id == network_id).order_by(agents.c.host)).all()
            found: list[dict[str, Any]] = view(conn, rows, ctx)
            return found

        return json_response({"agents": await api.read(listed)})

    # -- the agent channel ----------------------------------------------------------------------------
    async def report(request: Request) -> Response:
        await admin_ctx(request, "report_state")
        body = await api.body(request)
        try:
            rep = agent_service.AgentReport(host=str(body["host"]), agent_type=agent_service.AgentType(
                body["agent_type"]), configurations=dict(body.get("configurations", {})),
                start_flag=bool(body.get("start_flag", False)))
        except (KeyError, ValueError, TypeError) as exc:
            raise BadRequest(f"Invalid agent report: {exc}", type="HTTPBadRequest") from None
        agent_id = await api.write(lambda conn: api.agent_report(conn, rep))
        return json_response({"id": agent_id})

    async def snap(request: Request) -> Response:
        await admin_ctx(request, "get_snapshot")
        host = request.query_params.get("host", "")
        if not host:
            raise BadRequest("host is required", type="HTTPBadRequest")
        found = await api.read(lambda conn: snapshot.build(conn, host, down_after))
        return json_response(snapshot.to_json(found))

    async def wait(request: Request) -> Response:
        await admin_ctx(request, "get_snapshot")
        try:
            after = int(request.query_params.get("after", "0"))
            timeout = min(float(request.query_params.get("timeout", "25")), 55.0)
        except ValueError:
            raise BadRequest("after and timeout must be numbers", type="HTTPBadRequest") from None
        return json_response({"revision": await api.feed.wait(after, timeout)})

    async def port_status(request: Request) -> Response:
        await admin_ctx(request, "update_port:status")
        body = await api.body(request)
        host = str(body.get("host", ""))
        active, down = list(body.get("active", [])), list(body.get("down", []))
        changed = await api.write(lambda conn: ports.set_status(conn, host, active, down))
        return json_response({"changed": changed})

    return [
        Route("/v2.0/agents/{id}/dhcp-networks", guarded(agent_networks), methods=["GET", "POST"]),
        Route("/v2.0/agents/{id}/dhcp-networks/{network_id}", guarded(agent_network), methods=["DELETE"]),
        Route("/v2.0/networks/{id}/dhcp-agents", guarded(network_agents), methods=["GET"]),
        Route("/agent-api/v1/report", guarded(report), methods=["POST"]),
        Route("/agent-api/v1/snapshot", guarded(snap), methods=["GET"]),
        Route("/agent-api/v1/wait", guarded(wait), methods=["GET"]),
        Route("/agent-api/v1/port-status", guarded(port_status), methods=["POST"]),
    ]
