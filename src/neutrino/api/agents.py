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
from neutrino.intent import codec
from neutrino.intent.model import AgentType
from neutrino.intent.report import AgentReport, PortStatus
from neutrino.services import agents as agent_service
from neutrino.services import dhcp
from neutrino.services import networks as net_service

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
        "created_at": Attr("created_at", "created_at", filter=v.timestamp),
        "started_at": Attr("started_at", "started_at", filter=v.timestamp),
        "heartbeat_timestamp": Attr("heartbeat_timestamp", "heartbeat_timestamp", filter=v.timestamp),
        "resources_synced": Attr("resources_synced", sortable=False),
    },
)


MAX_WAIT_SECONDS = 55.0  # below common proxy idle timeouts; the agent simply asks again


def _number(request: Request, name: str, kind: type[int] | type[float], default: str, lo: float, hi: float) -> Any:
    """A bounded, finite number from the query string (a NaN timeout would make a wait endless)."""
    raw = request.query_params.get(name, default)
    try:
        value = kind(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a number, not '{raw}'", type="HTTPBadRequest") from None
    if not lo <= value <= hi:  # also false for NaN
        raise BadRequest(f"{name} must be between {lo:g} and {hi:g}, not '{raw}'", type="HTTPBadRequest")
    return value


def _body_error(what: str, detail: str) -> BadRequest:
    return BadRequest(f"Invalid {what}: {detail}", type="HTTPBadRequest")


def parse_report(body: Any) -> AgentReport:
    """The body of /agent-api/v1/report (``intent.report.AgentReport`` in its JSON form)."""
    try:
        rep = codec.decode(AgentReport, body)
        v.json_dict()(rep.configurations)
    except ValueError as exc:
        raise _body_error("agent report", str(exc)) from None
    if not rep.host or len(rep.host) > 255 or not rep.host.isprintable():
        raise _body_error("agent report", "host must be a non-empty printable string")
    return rep


def parse_port_status(body: Any) -> PortStatus:
    """The body of /agent-api/v1/port-status (``intent.report.PortStatus`` in its JSON form)."""
    try:
        return codec.decode(PortStatus, body)
    except ValueError as exc:
        raise _body_error("port status", str(exc)) from None


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
        if row.agent_type != AgentType.DHCP.value:
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
        return json_response({"id": await api.channel.report(parse_report(await api.body(request)))})

    async def snap(request: Request) -> Response:
        await admin_ctx(request, "get_snapshot")
        host = request.query_params.get("host", "")
        if not host:
            raise BadRequest("host is required", type="HTTPBadRequest")
        return json_response(codec.encode(await api.channel.snapshot(host)))

    async def wait(request: Request) -> Response:
        await admin_ctx(request, "get_snapshot")
        after = _number(request, "after", int, "0", 0, 1 << 62)
        timeout = _number(request, "timeout", float, "25", 0.0, MAX_WAIT_SECONDS)
        return json_response({"revision": await api.channel.wait(after, timeout)})

    async def port_status(request: Request) -> Response:
        await admin_ctx(request, "update_port:status")
        return json_response({"changed": await api.channel.port_status(parse_port_status(await api.body(request)))})

    return [
        Route("/v2.0/agents/{id}/dhcp-networks", guarded(agent_networks), methods=["GET", "POST"]),
        Route("/v2.0/agents/{id}/dhcp-networks/{network_id}", guarded(agent_network), methods=["DELETE"]),
        Route("/v2.0/networks/{id}/dhcp-agents", guarded(network_agents), methods=["GET"]),
        Route("/agent-api/v1/report", guarded(report), methods=["POST"]),
        Route("/agent-api/v1/snapshot", guarded(snap), methods=["GET"]),
        Route("/agent-api/v1/wait", guarded(wait), methods=["GET"]),
        Route("/agent-api/v1/port-status", guarded(port_status), methods=["POST"]),
    ]
