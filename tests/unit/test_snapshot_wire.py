"""The snapshot's JSON form round-trips exactly (remote agents see what local ones see)."""

from __future__ import annotations

import ipaddress

from neutrino.agent.model import (
    ExtraDhcpOpt,
    FixedIp,
    HostName,
    HostRoute,
    HostSpec,
    Ipv6Mode,
    NetworkId,
    NetworkSpec,
    NetworkType,
    PortId,
    PortSpec,
    Snapshot,
    SubnetId,
    SubnetSpec,
)
from neutrino.sync.snapshot import from_json, to_json


def test_round_trip() -> None:
    n = NetworkId("n1")
    snap = Snapshot(
        revision=7,
        networks={n: NetworkSpec(n, NetworkType.VXLAN, 42, None, 1450)},
        subnets={SubnetId("s1"): SubnetSpec(SubnetId("s1"), n, ipaddress.ip_network("10.0.0.0/24"),
                                            ipaddress.ip_address("10.0.0.1"), True,
                                            (ipaddress.ip_address("10.0.0.53"),),
                                            (HostRoute(ipaddress.ip_network("10.9.0.0/16"),
                                                       ipaddress.ip_address("10.0.0.254")),)),
                 SubnetId("s6"): SubnetSpec(SubnetId("s6"), n, ipaddress.ip_network("2001:db8::/64"), None, True,
                                            ipv6_ra_mode=Ipv6Mode.SLAAC, ipv6_address_mode=Ipv6Mode.SLAAC)},
        ports={PortId("p1"): PortSpec(PortId("p1"), n, "fa:16:3e:00:00:01",
                                      (FixedIp(SubnetId("s1"), ipaddress.ip_address("10.0.0.5")),),
                                      "compute:lab", "vm1", HostName("h1"),
                                      extra_dhcp_opts=(ExtraDhcpOpt("mtu", "1400"),))},
        dhcp_networks=frozenset({n}),
        hosts={HostName("h1"): HostSpec(HostName("h1"), ipaddress.ip_address("192.0.2.1"))},
    )
    assert from_json(to_json(snap)) == snap
