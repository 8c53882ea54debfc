"""The one writer of port rows and of every network, subnet and port deletion.

Ports are inserted here (by the ports API and by DHCP scheduling alike) and networks, subnets and ports
are deleted only here, each together with what hangs off it — addresses, tags — and its change-feed
entry, so no path can leave orphan rows behind.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from neutrino.db.schema import floatingips, ipallocations, networks, ports, securitygroupportbindings, subnets
from neutrino.services import secgroups, standard


def _chunks(ids: Sequence[str]) -> list[Sequence[str]]:
    return [ids[i:i + standard.CHUNK] for i in range(0, len(ids), standard.CHUNK)]


def store_ips(conn: Connection, port_id: str, network_id: str, ips: list[tuple[str, str]]) -> None:
    """Add the port's addresses in this order (``position`` keeps it)."""
    if ips:
        conn.execute(insert(ipallocations), [
            {"port_id": port_id, "subnet_id": sid, "network_id": network_id, "ip_address": ip, "position": n}
            for n, (sid, ip) in enumerate(ips)])


def replace_ips(conn: Connection, port_id: str, network_id: str, ips: list[tuple[str, str]]) -> None:
    conn.execute(delete(ipallocations).where(ipallocations.c.port_id == port_id))
    store_ips(conn, port_id, network_id, ips)


def insert_port(conn: Connection, values: dict[str, Any], ips: list[tuple[str, str]]) -> str:
    """A new port (``values`` by column, without id and standard attributes) with its addresses."""
    port_id = str(uuid.uuid4())
    conn.execute(insert(ports).values(**standard.stamp_new({"id": port_id, **values})))
    store_ips(conn, port_id, values["network_id"], ips)
    standard.emit(conn, "port", port_id, "create", network_id=values["network_id"],
                  host=values["binding_host_id"] or None)
    return port_id


def delete_ports(conn: Connection, rows: Sequence[Any]) -> None:
    """Ports (rows with id, network_id, binding_host_id) with their addresses, group memberships and tags."""
    for r in rows:
        standard.emit(conn, "port", r.id, "delete", network_id=r.network_id, host=r.binding_host_id or None)
    links = securitygroupportbindings
    groups: set[str] = set()
    for ids in _chunks([r.id for r in rows]):
        groups.update(g for (g,) in conn.execute(select(links.c.security_group_id).where(links.c.port_id.in_(ids))))
        conn.execute(delete(links).where(links.c.port_id.in_(ids)))
        # Floating IPs of these ports stay, disassociated.
        conn.execute(update(floatingips).where(floatingips.c.port_id.in_(ids)).values(
            port_id=None, fixed_ip_address=None, router_id=None, status="DOWN",
            revision_number=floatingips.c.revision_number + 1, updated_at=standard.now()))
        conn.execute(delete(ipallocations).where(ipallocations.c.port_id.in_(ids)))
        standard.delete_tags(conn, ids)
        conn.execute(delete(ports).where(ports.c.id.in_(ids)))
    if groups:
        secgroups.announce(conn, groups)  # fewer members: hosts filtering by these groups must hear it


def delete_subnets(conn: Connection, rows: Sequence[Any]) -> None:
    """Subnets (rows with id, network_id) with the addresses they gave out and their tags; the caller has
    checked no port still needs them."""
    for r in rows:
        standard.emit(conn, "subnet", r.id, "delete", network_id=r.network_id)
    for ids in _chunks([r.id for r in rows]):
        conn.execute(delete(ipallocations).where(ipallocations.c.subnet_id.in_(ids)))
        standard.delete_tags(conn, ids)
        conn.execute(delete(subnets).where(subnets.c.id.in_(ids)))


def delete_network(conn: Connection, network_id: str) -> None:
    """A network with everything on it: its ports, its subnets, their tags and its own."""
    delete_ports(conn, conn.execute(select(ports.c.id, ports.c.network_id, ports.c.binding_host_id)
                                    .where(ports.c.network_id == network_id)).all())
    delete_subnets(conn, conn.execute(select(subnets.c.id, subnets.c.network_id)
                                      .where(subnets.c.network_id == network_id)).all())
    standard.delete_tags(conn, [network_id])
    conn.execute(delete(networks).where(networks.c.id == network_id))
    standard.emit(conn, "network", network_id, "delete", network_id=network_id)
