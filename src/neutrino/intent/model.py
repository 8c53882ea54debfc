"""The intent an agent holds: the part of the API's state that concerns its host.

Plain frozen data with ``ipaddress`` types — no DB rows, no HTTP dicts. The server builds it (sync/), the
agent keeps a ``Snapshot`` of it, and the compilers turn a snapshot plus a host into desired kernel state.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NewType

NetworkId = NewType("NetworkId", str)
SubnetId = NewType("SubnetId", str)
PortId = NewType("PortId", str)
HostName = NewType("HostName", str)
RouterId = NewType("RouterId", str)
FloatingIpId = NewType("FloatingIpId", str)
SecurityGroupId = NewType("SecurityGroupId", str)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class NetworkType(StrEnum):
    VXLAN = "vxlan"
    FLAT = "flat"
    VLAN = "vlan"
    LOCAL = "local"


class DeviceOwner(StrEnum):
    """Who a port belongs to (``device_owner``): the one home of these strings."""
    DHCP = "network:dhcp"
    ROUTER_INTERFACE = "network:router_interface"
    ROUTER_INTERFACE_DISTRIBUTED = "network:router_interface_distributed"
    HA_ROUTER_INTERFACE = "network:ha_router_replicated_interface"
    ROUTER_GATEWAY = "network:router_gateway"
    FLOATINGIP = "network:floatingip"
    LAB = "compute:lab"


# Ports that route (they choose their own addresses, e.g. the subnet's gateway).
ROUTER_OWNERS = frozenset({DeviceOwner.ROUTER_INTERFACE, DeviceOwner.ROUTER_INTERFACE_DISTRIBUTED,
                           DeviceOwner.HA_ROUTER_INTERFACE, DeviceOwner.ROUTER_GATEWAY})
NETWORK_OWNER_PREFIX = "network:"  # owners that are the cloud's own devices, not a tenant's
COMPUTE_OWNER_PREFIX = "compute:"  # instances (VMs, lab instances)


class AgentType(StrEnum):
    """The agents a host runs, as the agents API names them."""
    DHCP = "DHCP agent"
    L2 = "Linux bridge agent"
    L3 = "L3 agent"


class Ipv6Mode(StrEnum):
    SLAAC = "slaac"
    DHCPV6_STATEFUL = "dhcpv6-stateful"
    DHCPV6_STATELESS = "dhcpv6-stateless"


@dataclass(frozen=True, slots=True)
class HostRoute:
    destination: IPNetwork
    nexthop: IPAddress


@dataclass(frozen=True, slots=True)
class SubnetSpec:
    id: SubnetId
    network_id: NetworkId
    cidr: IPNetwork
    gateway_ip: IPAddress | None
    enable_dhcp: bool
    dns_nameservers: tuple[IPAddress, ...] = ()
    host_routes: tuple[HostRoute, ...] = ()
    ipv6_ra_mode: Ipv6Mode | None = None
    ipv6_address_mode: Ipv6Mode | None = None

    @property
    def ip_version(self) -> int:
        return self.cidr.version


@dataclass(frozen=True, slots=True)
class NetworkSpec:
    id: NetworkId
    network_type: NetworkType
    segmentation_id: int | None
    physical_network: str | None
    mtu: int
    admin_state_up: bool = True


@dataclass(frozen=True, slots=True)
class FixedIp:
    subnet_id: SubnetId
    ip_address: IPAddress


@dataclass(frozen=True, slots=True)
class ExtraDhcpOpt:
    opt_name: str
    opt_value: str
    ip_version: int = 4


class Direction(StrEnum):
    """A security group rule's direction, seen from the port: ingress = traffic to it."""
    INGRESS = "ingress"
    EGRESS = "egress"


@dataclass(frozen=True, slots=True)
class SecurityGroupRuleSpec:
    """One rule, normalised by the server: ``protocol`` is an IP protocol number (None = any; the name
    "icmp" on an IPv6 rule is already 58); for TCP/UDP/SCTP/UDP-Lite ``port_min``/``port_max`` are the
    destination port range, for ICMP/ICMPv6 they are the type and code (None = any); at most one of
    ``remote_ip_prefix`` and ``remote_group_id`` is set (neither = anywhere)."""
    id: str
    direction: Direction
    ethertype: int                                   # 4 or 6
    protocol: int | None = None
    port_min: int | None = None
    port_max: int | None = None
    remote_ip_prefix: IPNetwork | None = None
    remote_group_id: SecurityGroupId | None = None


