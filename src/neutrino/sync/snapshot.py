"""Build the complete intent one host needs (``agent.model.Snapshot``) from the database.

A host needs: every network that has a port bound to it or is DHCP-scheduled to it; those networks'
subnets and all their ports (dnsmasq serves every port of a network; VXLAN FDB entries name remote
ports); the routers scheduled to its L3 agent (extra routes, floating IPs) with their own ports and the
networks and subnets those sit on; the tunnel endpoints of the other hosts' L2 agents; and the feed
revision it reflects.
Its JSON form for remote agents is ``intent.codec``.
"""

from __future__ import annotations

import ipaddress

from sqlalchemy import Connection, func, or_, select, true

from neutrino.db.schema import (
    agents,
    changes,
    dhcp_bindings,
    floatingips,
    ipallocations,
    networks,
    ports,
    router_bindings,
    routers,
    subnets,
)
from neutrino.intent.model import (
    ROUTER_OWNERS,
    AgentType,
    ExtraDhcpOpt,
    FixedIp,
    FloatingIpId,
    FloatingIpSpec,
    HostName,
    HostRoute,
    HostSpec,
    Ipv6Mode,
    NetworkId,
    NetworkSpec,
    NetworkType,
    PortId,
    PortSpec,
    RouterId,
    RouterSpec,
    Snapshot,
    SubnetId,
    SubnetSpec,
)
from neutrino.services.agents import is_alive


def current_revision(conn: Connection) -> int:
    return int(conn.execute(select(func.coalesce(func.max(changes.c.seq), 0))).scalar_one())


def _mode(value: str | None) -> Ipv6Mode | None:
    return Ipv6Mode(value) if value else None


def build(conn: Connection, host: str, down_after: float) -> Snapshot:
    revision = current_revision(conn)
    dhcp_nets = {r[0] for r in conn.execute(
        select(dhcp_bindings.c.network_id).join(agents, agents.c.id == dhcp_bindings.c.agent_id)
        .where(agents.c.host == host, agents.c.agent_type == AgentType.DHCP.value,
               agents.c.admin_state_up == true()))}
    bound_nets = {r[0] for r in conn.execute(select(ports.c.network_id).where(ports.c.binding_host_id == host)
                                             .distinct())}
    router_rows = conn.execute(
        select(routers).join(router_bindings, router_bindings.c.router_id == routers.c.id)
        .join(agents, agents.c.id == router_bindings.c.agent_id)
        .where(agents.c.host == host, agents.c.agent_type == AgentType.L3.value, agents.c.admin_state_up == true())
        .order_by(routers.c.id)).all()
    router_ids = [r.id for r in router_rows]
    router_port_ids: list[str] = []
    router_nets: set[str] = set()
    if router_ids:
        for pid, nid in conn.execute(select(ports.c.id, ports.c.network_id).where(
                ports.c.device_id.in_(router_ids), ports.c.device_owner.in_(sorted(ROUTER_OWNERS)))):
            router_port_ids.append(pid)
            router_nets.add(nid)
    port_nets = sorted(dhcp_nets | bound_nets)
    net_ids = sorted(dhcp_nets | bound_nets | router_nets)
    nets: dict[NetworkId, NetworkSpec] = {}
    subs: dict[SubnetId, SubnetSpec] = {}
    prts: dict[PortId, PortSpec] = {}
    if net_ids:
        for n in conn.execute(select(networks).where(networks.c.id.in_(net_ids))):
            nets[NetworkId(n.id)] = NetworkSpec(
                id=NetworkId(n.id), network_type=NetworkType(n.network_type),
                segmentation_id=n.segmentation_id or None, physical_network=n.physical_network or None,
                mtu=n.mtu, admin_state_up=n.admin_state_up)
        for s in conn.execute(select(subnets).where(subnets.c.network_id.in_(net_ids))):
            subs[SubnetId(s.id)] = SubnetSpec(
                id=SubnetId(s.id), network_id=NetworkId(s.network_id), cidr=ipaddress.ip_network(s.cidr),
                gateway_ip=ipaddress.ip_address(s.gateway_ip) if s.gateway_ip else None,
                enable_dhcp=s.enable_dhcp,
                dns_nameservers=tuple(ipaddress.ip_address(d) for d in s.dns_nameservers),
                host_routes=tuple(HostRoute(ipaddress.ip_network(r["destination"]), ipaddress.ip_address(r["nexthop"]))
                                  for r in s.host_routes),
                ipv6_ra_mode=_mode(s.ipv6_ra_mode), ipv6_address_mode=_mode(s.ipv6_address_mode))
        ips: dict[str, list[FixedIp]] = {}
        for pid, sid, ip in conn.execute(
                select(ipallocations.c.port_id, ipallocations.c.subnet_id, ipallocations.c.ip_address)
                .where(or_(ipallocations.c.network_id.in_(port_nets), ipallocations.c.port_id.in_(router_port_ids)))
                .order_by(ipallocations.c.port_id, ipallocations.c.position)):
            ips.setdefault(pid, []).append(FixedIp(SubnetId(sid), ipaddress.ip_address(ip)))
        for p in conn.execute(select(ports).where(or_(ports.c.network_id.in_(port_nets),
                                                      ports.c.id.in_(router_port_ids)))):
            prts[PortId(p.id)] = PortSpec(
                id=PortId(p.id), network_id=NetworkId(p.network_id), mac_address=p.mac_address,
                fixed_ips=tuple(ips.get(p.id, ())), device_owner=p.device_owner, device_id=p.device_id,
                host=HostName(p.binding_host_id) if p.binding_host_id else None, admin_state_up=p.admin_state_up,
                extra_dhcp_opts=tuple(ExtraDhcpOpt(o["opt_name"], o["opt_value"], int(o.get("ip_version", 4)))
                                      for o in p.extra_dhcp_opts),
                dns_name=p.dns_name)
    hosts: dict[HostName, HostSpec] = {}
    for a in conn.execute(select(agents).where(agents.c.agent_type == AgentType.L2.value)):
        tunnel = (a.configurations or {}).get("tunneling_ip")
        if tunnel and is_alive(a, down_after):
            hosts[HostName(a.host)] = HostSpec(HostName(a.host), ipaddress.ip_address(tunnel))
    fips: dict[str, list[FloatingIpSpec]] = {}
    if router_ids:
        for f in conn.execute(select(floatingips).where(floatingips.c.router_id.in_(router_ids),
                                                        floatingips.c.port_id.is_not(None)).order_by(floatingips.c.id)):
            fips.setdefault(f.router_id, []).append(FloatingIpSpec(
                id=FloatingIpId(f.id), floating_ip=ipaddress.ip_address(f.floating_ip_address),
                fixed_ip=ipaddress.ip_address(f.fixed_ip_address), port_id=PortId(f.port_id)))
    rtrs = {RouterId(r.id): RouterSpec(
        id=RouterId(r.id), admin_state_up=r.admin_state_up, enable_snat=r.enable_snat,
        routes=tuple(HostRoute(ipaddress.ip_network(x["destination"]), ipaddress.ip_address(x["nexthop"]))
                     for x in r.routes),
        floating_ips=tuple(fips.get(r.id, ()))) for r in router_rows}
    return Snapshot(revision=revision, networks=nets, subnets=subs, ports=prts,
                    dhcp_networks=frozenset(NetworkId(n) for n in dhcp_nets), hosts=hosts, routers=rtrs)
