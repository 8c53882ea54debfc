"""HostState: what one host's kernel and daemons should look like. Frozen data, produced by compile_host.

The empty HostState is "nothing of this neutrino here": running the planes on it is cleanup.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from neutrino.compile.daemons import DaemonSpec
from neutrino.compile.dhcp import DhcpServerSpec
from neutrino.compile.nft import NftTable
from neutrino.intent.model import NetworkId, PortId, RouterId

Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address
MAIN_TABLE = 254


def short(uuid: str) -> str:
    """Neutron's device-name suffix: the first 11 characters of a UUID."""
    return uuid[:11]


def bridge_name(network_id: str) -> str:
    return f"brq{short(network_id)}"


def tap_name(port_id: str) -> str:
    return f"tap{short(port_id)}"


@dataclass(frozen=True, slots=True)
class BridgeSpec:
    name: str
    network_id: NetworkId
    mtu: int
    uplink: str | None  # vxlan-<vni>, a physical interface (flat) or <iface>.<vid> (vlan)


@dataclass(frozen=True, slots=True)
class VxlanSpec:
    name: str
    vni: int
    local: str
    mtu: int
    bridge: str
    flood: tuple[str, ...]                 # remote tunnel endpoints that also have this network
    fdb: tuple[tuple[str, str], ...]       # (remote port MAC, its host's tunnel endpoint)


@dataclass(frozen=True, slots=True)
class VlanSpec:
    """802.1Q sub-interface of a physical interface (compile only: this kernel has no 802.1Q)."""
    name: str
    parent: str
    vid: int
    mtu: int
    bridge: str


@dataclass(frozen=True, slots=True)
class PlugSpec:
    """An existing device (an instance's tap) to enslave to its network's bridge; ``up`` False (the port
    is administratively down) keeps it enslaved but down: no traffic, port status DOWN."""
    port_id: PortId
    device: str
    bridge: str
    mtu: int
    up: bool = True


@dataclass(frozen=True, slots=True)
class PortLinkSpec:
    """A veth the agent owns end to end: ``device`` in the bridge, ``peer`` inside ``namespace`` with the
    port's MAC and addresses (DHCP ports, router ports)."""
    port_id: PortId
    device: str
    peer: str
    namespace: str
    bridge: str
    mac: str
    mtu: int
    addresses: tuple[Interface, ...]


@dataclass(frozen=True, slots=True)
class RouteSpec:
    """A route neutrino keeps in ``namespace`` (None: the host's): ``destination`` via ``gateway`` out of
    ``device``; no gateway is an on-link route (scope link), e.g. to a gateway outside the subnet. The
    kernel knows a route by (table, destination, metric); metric 0 on IPv6 is the kernel's 1024."""
    namespace: str | None
    destination: Network
    gateway: Address | None
    device: str
    metric: int = 0
    table: int = MAIN_TABLE


@dataclass(frozen=True, slots=True)
class SysctlSpec:
    """A sysctl neutrino sets in ``namespace`` (None: the host's), e.g. ``net.ipv4.ip_forward`` = "1" in a
    router's namespace; a per-device key (``net.ipv4.conf.<dev>.arp_notify``) is set once the device exists.
    Set, never restored: a namespace's values go with the namespace. ``ports`` depend on it (br_netfilter
    for filtered ports): they are ready only once it holds ``value``."""
    namespace: str | None
    key: str
    value: str
    ports: tuple[PortId, ...] = ()


@dataclass(frozen=True, slots=True)
class HostState:
    namespaces: tuple[str, ...] = ()
    bridges: tuple[BridgeSpec, ...] = ()
    vxlans: tuple[VxlanSpec, ...] = ()
    vlans: tuple[VlanSpec, ...] = ()
    plugs: tuple[PlugSpec, ...] = ()
    port_links: tuple[PortLinkSpec, ...] = ()
    dhcp: tuple[DhcpServerSpec, ...] = ()   # what the DHCP servers serve (their daemons are in ``daemons``)
    routes: tuple[RouteSpec, ...] = ()      # routers: extra, default and on-link gateway routes
    nft: tuple[NftTable, ...] = ()          # one per (namespace, family): routers' NAT, the host's filter
    daemons: tuple[DaemonSpec, ...] = ()    # every daemon, fully rendered
    sysctls: tuple[SysctlSpec, ...] = ()    # routers: forwarding, rp_filter, arp_notify; br_netfilter
    routers: tuple[RouterId, ...] = ()      # the routers realised here (qrouter-<id>)
    problems: tuple[str, ...] = ()  # intent this host cannot realise (e.g. a physnet with no mapping)
