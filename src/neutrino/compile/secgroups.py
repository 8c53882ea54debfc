"""Security groups and port security (pure): the host namespace's filter for the instance ports bound here.

This kernel has no conntrack in the bridge family (../shared/KERNEL.md), so the filter is two tables, both
in the host's namespace and both built from parts (compile/nft.py ``structured``) so that the nft plane
can change a set's elements or one chain instead of the whole table:

``bridge`` table, between each filtered tap and its bridge:
  - prerouting (priority -300, before br_netfilter): a frame entering the bridge from a filtered tap (the
    instance sending) is checked against the port's addresses -- source MAC (the port's or an address
    pair's), IPv4 and IPv6 source bound to that MAC (fixed IPs, address pairs, the link-local address of
    each allowed MAC), ARP sender MAC and address, NDP advertisements only for its own targets; DHCP and
    DHCPv6 server traffic and router advertisements from an instance are dropped, DHCP discovery from
    0.0.0.0 and DAD/RS/MLD from :: allowed, any other ethertype dropped -- and marked with the port's
    egress mark;
  - forward (priority -300, before br_netfilter's forward hook): a frame leaving through a filtered tap
    gets that port's ingress mark; one from a filtered tap leaving anywhere else (the uplink, a DHCP or
    router port) gets its mark cleared, so no mark of ours leaves the bridge.

``inet`` table, reached by bridged IPv4/IPv6 through br_netfilter (``net.bridge.bridge-nf-call-iptables``
and ``-ip6tables`` = 1 in the host's namespace, here as sysctls naming the filtered ports):
  - zone (prerouting, priority raw): conntrack zone per bridge, so tenants' overlapping addresses on
    different networks never share connections; ``notrack`` for the bridges of this host's networks that
    have no filtered port (e.g. an external network's, carrying a router's SNAT and floating IPs): once
    br_netfilter is on it hands every bridged packet to conntrack, which only filtered ports need;
  - egress (prerouting, filter: after conntrack) dispatches on the egress mark (verdict map) to the
    sending port's chain; ingress (forward) on the ingress mark to the receiving port's chain. A packet
    between two filtered ports on this host passes both (a flooded one, each receiver's);
  - a port's chain: ``jump stateful-<dir>`` (``ct state established,related accept``, DHCP/DHCPv6 and
    NDP/MLD as Neutron always allows them, ``ct state invalid drop``) or ``stateless-<dir>`` (the same
    without conntrack), a jump to each of its groups' chain, drop. A group's chain (one per group and
    direction, shared by its ports) is its rules, each an accept; remote groups are named interval sets of
    their members' addresses.

Traffic that neither enters nor leaves through a filtered tap is never marked and never dispatched: DHCP
ports, router ports, unfiltered ports and the VXLAN uplink pass untouched. Marks are 31-bit hashes of the
port id (egress: the top bit set), zones 16-bit hashes of the bridge name, both stable across changes.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from neutrino.compile.nft import NftChain, NftSet, NftTable, structured
from neutrino.compile.state import SysctlSpec, bridge_name, tap_name
from neutrino.intent.model import (
    COMPUTE_OWNER_PREFIX,
    Direction,
    IPNetwork,
    PortId,
    PortSpec,
    SecurityGroupId,
    SecurityGroupRuleSpec,
    Snapshot,
)

BR_NETFILTER = ("net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables")
EGRESS_BIT = 0x80000000
PORT_PROTOCOLS = frozenset({6, 17, 33, 132, 136})  # tcp, udp, dccp, sctp, udplite: a destination port range
ICMP = {4: 1, 6: 58}
NFPROTO = {4: "ipv4", 6: "ipv6"}
ADDR = {4: "ip", 6: "ip6"}
# ICMPv6 Neutron lets through whatever the groups say: neighbour discovery, router solicitation/advertisement
# (RA only towards the instance, never from it), multicast listener queries and reports.
ND_EGRESS = "{ nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert, mld-listener-report, " \
            "mld-listener-done, mld2-listener-report }"
ND_INGRESS = "{ nd-router-advert, nd-neighbor-solicit, nd-neighbor-advert, mld-listener-query }"
MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
TOKEN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


@dataclass(frozen=True, slots=True)
class CompiledSecurity:
    tables: tuple[NftTable, ...]       # bridge + inet in the host's namespace; none without filtered ports
    sysctls: tuple[SysctlSpec, ...]    # br_netfilter on, naming the filtered ports
    ports: tuple[PortId, ...]          # the filtered ports
    problems: tuple[str, ...]


def token(ident: str) -> str:
    """An id as it may appear in an nft name (``port-<id>-egress``): itself when it is plain, else a hash."""
    return ident if TOKEN.fullmatch(ident) else "x" + hashlib.sha256(ident.encode()).hexdigest()[:20]


def _hash(text: str, bits: int) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") % ((1 << bits) - 1) + 1


def allocate(keys: Iterable[str], bits: int) -> dict[str, int]:
    """A stable number per key in 1 .. 2**bits - 1: its hash, the next free one on a collision (keys in
    sorted order, so the same keys always get the same numbers)."""
    return dict(_allocate(tuple(sorted(set(keys))), bits))


@functools.lru_cache(maxsize=64)
def _allocate(keys: tuple[str, ...], bits: int) -> tuple[tuple[str, int], ...]:
    used: set[int] = set()
    out: dict[str, int] = {}
    top = (1 << bits) - 1
    for key in keys:
        n = _hash(key, bits)
        while n in used:
            n = n % top + 1
        used.add(n)
        out[key] = n
    return tuple(out.items())


def link_local(mac: str) -> ipaddress.IPv6Address:
    """The EUI-64 link-local address an interface with ``mac`` gives itself."""
    b = bytes.fromhex(mac.replace(":", ""))
    eui = bytes([b[0] ^ 0x02]) + b[1:3] + b"\xff\xfe" + b[3:]
    return ipaddress.IPv6Address(b"\xfe\x80" + b"\x00" * 6 + eui)


def filtered_ports(snap: Snapshot, host: str) -> list[PortSpec]:
    """The ports this host filters: instance ports bound here with port security, on a known network
    (those whose taps compile/l2.py plugs)."""
    return sorted((p for p in snap.ports.values() if p.host == host and p.port_security_enabled
                   and p.device_owner.startswith(COMPUTE_OWNER_PREFIX) and p.network_id in snap.networks),
                  key=lambda p: p.id)


def _net(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> IPNetwork:
    if isinstance(addr, ipaddress.IPv4Address):
        return ipaddress.IPv4Network((int(addr), 32))
    return ipaddress.IPv6Network((int(addr), 128))


def _addr(net: IPNetwork) -> str:
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


def _nd_target(net: ipaddress.IPv6Network) -> str:
    lo, hi = int(net.network_address), int(net.broadcast_address)
    return f"0x{lo:032x}" if lo == hi else f"0x{lo:032x}-0x{hi:032x}"


@dataclass(frozen=True, slots=True)
class _Port:
    """One filtered port's part of the bridge table (its set elements), compiled once per PortSpec."""
    spec: PortSpec
    tap: str
    macs: tuple[str, ...]
    ipv4: tuple[str, ...]       # MAC . address it may send from: exact addresses, then address-pair CIDRs
    ipv4_nets: tuple[str, ...]
    ipv6: tuple[str, ...]
    ipv6_nets: tuple[str, ...]
    nd: tuple[str, ...]
    problems: tuple[str, ...]


