"""The deployment as a whole, for ``neutrino status``: the API servers sharing the database, the agents
(alive, last heartbeat, what each hosts, how far behind), and what has not converged yet.

Each server keeps a row in ``servers`` fresh while it runs (``register``/``beat``/``leave``). ``view`` is
one read transaction: a few set-based queries whatever the size of the deployment.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, true, update

from neutrino.db.schema import agents, changes, dhcp_bindings, floatingips, ports, router_bindings, routers, servers
from neutrino.db.schema import subnets as subnets_t
from neutrino.intent.model import ROUTER_OWNERS, AgentType
from neutrino.sync import interest, retention

SAMPLE = 5           # ids named per kind of problem
SCAN_LIMIT = 20_000  # changes looked at for "behind"
GRACE = dt.timedelta(seconds=2)  # a change younger than this at the agent's last heartbeat is not late yet
FORGET_SERVERS = dt.timedelta(hours=1)  # a server gone longer than this leaves the list


def register(conn: Connection, server_id: str, url: str, now: dt.datetime) -> None:
    conn.execute(insert(servers).values(id=server_id, url=url, hostname=socket.gethostname(), pid=os.getpid(),
                                        started_at=now, heartbeat_at=now))


def beat(conn: Connection, server_id: str, url: str, now: dt.datetime) -> None:
    """Refresh this server's row (made again if someone removed it), and forget long-gone servers."""
    if conn.execute(update(servers).where(servers.c.id == server_id).values(heartbeat_at=now)).rowcount == 0:
        register(conn, server_id, url, now)
    conn.execute(delete(servers).where(servers.c.heartbeat_at < now - FORGET_SERVERS))


def leave(conn: Connection, server_id: str) -> None:
    conn.execute(delete(servers).where(servers.c.id == server_id))


def scopes(conn: Connection) -> dict[str, interest.Scope]:
    """Every host's scope (``interest.of_host`` for all hosts at once)."""
    nets: dict[str, set[str]] = {}
    rtrs: dict[str, set[str]] = {}
    for host, net in conn.execute(select(ports.c.binding_host_id, ports.c.network_id)
                                  .where(ports.c.binding_host_id != "").distinct()):
        nets.setdefault(host, set()).add(net)
    for host, net in conn.execute(select(agents.c.host, dhcp_bindings.c.network_id)
                                  .join(agents, agents.c.id == dhcp_bindings.c.agent_id)
                                  .where(agents.c.agent_type == AgentType.DHCP.value)):
        nets.setdefault(host, set()).add(net)
    router_host: dict[str, str] = {}
    for host, router in conn.execute(select(agents.c.host, router_bindings.c.router_id)
                                     .join(agents, agents.c.id == router_bindings.c.agent_id)
                                     .where(agents.c.agent_type == AgentType.L3.value)):
        rtrs.setdefault(host, set()).add(router)
        router_host[router] = host
    if router_host:
        for device, net in conn.execute(select(ports.c.device_id, ports.c.network_id).where(
                ports.c.device_id.in_(sorted(router_host)),
                ports.c.device_owner.in_(sorted(ROUTER_OWNERS)))):
            nets.setdefault(router_host[device], set()).add(net)
    return {h: interest.Scope(h, frozenset(nets.get(h, ())), frozenset(rtrs.get(h, ())))
            for h in sorted(set(nets) | set(rtrs))}


def _sample(ids: list[str]) -> dict[str, Any]:
    return {"count": len(ids), "ids": sorted(ids)[:SAMPLE]}


