"""Which floating IPs an agent reports applied: those of its routers whose gateway port is ready in every
plane (the router's NAT table, holding the floating IP's rules, is in place as compiled)."""

from __future__ import annotations

import ipaddress

from neutrino.agent.loop import applied_floating_ips
from neutrino.intent.model import (
    DeviceOwner,
    FloatingIpId,
    FloatingIpSpec,
    HostName,
    NetworkId,
    PortId,
    PortSpec,
    RouterId,
    RouterSpec,
    Snapshot,
)

R = RouterId("r1")
GW, QR, OTHER = PortId("gw"), PortId("qr"), PortId("vm")


def snap(admin_up: bool = True, gateway_host: str = "h1") -> Snapshot:
    net = NetworkId("ext")
    ports = {p.id: p for p in (
        PortSpec(GW, net, "fa:16:3e:00:00:01", (), DeviceOwner.ROUTER_GATEWAY, R, HostName(gateway_host)),
        PortSpec(QR, net, "fa:16:3e:00:00:02", (), DeviceOwner.ROUTER_INTERFACE, R, HostName("h1")),
    )}
    fip = FloatingIpSpec(FloatingIpId("f1"), ipaddress.ip_address("203.0.113.7"), ipaddress.ip_address("10.0.0.5"),
                         OTHER)
    return Snapshot(1, ports=ports, routers={R: RouterSpec(R, admin_state_up=admin_up, floating_ips=(fip,))})


def test_applied_once_the_gateway_is_ready() -> None:
    s = snap()
    mine = {GW, QR}
    assert applied_floating_ips(s, mine, {QR}) == {"f1": False}
    assert applied_floating_ips(s, mine, {GW, QR}) == {"f1": True}


def test_an_admin_down_router_or_another_hosts_gateway_applies_nothing() -> None:
    assert applied_floating_ips(snap(admin_up=False), {GW, QR}, {GW, QR}) == {"f1": False}
    assert applied_floating_ips(snap(gateway_host="h2"), {QR}, {QR}) == {}