@functools.lru_cache(maxsize=65536)
def _port_addresses(port: PortSpec) -> _Port | None:
    """The port's MACs and the addresses each may send from (fixed IPs, address pairs, a link-local address
    per MAC) as set elements; None (said in ``problems`` of compile_secgroups) when it cannot be filtered.
    Cached: a snapshot of 1,000 ports recompiles only the ports that changed."""
    tap = tap_name(port.id)
    mac = port.mac_address.lower()
    if not TOKEN.fullmatch(tap) or not MAC.fullmatch(mac):
        return None
    problems = []
    by_mac: dict[str, set[IPNetwork]] = {mac: {_net(f.ip_address) for f in port.fixed_ips}}
    for pair in port.allowed_address_pairs:
        pmac = pair.mac_address.lower()
        if MAC.fullmatch(pmac):
            by_mac.setdefault(pmac, set()).add(pair.ip_address)
        else:
            problems.append(f"port {port.id}: address pair {pair.ip_address} with unusable MAC ignored")
    for m, nets in by_mac.items():
        nets.add(_net(link_local(m)))
    def elements(version: int, exact: bool) -> tuple[str, ...]:
        return tuple(f'"{tap}" . {m} . {_addr(n)}' for m, nets in sorted(by_mac.items())
                     for n in _collapsed((n for n in nets if (n.prefixlen == n.max_prefixlen) == exact), version))
    nd = tuple(f'"{tap}" . {_nd_target(n)}' for n in _collapsed({n for nets in by_mac.values() for n in nets}, 6)
               if isinstance(n, ipaddress.IPv6Network))
    return _Port(port, tap, tuple(sorted(by_mac)), elements(4, True), elements(4, False), elements(6, True),
                 elements(6, False), nd, tuple(problems))


