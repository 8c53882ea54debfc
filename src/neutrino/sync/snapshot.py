"""Build the complete intent one host needs (``agent.model.Snapshot``) from the database.

A host needs: every network that has a port bound to it or is DHCP-scheduled to it; those networks'
subnets and all their ports (dnsmasq serves every port of a network; VXLAN FDB entries name remote
ports), each with its port security (groups, address pairs); the routers scheduled to its L3 agent (extra
routes, floating IPs) with their own ports and the networks and subnets those sit on; the tunnel
endpoints of the other hosts' L2 agents; the security groups of its ports and the groups their rules
name as remote, with rules and members (``_security_groups``: a handful of set-based queries however
many ports and members); and the feed revision it reflects. What does not depend on the host is shared
by the snapshots of one revision (``Memo``).
Its JSON form for remote agents is ``intent.codec``.
"""

from __future__ import annotations

import functools
import ipaddress
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, func, select, true

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
from neutrino.intent import delta
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
from neutrino.sync import retention

links = securitygroupportbindings


def current_revision(conn: Connection) -> int:
    return int(conn.execute(select(func.coalesce(func.max(changes.c.seq), 0))).scalar_one())


def _mode(value: str | None) -> Ipv6Mode | None:
    return Ipv6Mode(value) if value else None


# A shelf (below) serves the snapshots of one revision for at most MEMO_SECONDS: a burst of agents woken
# by one change shares it. A network's pieces are carried to the next revision's shelf unless a change
# since names the network, for at most KEEP_SECONDS: a heartbeat's fetch (every 10 s) reads them afresh.
MEMO_SECONDS = 2.0
KEEP_SECONDS = 10.0
TOUCHED_LIMIT = 5_000  # changes between two shelves past which nothing is carried over


@dataclass(slots=True)
class _Shelf:
    revision: int
    made: float
    networks: dict[str, tuple[NetworkSpec, tuple[SubnetSpec, ...]]] = field(default_factory=dict)
    ports: dict[str, tuple[PortSpec, ...]] = field(default_factory=dict)  # every port of a network
    born: dict[str, float] = field(default_factory=dict)  # when a network's pieces were read
    groups: dict[frozenset[str], dict[SecurityGroupId, SecurityGroupSpec]] = field(default_factory=dict)

    def carry(self, revision: int, now: float, touched: set[str] | None, keep: float) -> _Shelf:
        """The shelf of ``revision``: this one's networks that no change since named (``touched``; None:
        any may have changed) and that were read less than ``keep`` seconds ago; groups are the
        revision's own (a member's address moves any group on any network)."""
        if touched is None:
            return _Shelf(revision, now)
        kept = {n for n, t in self.born.items() if n not in touched and now - t < keep}
        return _Shelf(revision, now, {n: v for n, v in self.networks.items() if n in kept},
                      {n: v for n, v in self.ports.items() if n in kept}, {n: self.born[n] for n in kept})


def touched_networks(conn: Connection, after: int, upto: int) -> set[str] | None:
    """The networks whose rows (the network, its subnets, its ports with their addresses and groups) a
    change in (after, upto] may have moved; None when the feed cannot tell (rows pruned, too many, a
    port or subnet change without its network). Every write of those rows names the network (services)."""
    if after < 0 or after < retention.pruned_through(conn):
        return None
    rows = conn.execute(select(changes.c.resource, changes.c.resource_id, changes.c.network_id)
                        .where(changes.c.seq > after, changes.c.seq <= upto).limit(TOUCHED_LIMIT + 1)).all()
    if len(rows) > TOUCHED_LIMIT:
        return None
    out: set[str] = set()
    for resource, rid, network_id in rows:
        if network_id:
            out.add(network_id)
        elif resource == "network":
            out.add(rid)
        elif resource in ("port", "subnet"):
            return None
    return out


