"""compile_host (pure): a host's complete desired state from the intent snapshot.

Networks present on a host: those with a port bound to it, plus those whose DHCP it serves. Each gets a
bridge ``brq<11>`` with one uplink: ``vxlan-<vni>`` (tenant networks: ``vxlan_forwarding``), the mapped
physical interface (flat), or ``<iface>.<vid>`` (VLAN). DHCP ports become agent-owned veths into
``qdhcp-<network>``, routers (compile/routers.py) ``qrouter-<router>`` namespaces whose networks are present
too; instance ports (``compute:*``) are taps created by the instance tooling, which the agent plugs into
the bridge; those with port security are filtered by the host's bridge and inet tables (compile/secgroups.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence

from neutrino.compile.dhcp import compile_dhcp, dnsmasq_daemon
from neutrino.compile.routers import compile_router, router_ports, router_ports_index
from neutrino.compile.secgroups import compile_secgroups
from neutrino.compile.state import (
    BridgeSpec,
    HostState,
    Interface,
    PlugSpec,
    PortLinkSpec,
    VlanSpec,
    VxlanSpec,
    bridge_name,
    short,
    tap_name,
)
from neutrino.intent.model import (
    COMPUTE_OWNER_PREFIX,
    DeviceOwner,
    NetworkType,
    PortSpec,
    RouterId,
    Snapshot,
)

IPV6_MIN_MTU = 1280
FLOOD_MAC = "00:00:00:00:00:00"


def vxlan_forwarding(snap: Snapshot, host: str, local_ip: str,
                     ports: Sequence[PortSpec]) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """Where a VXLAN network's frames go from ``host`` (the l2population idea, from port bindings alone):
    broadcast, multicast and unknown unicast to the tunnel endpoints of the other live hosts that have a
    port on the network (``flood``, the all-zero FDB entries), and unicast to each MAC of a port on another
    live host straight to that host (``fdb``). ``ports``: every port of the network.

    A port's MACs are its own and its allowed address pairs'. A MAC claimed on two remote hosts (a VIP's
    MAC in the pairs of ports on both) or also on this host gets no entry: one entry cannot follow it, and
    the kernel drops frames from a MAC whose static entry names another endpoint; such a MAC is flooded to
    the network's hosts and learned. ARP/ND proxy entries are left out on purpose: a VXLAN device in proxy
    mode drops every ARP request it has no entry for (gratuitous ARP, a VIP moving between ports, an
    address-pair CIDR), which Neutron's semantics must let through.
    """
    vteps: dict[str, set[str]] = {}
    local_macs: set[str] = set()
    for p in ports:
        macs = {p.mac_address.lower()} | {pair.mac_address.lower() for pair in p.allowed_address_pairs}
        if p.host == host:
            local_macs |= macs
            continue
        remote = snap.hosts.get(p.host) if p.host is not None else None
        if remote is None or str(remote.tunnel_ip) == local_ip:  # unbound, or its host's agent is not alive
            continue
        for mac in macs:
            vteps.setdefault(mac, set()).add(str(remote.tunnel_ip))
    flood = tuple(sorted({ip for ips in vteps.values() for ip in ips}))
    fdb = tuple(sorted((mac, next(iter(ips))) for mac, ips in vteps.items()
                       if len(ips) == 1 and mac not in local_macs and mac != FLOOD_MAC))
    return flood, fdb


def _port_interfaces(snap: Snapshot, port: PortSpec, dhcp_only: bool) -> tuple[Interface, ...]:
    out = []
    for f in port.fixed_ips:
        subnet = snap.subnets.get(f.subnet_id)
        if subnet is None or (dhcp_only and not subnet.enable_dhcp):
            continue
        out.append(ipaddress.ip_interface(f"{f.ip_address}/{subnet.cidr.prefixlen}"))
    return tuple(sorted(out, key=lambda i: (i.version, int(i.ip))))


def compile_host(snap: Snapshot, host: str, tunnel_ip: str,
                 interface_mappings: Mapping[str, str]) -> HostState:
    mine = [p for p in snap.ports.values() if p.host == host]
    dhcp = compile_dhcp(snap, host)
    index = router_ports_index(snap)
    routers = [compile_router(snap, r, index) for _, r in sorted(snap.routers.items()) if r.admin_state_up]
    router_nets = {p.network_id for _, r in sorted(snap.routers.items()) if r.admin_state_up
                   for p in router_ports(snap, r, index)}
    net_ids = sorted({p.network_id for p in mine} | {d.network_id for d in dhcp} | router_nets)
    ports_of: dict[str, list[PortSpec]] = {}  # for VXLAN flooding and FDB
    for p in snap.ports.values():
        ports_of.setdefault(p.network_id, []).append(p)
    bridges, vxlans, vlans, problems = [], [], [], []
    for net_id in net_ids:
        net = snap.networks.get(net_id)
        if net is None:
            continue
        br = bridge_name(net_id)
        uplink: str | None = None
        if net.network_type == NetworkType.VXLAN and net.segmentation_id:
            uplink = f"vxlan-{net.segmentation_id}"
            flood, fdb = vxlan_forwarding(snap, host, tunnel_ip, ports_of.get(net_id, []))
            vxlans.append(VxlanSpec(uplink, net.segmentation_id, tunnel_ip, net.mtu, br, flood, fdb))
        elif net.network_type in (NetworkType.FLAT, NetworkType.VLAN):
            iface = interface_mappings.get(net.physical_network or "")
            if iface is None:
                problems.append(f"network {net_id}: no interface mapped for physical network "
                                f"{net.physical_network!r}")
            elif net.network_type == NetworkType.FLAT:
                uplink = iface
            else:
                uplink = f"{iface}.{net.segmentation_id}"
                vlans.append(VlanSpec(uplink, iface, int(net.segmentation_id or 0), net.mtu, br))
        bridges.append(BridgeSpec(br, net_id, net.mtu, uplink))
    plugs, links = [], []
    served = {d.network_id for d in dhcp}
    for p in sorted(mine, key=lambda p: p.id):
        net = snap.networks.get(p.network_id)
        if net is None:
            continue
        if p.device_owner == DeviceOwner.DHCP:
            if p.network_id in served:
                addresses = _port_interfaces(snap, p, dhcp_only=True)
                if net.mtu < IPV6_MIN_MTU and any(a.version == 6 for a in addresses):
                    # The kernel refuses IPv6 addresses on such a link (EINVAL, on every pass): leave
                    # them out and say so (the API refuses this combination; older data may hold it).
                    problems.append(f"network {net.id}: MTU {net.mtu} is below {IPV6_MIN_MTU}, its IPv6 "
                                    "subnets are not served")
                    addresses = tuple(a for a in addresses if a.version == 4)
                links.append(PortLinkSpec(p.id, tap_name(p.id), f"ns-{short(p.id)}", f"qdhcp-{p.network_id}",
                                          bridge_name(p.network_id), p.mac_address, net.mtu, addresses))
        elif p.device_owner.startswith(COMPUTE_OWNER_PREFIX):
            plugs.append(PlugSpec(p.id, tap_name(p.id), bridge_name(p.network_id), net.mtu, p.admin_state_up))
    routed = {link.port_id for r in routers for link in r.links}
    links = [link for link in links if link.port_id not in routed]  # a router port is its router's
    for r in routers:
        links += r.links
        problems += r.problems
    security = compile_secgroups(snap, host)
    problems += security.problems
    return HostState(namespaces=tuple(sorted({link.namespace for link in links} | {r.namespace for r in routers})),
                     bridges=tuple(bridges), vxlans=tuple(vxlans), vlans=tuple(vlans), plugs=tuple(plugs),
                     port_links=tuple(links), dhcp=dhcp, routes=tuple(rt for r in routers for rt in r.routes),
                     nft=security.tables + tuple(r.nft for r in routers),
                     daemons=tuple(dnsmasq_daemon(d) for d in dhcp) + tuple(d for r in routers for d in r.daemons),
                     sysctls=security.sysctls + tuple(sc for r in routers for sc in r.sysctls),
                     routers=tuple(RouterId(r.namespace.removeprefix("qrouter-")) for r in routers),
                     problems=tuple(problems))