def _collapsed(nets: Iterable[IPNetwork], version: int) -> list[IPNetwork]:
    """The networks of one version, merged where they overlap or touch (an interval set refuses
    overlapping elements), in address order."""
    chosen = [n for n in nets if n.version == version]
    if all(n.prefixlen == n.max_prefixlen for n in chosen):  # single addresses (the usual case): no merging
        return sorted(set(chosen), key=lambda n: int(n.network_address))
    out: list[IPNetwork] = []
    if version == 4:
        out += ipaddress.collapse_addresses(n for n in chosen if isinstance(n, ipaddress.IPv4Network))
    else:
        out += ipaddress.collapse_addresses(n for n in chosen if isinstance(n, ipaddress.IPv6Network))
    return sorted(out, key=lambda n: int(n.network_address))


def compile_secgroups(snap: Snapshot, host: str) -> CompiledSecurity:
    problems: list[str] = []
    ports: list[_Port] = []
    taps: set[str] = set()
    for spec in filtered_ports(snap, host):
        port = _port_addresses(spec)
        if port is None:
            problems.append(f"port {spec.id}: device name or MAC address unusable, not filtered here")
        elif port.tap in taps:
            problems.append(f"port {spec.id}: device name {port.tap} taken by another port, not filtered here")
        else:
            problems += port.problems
            ports.append(port)
            taps.add(port.tap)
    if not ports:
        return CompiledSecurity((), (), (), tuple(problems))
    ids = tuple(p.spec.id for p in ports)
    marks = allocate(ids, 31)
    bridge = _bridge_table(ports, marks, ids)
    inet = _inet_table(snap, ports, marks, ids, problems)
    sysctls = tuple(SysctlSpec(None, key, "1", ids) for key in BR_NETFILTER)
    return CompiledSecurity((bridge, inet), sysctls, ids, tuple(problems))


# -- the bridge table: marks and anti-spoofing ---------------------------------------------------------------

