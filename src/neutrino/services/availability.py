"""Network IP availability: per network and subnet, how many addresses the pools hold and how many are
allocated (admin only; the API checks the role)."""

from __future__ import annotations

import ipaddress
from typing import Any

from sqlalchemy import Connection, func, select

from neutrino.db.schema import ipallocations, networks, subnets
from neutrino.ipam.pools import Pool, pool_size


def _subnet(s: Any, used: dict[str, int]) -> dict[str, Any]:
    return {"subnet_id": s.id, "subnet_name": s.name, "cidr": s.cidr, "ip_version": s.ip_version,
            "total_ips": pool_size([Pool(ipaddress.ip_address(p["start"]), ipaddress.ip_address(p["end"]))
                                    for p in s.allocation_pools]),
            "used_ips": used.get(s.id, 0)}


def availability(conn: Connection, network_ids: list[str] | None) -> list[dict[str, Any]]:
    """The networks named (all when None), oldest first, each with its subnets' figures."""
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
        subs = [_subnet(s, used) for s in by_net.get(n.id, [])]
        out.append({"network_id": n.id, "network_name": n.name, "project_id": n.project_id,
                    "tenant_id": n.project_id, "total_ips": sum(s["total_ips"] for s in subs),
                    "used_ips": sum(s["used_ips"] for s in subs), "subnet_ip_availability": subs})
    return out
