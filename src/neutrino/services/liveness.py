"""Agents that stopped reporting lose what they host: routers and DHCP for networks move to live agents.

An agent is dead once its last heartbeat is older than ``agent.agent_down_seconds`` (the agents API shows
alive=false from then on). ``reschedule_from_dead`` moves each router of a dead L3 agent to the least
loaded live one (its ports follow: the new host wires them, the old one lets go) and takes each network
away from a dead DHCP agent when another live DHCP agent can serve it (the network gets its DHCP port
there). Nothing moves when no live agent of the kind is left: a host that comes back keeps its work.
A returning agent finds in its snapshot only what is still its own and removes the rest.

Runs in one write transaction, periodically on every API server; two servers doing it at once move a
router once (the binding row is deleted by one of them only).
"""

from __future__ import annotations

import logging

from sqlalchemy import Connection, delete, select

from neutrino.db.schema import agents, dhcp_bindings, router_bindings
from neutrino.intent.model import AgentType
from neutrino.services import dhcp, l3, standard
from neutrino.services.agents import is_alive
from neutrino.services.core import Core

log = logging.getLogger(__name__)


def _split(conn: Connection, core: Core, kind: AgentType) -> tuple[dict[str, str], bool]:
    """The dead agents of a kind (id -> host), and whether any live one of it is left."""
    rows = conn.execute(select(agents).where(agents.c.agent_type == kind.value)).all()
    down = core.cfg.agent.agent_down_seconds
    dead = {r.id: r.host for r in rows if not is_alive(r, down)}
    live = any(is_alive(r, down) and r.admin_state_up for r in rows)
    return dead, live


def reschedule_from_dead(conn: Connection, core: Core) -> int:
    """Move routers and networks off dead agents; how many moved."""
    moved = 0
    dead, live = _split(conn, core, AgentType.L3)
    if dead and live:
        for router_id, agent_id in conn.execute(select(router_bindings.c.router_id, router_bindings.c.agent_id)
                                                .where(router_bindings.c.agent_id.in_(sorted(dead)))
                                                .order_by(router_bindings.c.router_id)).all():
            gone = conn.execute(delete(router_bindings).where(router_bindings.c.router_id == router_id,
                                                              router_bindings.c.agent_id == agent_id))
            if gone.rowcount != 1:
                continue  # another server moved it
            standard.emit(conn, "router_binding", router_id, "delete", host=dead[agent_id])
            l3.schedule_router(conn, core, router_id)
            log.warning("router %s moved off the dead L3 agent on %s to %s", router_id, dead[agent_id],
                        l3.host_of(conn, router_id) or "(none)")
            moved += 1
    dead, live = _split(conn, core, AgentType.DHCP)
    if dead and live:
        for network_id, agent_id in conn.execute(select(dhcp_bindings.c.network_id, dhcp_bindings.c.agent_id)
                                                 .where(dhcp_bindings.c.agent_id.in_(sorted(dead)))
                                                 .order_by(dhcp_bindings.c.network_id)).all():
            gone = conn.execute(delete(dhcp_bindings).where(dhcp_bindings.c.network_id == network_id,
                                                            dhcp_bindings.c.agent_id == agent_id))
            if gone.rowcount != 1:
                continue
            standard.emit(conn, "dhcp_binding", network_id, "delete", network_id=network_id, host=dead[agent_id])
            dhcp.reconcile_network(conn, core, network_id)
            log.warning("DHCP for network %s moved off the dead agent on %s", network_id, dead[agent_id])
            moved += 1
    return moved