def _bridge_table(ports: list[_Port], marks: dict[str, int], ids: tuple[PortId, ...]) -> NftTable:
    nd = [e for p in ports for e in p.nd]
    sets = (
        NftSet("ports", ("type ifname",), tuple(sorted(f'"{p.tap}"' for p in ports))),
        NftSet("egress-marks", ("type ifname : mark",),
               tuple(sorted(f'"{p.tap}" : 0x{EGRESS_BIT | marks[p.spec.id]:08x}' for p in ports)), "map"),
        NftSet("ingress-marks", ("type ifname : mark",),
               tuple(sorted(f'"{p.tap}" : 0x{marks[p.spec.id]:08x}' for p in ports)), "map"),
        NftSet("macs", ("type ifname . ether_addr",),
               tuple(sorted(f'"{p.tap}" . {m}' for p in ports for m in p.macs))),
        # Exact addresses in hash sets: every packet an instance sends is looked up here, and an interval
        # set of concatenations (pipapo) cost ~8 points of a routed TCP stream's throughput; address-pair CIDRs
        # (rare) in interval sets, looked up only when the exact one has no match.
        NftSet("ipv4", ("type ifname . ether_addr . ipv4_addr",), tuple(sorted(e for p in ports for e in p.ipv4))),
        NftSet("ipv4-nets", ("type ifname . ether_addr . ipv4_addr", "flags interval"),
               tuple(sorted(e for p in ports for e in p.ipv4_nets))),
        NftSet("ipv6", ("type ifname . ether_addr . ipv6_addr",), tuple(sorted(e for p in ports for e in p.ipv6))),
        NftSet("ipv6-nets", ("type ifname . ether_addr . ipv6_addr", "flags interval"),
               tuple(sorted(e for p in ports for e in p.ipv6_nets))),
        # The target of a neighbour advertisement (ICMPv6 bytes 8-23), as a 128-bit number.
        NftSet("nd-targets", ("typeof iifname . @th,64,128", "flags interval"), tuple(sorted(nd))),
    )
    chains = (
        NftChain("prerouting", (
            "iifname != @ports accept",
            "iifname . ether saddr != @macs drop",
            "meta mark set iifname map @egress-marks",
            "ether type vmap { arp : jump from-port-arp, ip : jump from-port-ipv4, ip6 : jump from-port-ipv6 }",
            "drop",
        ), "type filter hook prerouting priority -300; policy accept;"),
        NftChain("forward", (
            "meta mark set oifname map @ingress-marks accept",
            "iifname @ports meta mark set 0x00000000",
        ), "type filter hook forward priority -300; policy accept;"),
        NftChain("from-port-arp", (
            "iifname . arp saddr ether . arp saddr ip @ipv4 accept",
            "iifname . arp saddr ether . arp saddr ip @ipv4-nets accept",
            "iifname . arp saddr ether @macs arp saddr ip 0.0.0.0 accept",
            "drop",
        )),
        NftChain("from-port-ipv4", (
            "udp sport 67 drop",
            "udp dport 68 drop",
            "iifname . ether saddr . ip saddr @ipv4 accept",
            "iifname . ether saddr . ip saddr @ipv4-nets accept",
            "ip saddr 0.0.0.0 ip daddr 255.255.255.255 udp sport 68 udp dport 67 accept",
            "drop",
        )),
        NftChain("from-port-ipv6", (
            "icmpv6 type nd-router-advert drop",
            "udp sport 547 drop",
            "udp dport 546 drop",
            "icmpv6 type nd-neighbor-advert iifname . @th,64,128 != @nd-targets drop",
            "iifname . ether saddr . ip6 saddr @ipv6 accept",
            "iifname . ether saddr . ip6 saddr @ipv6-nets accept",
            "ip6 saddr :: icmpv6 type { nd-neighbor-solicit, nd-router-solicit, mld-listener-report, "
            "mld2-listener-report } accept",
            "drop",
        )),
    )
    return structured(None, "bridge", sets, chains, ids)


# -- the inet table: conntrack and the groups' rules ----------------------------------------------------------

def _inert(rule: SecurityGroupRuleSpec) -> str | None:
    """Why a rule cannot be rendered as given (the API refuses these; older or hostile data may hold them)."""
    if rule.ethertype not in NFPROTO:
        return f"ethertype {rule.ethertype}"
    if rule.protocol is not None and not 0 <= rule.protocol <= 255:
        return f"protocol {rule.protocol}"
    if rule.remote_ip_prefix is not None and rule.remote_ip_prefix.version != rule.ethertype:
        return f"remote_ip_prefix {rule.remote_ip_prefix} is not IPv{rule.ethertype}"
    if rule.remote_ip_prefix is not None and rule.remote_group_id is not None:
        return "both a remote prefix and a remote group"
    limit = 255 if rule.protocol == ICMP[rule.ethertype] else 65535
    for value in (rule.port_min, rule.port_max):
        if value is not None and not 0 <= value <= limit:
            return f"port or ICMP value {value}"
    if rule.protocol in PORT_PROTOCOLS and rule.port_min is not None and rule.port_max is not None \
            and rule.port_min > rule.port_max:
        return f"port range {rule.port_min}-{rule.port_max}"
    return None


