"""Agents: DHCP scheduling (``/v2.0/agents/{id}/dhcp-networks`` & co.) and the channel agents use
(``/agent-api/v1``); ``/v2.0/agents`` itself is a plain collection (``resources.AGENT``).

The agent channel is what a remote ``neutrino agent`` speaks: report state (register + heartbeat), wait
for the feed to pass a revision, fetch the snapshot for its host (whole, or ``since`` the revision it
holds: intent/delta.py), report port status. It is
admin-only; ``neutrino up`` runs its agent in-process on the same ``sync.channel.Channel``.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection
from starlette.requests import Request
from starlette.responses import Response

from neutrino.api import validate as v
from neutrino.api.http import id_in_body, json_response
from neutrino.api.state import api_of
from neutrino.errors import BadRequest
from neutrino.intent import codec, delta
from neutrino.intent.report import AgentReport, PortStatus
from neutrino.intent.source import MAX_WAIT_SECONDS
from neutrino.services import dhcp, standard
from neutrino.services import networks as net_service
from neutrino.sync import cluster


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


# -- DHCP scheduling (admin) ----------------------------------------------------------------------------
async def agent_networks(request: Request) -> Response:
    api = api_of(request)
    ctx = await api.admin_context(request, "get_dhcp-networks")
    agent_id = request.path_params["id"]
    if request.method == "GET":
        def listed(conn: Connection) -> list[dict[str, Any]]:
            return net_service.view(conn, dhcp.networks_of(conn, agent_id), ctx)
        return json_response({"networks": await api.read(listed)})
    network_id = id_in_body(await api.body(request), "network_id")
    await api.write(lambda conn: dhcp.add_network(conn, api.core, ctx, agent_id, network_id))
    return Response(status_code=201)


async def agent_network(request: Request) -> Response:
    api = api_of(request)
    await api.admin_context(request, "delete_dhcp-network")
    agent_id, network_id = request.path_params["id"], request.path_params["network_id"]
    await api.write(lambda conn: dhcp.remove_network(conn, api.core, agent_id, network_id))
    return Response(status_code=204)


async def network_agents(request: Request) -> Response:
    api = api_of(request)
    ctx = await api.admin_context(request, "get_dhcp-agents")
    network_id = request.path_params["id"]
    view = api.bindings["agents"].view

    def listed(conn: Connection) -> list[dict[str, Any]]:
        return view(conn, dhcp.agents_of(conn, ctx, network_id), ctx)

    return json_response({"agents": await api.read(listed)})


# -- the agent channel ----------------------------------------------------------------------------------
async def report(request: Request) -> Response:
    api = api_of(request)
    await api.admin_context(request, "report_state")
    return json_response({"id": await api.channel.report(parse_report(await api.body(request)))})


async def snapshot(request: Request) -> Response:
    api = api_of(request)
    await api.admin_context(request, "get_snapshot")
    host = request.query_params.get("host", "")
    if not host:
        raise BadRequest("host is required", type="HTTPBadRequest")
    if "since" not in request.query_params:
        return json_response(codec.encode(await api.channel.snapshot(host)))
    # An agent holding the snapshot of revision ``since``: the networks it keeps are named, not sent.
    snap, kept = await api.channel.delta(host, _number(request, "since", int, "0", 0, 1 << 62))
    body = codec.encode(delta.without(snap, kept))
    if kept:
        body["kept"] = sorted(kept)
    return json_response(body)


async def wait(request: Request) -> Response:
    api = api_of(request)
    await api.admin_context(request, "get_snapshot")
    after = _number(request, "after", int, "0", 0, 1 << 62)
    timeout = _number(request, "timeout", float, "25", 0.0, MAX_WAIT_SECONDS)
    host = request.query_params.get("host", "")  # none: woken by every change
    if len(host) > 255:
        raise BadRequest("host must be at most 255 characters", type="HTTPBadRequest")
    return json_response({"revision": await api.channel.wait(after, timeout, host)})


async def port_status(request: Request) -> Response:
    api = api_of(request)
    await api.admin_context(request, "update_port:status")
    return json_response({"changed": await api.channel.port_status(parse_port_status(await api.body(request)))})


async def cluster_status(request: Request) -> Response:
    """``neutrino status``: servers, agents, what has not converged (sync/cluster), and this server's feed."""
    api = api_of(request)
    await api.admin_context(request, "get_agent")
    down = api.cfg.agent.agent_down_seconds
    found: dict[str, Any] = await api.read(lambda conn: cluster.view(conn, down, standard.now()))
    feed = api.feed.state()
    found["feed"] = {"server": api.base_url, "listening": feed.listening, "tail": feed.tail,
                     "waiters": feed.waiters, "wakeups": feed.wakeups}
    return json_response(found)