def view(conn: Connection, down_after: float, now: dt.datetime) -> dict[str, Any]:
    """Servers, agents and what has not converged, as plain data."""
    alive_since = now - dt.timedelta(seconds=down_after)
    revision = retention.current_revision(conn)
    server_rows = conn.execute(select(servers).order_by(servers.c.started_at, servers.c.id)).all()
    agent_rows = conn.execute(select(agents).order_by(agents.c.host, agents.c.agent_type)).all()
    by_host = scopes(conn)
    bound: dict[str, int] = dict(conn.execute(
        select(ports.c.binding_host_id, func.count()).where(ports.c.binding_host_id != "")
        .group_by(ports.c.binding_host_id)).all())
    dhcp_count: dict[str, int] = dict(conn.execute(select(dhcp_bindings.c.agent_id, func.count())
                                   .group_by(dhcp_bindings.c.agent_id)).all())
    router_count: dict[str, int] = dict(conn.execute(select(router_bindings.c.agent_id, func.count())
                                     .group_by(router_bindings.c.agent_id)).all())
    live = [a for a in agent_rows if a.heartbeat_timestamp > alive_since]
    known = [int(a.revision) for a in live if a.revision]
    found = interest.read(conn, min(known), SCAN_LIMIT) if known else []
    at = dict(conn.execute(select(changes.c.seq, changes.c.at).where(changes.c.seq > min(known))
                           .order_by(changes.c.seq).limit(SCAN_LIMIT)).all()) if known else {}
    out_agents = []
    for a in agent_rows:
        alive = a.heartbeat_timestamp > alive_since
        scope = by_host.get(a.host, interest.Scope(a.host))
        behind = None
        if alive and a.revision:
            late = a.heartbeat_timestamp - GRACE
            behind = sum(1 for c in found if c.seq > a.revision and at.get(c.seq, now) <= late
                         and interest.concerns(c, scope))
        hosts: dict[str, int] = {}
        if a.agent_type == AgentType.L2.value:
            hosts = {"ports": int(bound.get(a.host, 0)), "networks": len(scope.networks)}
        elif a.agent_type == AgentType.DHCP.value:
            hosts = {"networks": int(dhcp_count.get(a.id, 0))}
        elif a.agent_type == AgentType.L3.value:
            hosts = {"routers": int(router_count.get(a.id, 0))}
        out_agents.append({"id": a.id, "host": a.host, "type": a.agent_type, "alive": alive,
                           "admin_state_up": a.admin_state_up, "heartbeat": a.heartbeat_timestamp.isoformat() + "Z",
                           "revision": a.revision, "behind": behind, "hosts": hosts})
    return {
        "revision": revision,
        "pruned_through": retention.pruned_through(conn),
        "servers": [{"id": s.id, "url": s.url, "hostname": s.hostname, "pid": s.pid,
                     "started_at": s.started_at.isoformat() + "Z", "heartbeat": s.heartbeat_at.isoformat() + "Z",
                     "alive": s.heartbeat_at > alive_since} for s in server_rows],
        "agents": out_agents,
        "unconverged": unconverged(conn, {a.host for a in live if a.agent_type == AgentType.L2.value}),
    }


def unconverged(conn: Connection, l2_hosts: set[str]) -> dict[str, Any]:
    """Intent that is not realised (yet): bound ports not ACTIVE (on a host with a live L2 agent, or on one
    without), networks with DHCP and no DHCP agent, routers with no L3 agent, floating IPs not ACTIVE."""
    waiting: list[str] = []
    orphaned: list[str] = []
    for pid, host in conn.execute(select(ports.c.id, ports.c.binding_host_id).where(
            ports.c.binding_host_id != "", ports.c.status != "ACTIVE", ports.c.admin_state_up == true())):
        (waiting if host in l2_hosts else orphaned).append(pid)
    dhcp_nets = select(subnets_t.c.network_id).where(subnets_t.c.enable_dhcp == true()).distinct()
    no_dhcp = [r[0] for r in conn.execute(dhcp_nets.where(
        subnets_t.c.network_id.not_in(select(dhcp_bindings.c.network_id))))]
    no_l3 = [r[0] for r in conn.execute(select(routers.c.id).where(
        routers.c.id.not_in(select(router_bindings.c.router_id))))]
    fips = [r[0] for r in conn.execute(select(floatingips.c.id).where(
        floatingips.c.port_id.is_not(None), floatingips.c.status != "ACTIVE"))]
    return {"ports_not_active": _sample(waiting), "ports_on_hosts_without_agent": _sample(orphaned),
            "networks_without_dhcp": _sample(no_dhcp), "routers_without_l3_agent": _sample(no_l3),
            "floating_ips_not_active": _sample(fips)}