def unchanged(conn: Connection, snap: Snapshot, host: str, since: int) -> frozenset[NetworkId]:
    """The networks of ``snap`` an agent holding the snapshot of revision ``since`` may keep
    (intent/delta.py): port networks no change in (since, snap.revision] touched; none when the feed
    cannot tell."""
    if since > snap.revision:
        return frozenset()
    touched = touched_networks(conn, since, snap.revision)
    if touched is None:
        return frozenset()
    return frozenset(n for n in delta.port_networks(snap, host) if n in snap.networks and n not in touched)


class Memo:
    """Pieces of host snapshots that do not depend on the host -- a network with its subnets, all the
    ports of a network, the security groups of a set of ids -- shared by the snapshots built at one feed
    revision, and a network's pieces kept across revisions until a change names the network. When a
    change wakes the hosts of a network (or, for a default-group port, every host), each fetches its
    snapshot; without this each read and decoded every port of every one of its networks again.

    Sound because a build reads the revision first: whatever it reads next includes every change up to
    that revision (on PostgreSQL the feed's rows become visible in their order), so a piece read for
    revision R serves any later build at R, and at R' > R unless a change in (R, R'] names its network.
    A build at a revision older than the memo's (it started earlier) gets a shelf of its own."""

    def __init__(self, seconds: float = MEMO_SECONDS, keep: float = KEEP_SECONDS) -> None:
        self.seconds, self.keep = seconds, keep
        self._lock = threading.Lock()
        self._shelf = _Shelf(-1, 0.0)

    def shelf(self, conn: Connection, revision: int) -> _Shelf:
        now = time.monotonic()
        with self._lock:
            current = self._shelf
            if revision < current.revision:
                return _Shelf(revision, now)
            if revision == current.revision and now - current.made < self.seconds:
                return current
            touched = set() if revision == current.revision else touched_networks(conn, current.revision, revision)
            self._shelf = current.carry(revision, now, touched, self.keep)
            return self._shelf


def build(conn: Connection, host: str, down_after: float, memo: Memo | None = None) -> Snapshot:
    revision = current_revision(conn)
    shelf = memo.shelf(conn, revision) if memo is not None else _Shelf(revision, 0.0)
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
    read_at = time.monotonic()
    filled = _fill_networks(conn, shelf, [n for n in net_ids if n not in shelf.networks]) + \
        _fill_ports(conn, shelf, [n for n in port_nets if n not in shelf.ports])
    for n in filled:
        shelf.born.setdefault(n, read_at)
    nets: dict[NetworkId, NetworkSpec] = {}
    subs: dict[SubnetId, SubnetSpec] = {}
    prts: dict[PortId, PortSpec] = {}
    for n in net_ids:
        net, net_subnets = shelf.networks.get(n) or (None, ())
        if net is not None:  # else deleted since the ids were read
            nets[net.id] = net
            subs.update((s.id, s) for s in net_subnets)
    for n in port_nets:
        prts.update((p.id, p) for p in shelf.ports.get(n, ()))
    own = sorted(set(router_port_ids) - set(prts))  # a router's ports on networks the host has no other port on
    if own:
        prts.update((p.id, p) for p in _ports(conn, ports.c.id.in_(own), ipallocations.c.port_id.in_(own)))
    hosts: dict[HostName, HostSpec] = {}
    for a in conn.execute(select(agents).where(agents.c.agent_type == AgentType.L2.value)):
        tunnel = (a.configurations or {}).get("tunneling_ip")
        if tunnel and is_alive(a, down_after):
            hosts[HostName(a.host)] = HostSpec(HostName(a.host), _address(tunnel))
    fips: dict[str, list[FloatingIpSpec]] = {}
    if router_ids:
        for f in conn.execute(select(floatingips).where(floatingips.c.router_id.in_(router_ids),
                                                        floatingips.c.port_id.is_not(None)).order_by(floatingips.c.id)):
            fips.setdefault(f.router_id, []).append(FloatingIpSpec(
                id=FloatingIpId(f.id), floating_ip=_address(f.floating_ip_address),
                fixed_ip=_address(f.fixed_ip_address), port_id=PortId(f.port_id)))
    rtrs = {RouterId(r.id): RouterSpec(
        id=RouterId(r.id), admin_state_up=r.admin_state_up, enable_snat=r.enable_snat,
        routes=tuple(HostRoute(_network(x["destination"]), _address(x["nexthop"])) for x in r.routes),
        floating_ips=tuple(fips.get(r.id, ()))) for r in router_rows}
    return Snapshot(revision=revision, networks=nets, subnets=subs, ports=prts,
                    dhcp_networks=frozenset(NetworkId(n) for n in dhcp_nets), hosts=hosts, routers=rtrs,
                    security_groups=_security_groups(conn, host, shelf))


