"""DHCP scheduling: which DHCP agents serve a network, and the DHCP ports that give dnsmasq its addresses.

``reconcile_network`` is level-triggered like the agents: from the network's subnets and the live DHCP
agents it computes the bindings and DHCP ports the network should have and makes the DB say so. It runs
in the transaction of whatever changed (a subnet, a scheduling call, an agent registering).
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, true

from neutrino.context import RequestContext
from neutrino.db.schema import agents, dhcp_bindings, ipallocations, networks, ports, subnets
from neutrino.errors import Conflict, NotFound
from neutrino.intent.model import AgentType, DeviceOwner
from neutrino.services import addresses, rows, standard
from neutrino.services import networks as net_service
from neutrino.services import ports as port_service
from neutrino.services.agents import is_alive
from neutrino.services.core import Core

log = logging.getLogger(__name__)


def device_id(host: str, network_id: str) -> str:
    """Neutron's convention: one DHCP port per (host, network), named after both."""
    return f"dhcp{uuid.uuid5(uuid.NAMESPACE_DNS, host)}-{network_id}"


def dhcp_subnets(conn: Connection, network_id: str) -> list[str]:
    return [r[0] for r in conn.execute(select(subnets.c.id).where(
        subnets.c.network_id == network_id, subnets.c.enable_dhcp == true())
        .order_by(subnets.c.created_at, subnets.c.id))]


def _live_dhcp_agents(conn: Connection, core: Core) -> list[Any]:
    rows = conn.execute(select(agents).where(agents.c.agent_type == AgentType.DHCP.value,
                                             agents.c.admin_state_up == true())).all()
    return [r for r in rows if is_alive(r, core.cfg.agent.agent_down_seconds)]


def _load(conn: Connection) -> dict[str, int]:
    return dict(conn.execute(select(dhcp_bindings.c.agent_id, func.count()).group_by(dhcp_bindings.c.agent_id)).all())


def schedule(conn: Connection, core: Core, network_id: str) -> None:
    """Bind the network to more live DHCP agents (least loaded first) until it has enough."""
    bound = {r[0] for r in conn.execute(select(dhcp_bindings.c.agent_id)
                                        .where(dhcp_bindings.c.network_id == network_id))}
    want = core.cfg.network.dhcp_agents_per_network
    if len(bound) >= want:
        return
    load = _load(conn)
    candidates = sorted((a for a in _live_dhcp_agents(conn, core) if a.id not in bound),
                        key=lambda a: (load.get(a.id, 0), a.host))
    for agent in candidates[: want - len(bound)]:
        conn.execute(insert(dhcp_bindings).values(network_id=network_id, agent_id=agent.id))
        standard.emit(conn, "dhcp_binding", network_id, "create", network_id=network_id, host=agent.host)


def reconcile_network(conn: Connection, core: Core, network_id: str) -> None:
    """Make bindings and DHCP ports match the network's DHCP-enabled subnets."""
    wanted_subnets = dhcp_subnets(conn, network_id)
    if wanted_subnets:
        schedule(conn, core, network_id)
    else:
        conn.execute(delete(dhcp_bindings).where(dhcp_bindings.c.network_id == network_id))
    hosts = {r.host for r in conn.execute(
        select(agents.c.host).join(dhcp_bindings, dhcp_bindings.c.agent_id == agents.c.id)
        .where(dhcp_bindings.c.network_id == network_id))}
    existing = conn.execute(select(ports).where(ports.c.network_id == network_id,
                                                ports.c.device_owner == DeviceOwner.DHCP)).all()
    for port in existing:
        if port.binding_host_id not in hosts or not wanted_subnets:
            rows.delete_ports(conn, [port])
        else:
            _fix_addresses(conn, core, port, wanted_subnets)
            hosts.discard(port.binding_host_id)
    for host in sorted(hosts):
        _create_port(conn, core, network_id, host, wanted_subnets)


def _create_port(conn: Connection, core: Core, network_id: str, host: str, subnet_ids: list[str]) -> None:
    project_id = conn.execute(select(networks.c.project_id).where(networks.c.id == network_id)).scalar_one()
    mac = port_service.unique_mac(conn, core, network_id, None)
    ips = _addresses(conn, core, network_id, [], subnet_ids, mac)
    rows.insert_port(conn, {
        "project_id": project_id, "name": "", "description": "", "network_id": network_id,
        "mac_address": mac, "admin_state_up": True, "status": "DOWN", "device_id": device_id(host, network_id),
        "device_owner": DeviceOwner.DHCP.value, "port_security_enabled": False,
        "allowed_address_pairs": [], "extra_dhcp_opts": [], "binding_host_id": host,
        "binding_vnic_type": "normal", "binding_profile": {}, **port_service.binding(conn, core, host),
    }, ips)