def render_rule(rule: SecurityGroupRuleSpec) -> str:
    """One rule of a group's chain (direction decides which end the remote is)."""
    v = rule.ethertype
    parts = [f"meta nfproto {NFPROTO[v]}"]
    if rule.protocol is not None:
        parts.append(f"meta l4proto {rule.protocol}")
        if rule.protocol in PORT_PROTOCOLS and (rule.port_min is not None or rule.port_max is not None):
            lo = rule.port_min if rule.port_min is not None else rule.port_max
            hi = rule.port_max if rule.port_max is not None else rule.port_min
            if (lo, hi) != (0, 65535):
                parts.append(f"th dport {lo}" if lo == hi else f"th dport {lo}-{hi}")
        elif rule.protocol == ICMP[v] and rule.port_min is not None:
            kind = "icmp" if v == 4 else "icmpv6"
            parts.append(f"{kind} type {rule.port_min}")
            if rule.port_max is not None:
                parts.append(f"{kind} code {rule.port_max}")
    end = "saddr" if rule.direction == Direction.INGRESS else "daddr"
    if rule.remote_group_id is not None:
        parts.append(f"{ADDR[v]} {end} @{remote_set(rule.remote_group_id, v)}")
    elif rule.remote_ip_prefix is not None and rule.remote_ip_prefix.prefixlen > 0:
        parts.append(f"{ADDR[v]} {end} {rule.remote_ip_prefix}")
    return " ".join([*parts, "accept"])


def remote_set(group: SecurityGroupId, version: int) -> str:
    return f"sg-{token(group)}-ipv{version}"


@dataclass(frozen=True, slots=True)
class _Group:
    chains: tuple[NftChain, NftChain]        # ingress, egress
    remotes: tuple[SecurityGroupId, ...]     # remote groups its rules name
    problems: tuple[str, ...]


@functools.lru_cache(maxsize=4096)
def _group(group_id: SecurityGroupId, group_rules: tuple[SecurityGroupRuleSpec, ...]) -> _Group:
    """A group's two chains (its rules, each an accept), compiled once per set of rules. Not keyed by the
    whole spec: its members (thousands in a default group) change far more often than its rules, and
    each version held as a key would hold all of them."""
    rules: dict[Direction, list[str]] = {Direction.INGRESS: [], Direction.EGRESS: []}
    problems, remotes = [], set()
    for rule in sorted(group_rules, key=lambda r: r.id):
        why = _inert(rule)
        if why is not None:
            problems.append(f"security group {group_id} rule {rule.id}: {why}, ignored")
            continue
        rules[rule.direction].append(render_rule(rule))
        if rule.remote_group_id is not None:
            remotes.add(rule.remote_group_id)
    # Rules that render the same are one rule (the API refuses duplicates; ids differ on identical rules).
    name = f"sg-{token(group_id)}"
    chains = (NftChain(f"{name}-ingress", tuple(dict.fromkeys(rules[Direction.INGRESS]))),
              NftChain(f"{name}-egress", tuple(dict.fromkeys(rules[Direction.EGRESS]))))
    return _Group(chains, tuple(sorted(remotes)), tuple(problems))


# The remote sets of each group's latest members: a member joining makes a new version, and a cache of
# every version (an LRU) would hold thousands of old addresses per change of a big group.
_REMOTE: dict[SecurityGroupId, tuple[tuple[IPNetwork, ...], tuple[NftSet, NftSet]]] = {}
REMOTE_GROUPS_KEPT = 4096


def _remote_sets(group: SecurityGroupId, members: tuple[IPNetwork, ...]) -> tuple[NftSet, NftSet]:
    held = _REMOTE.get(group)
    if held is not None and (held[0] is members or held[0] == members):
        return held[1]
    made: tuple[NftSet, NftSet] = tuple(  # type: ignore[assignment]
        NftSet(remote_set(group, v), (f"type ipv{v}_addr", "flags interval"),
               tuple(_addr(n) for n in _collapsed(members, v))) for v in (4, 6))
    if len(_REMOTE) >= REMOTE_GROUPS_KEPT:
        _REMOTE.clear()
    _REMOTE[group] = (members, made)
    return made