# Addresses repeat in every snapshot (each member of a big group in every host's); parsed once.
_address = functools.lru_cache(maxsize=1 << 16)(ipaddress.ip_address)
_network = functools.lru_cache(maxsize=1 << 16)(ipaddress.ip_network)


def _fill_networks(conn: Connection, shelf: _Shelf, ids: list[str]) -> list[str]:
    if not ids:
        return ids
    found: dict[str, list[SubnetSpec]] = {n: [] for n in ids}
    for s in conn.execute(select(subnets).where(subnets.c.network_id.in_(ids)).order_by(subnets.c.id)):
        found[s.network_id].append(SubnetSpec(
            id=SubnetId(s.id), network_id=NetworkId(s.network_id), cidr=_network(s.cidr),
            gateway_ip=_address(s.gateway_ip) if s.gateway_ip else None,
            enable_dhcp=s.enable_dhcp,
            dns_nameservers=tuple(_address(d) for d in s.dns_nameservers),
            host_routes=tuple(HostRoute(_network(r["destination"]), _address(r["nexthop"])) for r in s.host_routes),
            ipv6_ra_mode=_mode(s.ipv6_ra_mode), ipv6_address_mode=_mode(s.ipv6_address_mode)))
    for n in conn.execute(select(networks).where(networks.c.id.in_(ids))):
        shelf.networks[n.id] = (NetworkSpec(
            id=NetworkId(n.id), network_type=NetworkType(n.network_type),
            segmentation_id=n.segmentation_id or None, physical_network=n.physical_network or None,
            mtu=n.mtu, admin_state_up=n.admin_state_up), tuple(found[n.id]))
    return ids


def _fill_ports(conn: Connection, shelf: _Shelf, ids: list[str]) -> list[str]:
    """Every port of the networks ``ids``."""
    if not ids:
        return ids
    found: dict[str, list[PortSpec]] = {n: [] for n in ids}
    for p in _ports(conn, ports.c.network_id.in_(ids), ipallocations.c.network_id.in_(ids)):
        found[p.network_id].append(p)
    shelf.ports.update((n, tuple(found[n])) for n in ids)
    return ids


def _ports(conn: Connection, wanted: Any, addresses: Any) -> list[PortSpec]:
    """The ports ``wanted`` selects, with their addresses (``addresses`` selects theirs) and groups."""
    ips: dict[str, list[FixedIp]] = {}
    for pid, sid, ip in conn.execute(
            select(ipallocations.c.port_id, ipallocations.c.subnet_id, ipallocations.c.ip_address)
            .where(addresses).order_by(ipallocations.c.port_id, ipallocations.c.position)):
        ips.setdefault(pid, []).append(FixedIp(SubnetId(sid), _address(ip)))
    groups_of: dict[str, list[SecurityGroupId]] = {}
    for pid, gid in conn.execute(select(links.c.port_id, links.c.security_group_id)
                                 .join(ports, ports.c.id == links.c.port_id).where(wanted)
                                 .order_by(links.c.port_id, links.c.security_group_id)):
        groups_of.setdefault(pid, []).append(SecurityGroupId(gid))
    return [PortSpec(
        id=PortId(p.id), network_id=NetworkId(p.network_id), mac_address=p.mac_address,
        fixed_ips=tuple(ips.get(p.id, ())), device_owner=p.device_owner, device_id=p.device_id,
        host=HostName(p.binding_host_id) if p.binding_host_id else None, admin_state_up=p.admin_state_up,
        extra_dhcp_opts=tuple(ExtraDhcpOpt(o["opt_name"], o["opt_value"], int(o.get("ip_version", 4)))
                              for o in p.extra_dhcp_opts),
        dns_name=p.dns_name, port_security_enabled=p.port_security_enabled,
        security_groups=tuple(groups_of.get(p.id, ())),
        allowed_address_pairs=_pairs(p.allowed_address_pairs, p.mac_address))
        for p in conn.execute(select(ports).where(wanted).order_by(ports.c.id))]


