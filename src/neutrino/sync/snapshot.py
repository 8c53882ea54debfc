"""Build the complete intent one host needs (``agent.model.Snapshot``) from the database.

A host needs: every network that has a port bound to it or is DHCP-scheduled to it; those networks'
subnets and all their ports (dnsmasq serves every port of a network; VXLAN FDB entries name remote
ports), each with its port security (groups, address pairs); the routers scheduled to its L3 agent (extra
routes, floating IPs) with their own ports and the networks and subnets those sit on; the tunnel
endpoints of the other hosts' L2 agents; the security groups of its ports and the groups their rules
name as remote, with rules and members (``_security_groups``: a handful of set-based queries however
many ports and members); and the feed revision it reflects.
Its JSON form for remote agents is ``intent.codec``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any

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
    securitygroupportbindings,
    securitygrouprules,
    securitygroups,
    subnets,
)
from neutrino.intent.model import (
    ROUTER_OWNERS,
    AddressPair,
    AgentType,
    Direction,
    ExtraDhcpOpt,
    FixedIp,
    FloatingIpId,
    FloatingIpSpec,
    HostName,
    HostRoute,
    HostSpec,
    IPNetwork,
    Ipv6Mode,
    NetworkId,
    NetworkSpec,
    NetworkType,
    PortId,
    PortSpec,
    RouterId,
    RouterSpec,
    SecurityGroupId,
    SecurityGroupRuleSpec,
    SecurityGroupSpec,
    Snapshot,
    SubnetId,
    SubnetSpec,
)
from neutrino.services.agents import is_alive
from neutrino.services.sgrules import number

links = securitygroupportbindings


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
        wanted = or_(ports.c.network_id.in_(port_nets), ports.c.id.in_(router_port_ids))
        groups_of: dict[str, list[SecurityGroupId]] = {}
        for pid, gid in conn.execute(select(links.c.port_id, links.c.security_group_id)
                                     .join(ports, ports.c.id == links.c.port_id).where(wanted)
                                     .order_by(links.c.port_id, links.c.security_group_id)):
            groups_of.setdefault(pid, []).append(SecurityGroupId(gid))
        for p in conn.execute(select(ports).where(wanted)):
            prts[PortId(p.id)] = PortSpec(
                id=PortId(p.id), network_id=NetworkId(p.network_id), mac_address=p.mac_address,
                fixed_ips=tuple(ips.get(p.id, ())), device_owner=p.device_owner, device_id=p.device_id,
                host=HostName(p.binding_host_id) if p.binding_host_id else None, admin_state_up=p.admin_state_up,
                extra_dhcp_opts=tuple(ExtraDhcpOpt(o["opt_name"], o["opt_value"], int(o.get("ip_version", 4)))
                                      for o in p.extra_dhcp_opts),
                dns_name=p.dns_name, port_security_enabled=p.port_security_enabled,
                security_groups=tuple(groups_of.get(p.id, ())),
                allowed_address_pairs=_pairs(p.allowed_address_pairs, p.mac_address))
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
                    dhcp_networks=frozenset(NetworkId(n) for n in dhcp_nets), hosts=hosts, routers=rtrs,
                    security_groups=_security_groups(conn, host))


def _pairs(raw: Iterable[dict[str, str]], mac: str) -> tuple[AddressPair, ...]:
    """Allowed address pairs: an address or a CIDR (host bits tolerated), the port's MAC unless one is named."""
    return tuple(AddressPair(ipaddress.ip_network(p["ip_address"], strict=False), p.get("mac_address") or mac)
                 for p in raw)


def _sorted_networks(nets: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    return tuple(sorted(set(nets), key=lambda n: (n.version, n.network_address, n.prefixlen)))


def _rule(r: Any) -> SecurityGroupRuleSpec:
    return SecurityGroupRuleSpec(
        id=r.id, direction=Direction(r.direction), ethertype=4 if r.ethertype == "IPv4" else 6,
        protocol=number(r.protocol), port_min=r.port_range_min, port_max=r.port_range_max,
        remote_ip_prefix=ipaddress.ip_network(r.remote_ip_prefix) if r.remote_ip_prefix else None,
        remote_group_id=SecurityGroupId(r.remote_group_id) if r.remote_group_id else None)


def _security_groups(conn: Connection, host: str) -> dict[SecurityGroupId, SecurityGroupSpec]:
    """The groups of ports bound to ``host`` and the groups their rules name as remote: each with its rules
    and members (every member port's fixed IPs and address pairs, on any host). Five queries in all."""
    rules = securitygrouprules
    local = select(links.c.security_group_id).join(ports, ports.c.id == links.c.port_id) \
        .where(ports.c.binding_host_id == host)
    remote = select(rules.c.remote_group_id).where(rules.c.security_group_id.in_(local),
                                                    rules.c.remote_group_id.is_not(None))
    group_ids = local.union(remote).subquery()
    wanted = securitygroups.c.id.in_(select(group_ids))
    stateful = {r.id: r.stateful for r in conn.execute(select(securitygroups.c.id, securitygroups.c.stateful)
                                                       .where(wanted))}
    if not stateful:
        return {}
    found: dict[str, list[SecurityGroupRuleSpec]] = {g: [] for g in stateful}
    for r in conn.execute(select(rules).where(rules.c.security_group_id.in_(select(group_ids)))
                          .order_by(rules.c.security_group_id, rules.c.id)):
        found[r.security_group_id].append(_rule(r))
    members: dict[str, list[IPNetwork]] = {g: [] for g in stateful}
    in_groups = links.c.security_group_id.in_(select(group_ids))
    for gid, ip in conn.execute(select(links.c.security_group_id, ipallocations.c.ip_address)
                                .join(ipallocations, ipallocations.c.port_id == links.c.port_id).where(in_groups)):
        members[gid].append(ipaddress.ip_network(ip))
    for gid, pairs in conn.execute(select(links.c.security_group_id, ports.c.allowed_address_pairs)
                                   .join(ports, ports.c.id == links.c.port_id).where(in_groups)):
        members[gid].extend(ipaddress.ip_network(p["ip_address"], strict=False) for p in pairs)
    return {SecurityGroupId(g): SecurityGroupSpec(
        id=SecurityGroupId(g), stateful=stateful[g], rules=tuple(found[g]), members=_sorted_networks(members[g]))
        for g in sorted(stateful)}