@dataclass(frozen=True, slots=True)
class SecurityGroupSpec:
    """A security group some port on this host uses, directly or as a rule's remote group. ``members``
    are the addresses of every port in the group, on any host (fixed IPs and allowed address pairs, as
    networks: a pair may be a CIDR), sorted: what a remote-group rule matches."""
    id: SecurityGroupId
    stateful: bool = True
    rules: tuple[SecurityGroupRuleSpec, ...] = ()
    members: tuple[IPNetwork, ...] = ()


@dataclass(frozen=True, slots=True)
class AddressPair:
    """An allowed address pair: the port may also send from ``ip_address`` (an address or a CIDR) with
    ``mac_address`` (the server fills in the port's own MAC when the pair names none)."""
    ip_address: IPNetwork
    mac_address: str


@dataclass(frozen=True, slots=True)
class PortSpec:
    id: PortId
    network_id: NetworkId
    mac_address: str
    fixed_ips: tuple[FixedIp, ...]
    device_owner: str
    device_id: str
    host: HostName | None  # binding:host_id, None when unbound
    admin_state_up: bool = True
    extra_dhcp_opts: tuple[ExtraDhcpOpt, ...] = ()
    dns_name: str = ""
    # Port security. The server always sets these; the defaults (unfiltered) suit hand-built snapshots.
    # With port_security_enabled the port is filtered by its groups (none: nothing comes in) and may send
    # only from its MAC and fixed IPs or address pairs.
    port_security_enabled: bool = False
    security_groups: tuple[SecurityGroupId, ...] = ()
    allowed_address_pairs: tuple[AddressPair, ...] = ()


@dataclass(frozen=True, slots=True)
class HostSpec:
    """Another agent's host, as the VXLAN mesh needs it."""
    name: HostName
    tunnel_ip: IPAddress


@dataclass(frozen=True, slots=True)
class FloatingIpSpec:
    """A floating IP associated with a port behind a router: 1:1 NAT on the router's gateway."""
    id: FloatingIpId
    floating_ip: IPAddress       # an address of the router's external network (on its qg- device)
    fixed_ip: IPAddress          # the internal port's address it maps to
    port_id: PortId              # the internal port


@dataclass(frozen=True, slots=True)
class RouterSpec:
    """A router scheduled to this host's L3 agent. Its ports are in ``Snapshot.ports`` with
    ``device_id`` = the router id: ``network:router_interface`` ones become its ``qr-`` devices (address =
    the port's fixed IPs, usually the subnets' gateways), the ``network:router_gateway`` one its ``qg-``
    device; the networks and subnets of all of them are in the snapshot too."""
    id: RouterId
    admin_state_up: bool = True
    enable_snat: bool = True
    routes: tuple[HostRoute, ...] = ()          # extra routes (destination via nexthop)
    floating_ips: tuple[FloatingIpSpec, ...] = ()


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything one agent needs, complete: compile(snapshot, host) must not need anything else.

    ``dhcp_networks`` are the networks scheduled to this host's DHCP agent; ``hosts`` are the tunnel
    endpoints of every live agent (for VXLAN flooding and FDB entries); ``routers`` those scheduled to
    this host's L3 agent.
    """
    revision: int
    networks: dict[NetworkId, NetworkSpec] = field(default_factory=dict)
    subnets: dict[SubnetId, SubnetSpec] = field(default_factory=dict)
    ports: dict[PortId, PortSpec] = field(default_factory=dict)
    dhcp_networks: frozenset[NetworkId] = frozenset()
    hosts: dict[HostName, HostSpec] = field(default_factory=dict)
    routers: dict[RouterId, RouterSpec] = field(default_factory=dict)  # scheduled to this host's L3 agent
    # Every group a port bound to this host uses, and every group their rules name as remote group.
    security_groups: dict[SecurityGroupId, SecurityGroupSpec] = field(default_factory=dict)