def _pairs(raw: Iterable[dict[str, str]], mac: str) -> tuple[AddressPair, ...]:
    """Allowed address pairs: an address or a CIDR (host bits tolerated), the port's MAC unless one is named."""
    return tuple(AddressPair(_network(p["ip_address"], False), p.get("mac_address") or mac) for p in raw)


def _sorted_networks(nets: Iterable[IPNetwork]) -> tuple[IPNetwork, ...]:
    return tuple(sorted(set(nets), key=lambda n: (n.version, n.network_address, n.prefixlen)))


def _rule(r: Any) -> SecurityGroupRuleSpec:
    return SecurityGroupRuleSpec(
        id=r.id, direction=Direction(r.direction), ethertype=4 if r.ethertype == "IPv4" else 6,
        protocol=number(r.protocol), port_min=r.port_range_min, port_max=r.port_range_max,
        remote_ip_prefix=_network(r.remote_ip_prefix) if r.remote_ip_prefix else None,
        remote_group_id=SecurityGroupId(r.remote_group_id) if r.remote_group_id else None)


def _security_groups(conn: Connection, host: str, shelf: _Shelf) -> dict[SecurityGroupId, SecurityGroupSpec]:
    """The groups of ports bound to ``host`` and the groups their rules name as remote: each with its rules
    and members (every member port's fixed IPs and address pairs, on any host). One query for the ids;
    four more for rules and members unless a snapshot at this revision already made the same set."""
    rules = securitygrouprules
    local = select(links.c.security_group_id).join(ports, ports.c.id == links.c.port_id) \
        .where(ports.c.binding_host_id == host)
    remote = select(rules.c.remote_group_id).where(rules.c.security_group_id.in_(local),
                                                    rules.c.remote_group_id.is_not(None))
    stateful = {r.id: r.stateful for r in conn.execute(
        select(securitygroups.c.id, securitygroups.c.stateful).where(securitygroups.c.id.in_(local.union(remote))))}
    if not stateful:
        return {}
    key = frozenset(stateful)
    made = shelf.groups.get(key)
    if made is not None:
        return made
    ids = sorted(stateful)
    found: dict[str, list[SecurityGroupRuleSpec]] = {g: [] for g in ids}
    for r in conn.execute(select(rules).where(rules.c.security_group_id.in_(ids))
                          .order_by(rules.c.security_group_id, rules.c.id)):
        found[r.security_group_id].append(_rule(r))
    members: dict[str, list[IPNetwork]] = {g: [] for g in ids}
    in_groups = links.c.security_group_id.in_(ids)
    for gid, ip in conn.execute(select(links.c.security_group_id, ipallocations.c.ip_address)
                                .join(ipallocations, ipallocations.c.port_id == links.c.port_id).where(in_groups)):
        members[gid].append(_network(ip))
    for gid, pairs in conn.execute(select(links.c.security_group_id, ports.c.allowed_address_pairs)
                                   .join(ports, ports.c.id == links.c.port_id).where(in_groups)):
        members[gid].extend(_network(p["ip_address"], False) for p in pairs)
    made = {SecurityGroupId(g): SecurityGroupSpec(
        id=SecurityGroupId(g), stateful=stateful[g], rules=tuple(found[g]), members=_sorted_networks(members[g]))
        for g in ids}
    shelf.groups[key] = made
    return made
