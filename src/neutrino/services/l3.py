"""L3 agent scheduling: each router on one live L3 agent (least loaded), routers-of-agent and
agents-of-router as the l3_agent_scheduler extension shows them."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, true

from neutrino.db.schema import agents, ports, router_bindings, routers
from neutrino.errors import Conflict, NotFound
from neutrino.intent.model import ROUTER_OWNERS, AgentType
from neutrino.services import standard
from neutrino.services.agents import is_alive
from neutrino.services.core import Core
from neutrino.services.ports import binding


def _live_l3_agents(conn: Connection, core: Core) -> list[Any]:
    rows = conn.execute(select(agents).where(agents.c.agent_type == AgentType.L3.value,
                                             agents.c.admin_state_up == true())).all()
    return [r for r in rows if is_alive(r, core.cfg.agent.agent_down_seconds)]


def schedule_router(conn: Connection, core: Core, router_id: str) -> None:
    if conn.execute(select(router_bindings.c.agent_id).where(router_bindings.c.router_id == router_id)).first():
        return
    load: dict[str, int] = dict(conn.execute(select(router_bindings.c.agent_id, func.count())
                             .group_by(router_bindings.c.agent_id)).all())
    candidates = sorted(_live_l3_agents(conn, core), key=lambda a: (load.get(a.id, 0), a.host))
    if candidates:
        _bind(conn, core, router_id, candidates[0])


def _bind(conn: Connection, core: Core, router_id: str, agent: Any) -> None:
    conn.execute(insert(router_bindings).values(router_id=router_id, agent_id=agent.id))
    standard.emit(conn, "router_binding", router_id, "create", host=agent.host)
    bind_ports(conn, core, router_id, agent.host)


def host_of(conn: Connection, router_id: str) -> str:
    """The host of the router's L3 agent ('' while unscheduled)."""
    row = conn.execute(select(agents.c.host).join(router_bindings, router_bindings.c.agent_id == agents.c.id)
                       .where(router_bindings.c.router_id == router_id)).first()
    return str(row[0]) if row is not None else ""


def bind_ports(conn: Connection, core: Core, router_id: str, host: str) -> None:
    """A router's own ports (interfaces, gateway) are bound where its L3 agent runs: that host's agent
    wires them and reports their status, and the other hosts send the router's networks' traffic there."""
    found = conn.execute(select(ports.c.id, ports.c.network_id, ports.c.binding_host_id).where(
        ports.c.device_id == router_id, ports.c.device_owner.in_(sorted(ROUTER_OWNERS)))).all()
    for port_id, network_id, old in found:
        if old == host:
            continue
        standard.bump(conn, ports, port_id, {"binding_host_id": host, "status": "DOWN",
                                             **binding(conn, core, host)})
        for where in {old, host} - {""}:  # the old host lets go, the new one takes it
            standard.emit(conn, "port", port_id, "update", network_id=network_id, host=where)


def schedule_unscheduled(conn: Connection, core: Core) -> None:
    """After an L3 agent appears: every router without an agent gets one."""
    bound = select(router_bindings.c.router_id)
    for (rid,) in conn.execute(select(routers.c.id).where(routers.c.id.not_in(bound)).order_by(routers.c.id)).all():
        schedule_router(conn, core, rid)


def router_deleted(conn: Connection, router_id: str) -> None:
    for (host,) in conn.execute(select(agents.c.host).join(router_bindings, router_bindings.c.agent_id == agents.c.id)
                                .where(router_bindings.c.router_id == router_id)).all():
        standard.emit(conn, "router_binding", router_id, "delete", host=host)
    conn.execute(delete(router_bindings).where(router_bindings.c.router_id == router_id))


def agent(conn: Connection, agent_id: str) -> Any:
    row = conn.execute(select(agents).where(agents.c.id == agent_id)).first()
    if row is None:
        raise NotFound(f"Agent {agent_id} could not be found.", type="AgentNotFound")
    if row.agent_type != AgentType.L3.value:
        raise Conflict(f"Agent {agent_id} is not a L3 Agent or has been disabled.", type="InvalidL3Agent")
    return row


def routers_of(conn: Connection, agent_id: str) -> list[str]:
    agent(conn, agent_id)
    return [r[0] for r in conn.execute(select(router_bindings.c.router_id)
                                       .where(router_bindings.c.agent_id == agent_id)
                                       .order_by(router_bindings.c.router_id))]


def agents_of(conn: Connection, router_id: str) -> list[str]:
    return [r[0] for r in conn.execute(select(router_bindings.c.agent_id)
                                       .where(router_bindings.c.router_id == router_id))]


def add(conn: Connection, core: Core, agent_id: str, router_id: str) -> None:
    row = agent(conn, agent_id)
    current = agents_of(conn, router_id)
    if agent_id in current:
        return
    if current:
        raise Conflict(f"The router {router_id} has been already hosted by the L3 Agent {current[0]}.",
                       type="RouterHostedByL3Agent")
    _bind(conn, core, router_id, row)


def remove(conn: Connection, core: Core, agent_id: str, router_id: str) -> None:
    row = agent(conn, agent_id)
    if agent_id not in agents_of(conn, router_id):
        raise NotFound(f"The router {router_id} is not hosted by L3 agent {agent_id}.",
                       type="RouterNotHostedByL3Agent")
    conn.execute(delete(router_bindings).where(router_bindings.c.router_id == router_id))
    standard.emit(conn, "router_binding", router_id, "delete", host=row.host)
    bind_ports(conn, core, router_id, "")
