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