# The rules every filtered port has before its groups' (shared chains): for stateful ports replies of
# accepted connections pass and invalid packets do not; DHCP/DHCPv6 and neighbour discovery as Neutron
# always allows them.
IMPLICIT = {
    Direction.EGRESS: ("meta nfproto ipv4 udp sport 68 udp dport 67 accept",
                       "meta nfproto ipv6 udp sport 546 udp dport 547 accept", f"icmpv6 type {ND_EGRESS} accept"),
    Direction.INGRESS: ("meta nfproto ipv4 udp sport 67 udp dport 68 accept",
                        "meta nfproto ipv6 udp sport 547 udp dport 546 accept", f"icmpv6 type {ND_INGRESS} accept"),
}
SHARED_CHAINS = tuple(
    NftChain(f"{kind}-{d}", (("ct state established,related accept",) if kind == "stateful" else ())
             + IMPLICIT[d] + (("ct state invalid drop",) if kind == "stateful" else ()))
    for kind in ("stateful", "stateless") for d in (Direction.INGRESS, Direction.EGRESS))


def _port_chains(p: _Port, groups: list[SecurityGroupId], stateful: bool) -> tuple[NftChain, NftChain]:
    kind = "stateful" if stateful else "stateless"
    t = token(p.spec.id)
    return tuple(NftChain(f"port-{t}-{d}", (f"jump {kind}-{d}", *(f"jump sg-{token(g)}-{d}" for g in groups), "drop"))
                 for d in (Direction.EGRESS, Direction.INGRESS))  # type: ignore[return-value]


def _inet_table(snap: Snapshot, ports: list[_Port], marks: dict[str, int], ids: tuple[PortId, ...],
                problems: list[str]) -> NftTable:
    used = sorted({g for p in ports for g in p.spec.security_groups})
    compiled: dict[SecurityGroupId, _Group] = {}
    for g in used:
        spec = snap.security_groups.get(g)
        if spec is None:
            problems.append(f"security group {g} is not in the snapshot: its ports allow nothing through it")
        compiled[g] = _group(g, spec.rules if spec is not None else ())
        problems += compiled[g].problems
    remotes = sorted({r for c in compiled.values() for r in c.remotes})
    port_chains: list[NftChain] = []
    for p in ports:
        mine = sorted(set(p.spec.security_groups))
        flags = {snap.security_groups[g].stateful for g in mine if g in snap.security_groups}
        if flags == {True, False}:
            problems.append(f"port {p.spec.id} mixes stateful and stateless security groups: filtered statefully")
        port_chains += _port_chains(p, mine, flags != {False})
    zones = allocate((bridge_name(p.spec.network_id) for p in ports), 16)
    untracked = sorted({bridge_name(n) for n in snap.networks} - zones.keys())
    remote_sets = [s for g in remotes for s in _remote_sets(
        g, snap.security_groups[g].members if g in snap.security_groups else ())]
    sets = (
        NftSet("zones", ("typeof iifname : ct zone",),
               tuple(sorted(f'"{b}" : {z}' for b, z in zones.items())), "map"),
        NftSet("untracked", ("type ifname",), tuple(f'"{b}"' for b in untracked)),
        NftSet("egress-ports", ("type mark : verdict",), tuple(sorted(
            f"0x{EGRESS_BIT | marks[p.spec.id]:08x} : jump port-{token(p.spec.id)}-egress" for p in ports)), "map"),
        NftSet("ingress-ports", ("type mark : verdict",), tuple(sorted(
            f"0x{marks[p.spec.id]:08x} : jump port-{token(p.spec.id)}-ingress" for p in ports)), "map"),
        *remote_sets,
    )
    chains = (
        NftChain("zone", ("iifname @untracked notrack", "ct zone set iifname map @zones"),
                 "type filter hook prerouting priority raw; policy accept;"),
        NftChain("egress", ("meta mark vmap @egress-ports",),
                 "type filter hook prerouting priority filter; policy accept;"),
        NftChain("ingress", ("meta mark vmap @ingress-ports",),
                 "type filter hook forward priority filter; policy accept;"),
        *SHARED_CHAINS,
        *port_chains,
        *(c for g in used for c in compiled[g].chains),
    )
    return structured(None, "inet", sets, chains, ids)