def _fix_addresses(conn: Connection, core: Core, port: Any, subnet_ids: list[str]) -> None:
    current = conn.execute(select(ipallocations.c.subnet_id, ipallocations.c.ip_address)
                           .where(ipallocations.c.port_id == port.id)).all()
    have = {sid for sid, _ in current}
    if have == set(subnet_ids):
        return
    keep = [(sid, ip) for sid, ip in current if sid in subnet_ids]
    ips = _addresses(conn, core, port.network_id, keep, [sid for sid in subnet_ids if sid not in have],
                     port.mac_address)
    if ips == [(sid, ip) for sid, ip in current]:
        return
    rows.replace_ips(conn, port.id, port.network_id, ips)
    standard.bump(conn, ports, port.id)
    standard.emit(conn, "port", port.id, "update", network_id=port.network_id, host=port.binding_host_id)


def _addresses(conn: Connection, core: Core, network_id: str, keep: list[tuple[str, str]], add: list[str],
               mac: str) -> list[tuple[str, str]]:
    """Keep these addresses and get one from each of ``add``; a full subnet is skipped, not fatal (its
    clients go without DHCP until an address frees up, as with Neutron)."""
    out = list(keep)
    for subnet_id in add:
        try:
            out += addresses.allocate(core, conn, network_id, [{"subnet_id": subnet_id}], mac, DeviceOwner.DHCP,
                                      keep=out)
        except Conflict:
            log.warning("no address left for the DHCP port of network %s on subnet %s", network_id, subnet_id)
    return out


def schedule_unscheduled(conn: Connection, core: Core) -> None:
    """After an agent appears: every network that needs DHCP and lacks agents gets them."""
    needing = {r[0] for r in conn.execute(select(subnets.c.network_id).where(subnets.c.enable_dhcp == true()))}
    for network_id in sorted(needing):
        reconcile_network(conn, core, network_id)


def agent(conn: Connection, agent_id: str) -> Any:
    """The DHCP agent ``agent_id``: AgentNotFound, or InvalidDHCPAgent when it is another kind."""
    row = conn.execute(select(agents).where(agents.c.id == agent_id)).first()
    if row is None:
        raise NotFound(f"Agent {agent_id} could not be found.", type="AgentNotFound")
    if row.agent_type != AgentType.DHCP.value:
        raise Conflict(f"Agent {agent_id} is not a DHCP Agent or has been disabled.", type="InvalidDHCPAgent")
    return row


def _bound(conn: Connection, agent_id: str, network_id: str) -> bool:
    return conn.execute(select(dhcp_bindings).where(dhcp_bindings.c.agent_id == agent_id,
                                                    dhcp_bindings.c.network_id == network_id)).first() is not None


def networks_of(conn: Connection, agent_id: str) -> list[Any]:
    """The network rows a DHCP agent hosts, oldest first."""
    agent(conn, agent_id)
    return list(conn.execute(select(networks).join(dhcp_bindings, dhcp_bindings.c.network_id == networks.c.id)
                             .where(dhcp_bindings.c.agent_id == agent_id).order_by(networks.c.created_at)).all())


def agents_of(conn: Connection, ctx: RequestContext, network_id: str) -> list[Any]:
    """The agent rows hosting a network, by host."""
    net_service.fetch(conn, ctx, network_id)
    return list(conn.execute(select(agents).join(dhcp_bindings, dhcp_bindings.c.agent_id == agents.c.id)
                             .where(dhcp_bindings.c.network_id == network_id).order_by(agents.c.host)).all())


def add_network(conn: Connection, core: Core, ctx: RequestContext, agent_id: str, network_id: str) -> None:
    """Admin: bind a network to a DHCP agent explicitly."""
    agent(conn, agent_id)
    net_service.fetch(conn, ctx, network_id)
    if _bound(conn, agent_id, network_id):
        raise Conflict(f"The network {network_id} has been already hosted by the DHCP Agent {agent_id}.",
                       type="NetworkHostedByDHCPAgent")
    conn.execute(insert(dhcp_bindings).values(network_id=network_id, agent_id=agent_id))
    host = conn.execute(select(agents.c.host).where(agents.c.id == agent_id)).scalar_one()
    standard.emit(conn, "dhcp_binding", network_id, "create", network_id=network_id, host=host)
    reconcile_network(conn, core, network_id)


def remove_network(conn: Connection, core: Core, agent_id: str, network_id: str) -> None:
    agent(conn, agent_id)
    if not _bound(conn, agent_id, network_id):
        raise Conflict(f"The network {network_id} is not hosted by the DHCP agent {agent_id}.",
                       type="NetworkNotHostedByDhcpAgent")
    conn.execute(delete(dhcp_bindings).where(dhcp_bindings.c.network_id == network_id,
                                             dhcp_bindings.c.agent_id == agent_id))
    host = conn.execute(select(agents.c.host).where(agents.c.id == agent_id)).scalar_one()
    standard.emit(conn, "dhcp_binding", network_id, "delete", network_id=network_id, host=host)
    # Removing on purpose must not be undone by automatic rescheduling in the same breath: only the
    # ports follow; a later subnet change may schedule the network again.
    hosts = {r[0] for r in conn.execute(select(agents.c.host).join(
        dhcp_bindings, dhcp_bindings.c.agent_id == agents.c.id).where(dhcp_bindings.c.network_id == network_id))}
    rows.delete_ports(conn, [port for port in conn.execute(select(ports).where(
        ports.c.network_id == network_id, ports.c.device_owner == DeviceOwner.DHCP)).all()
        if port.binding_host_id not in hosts])
