"""Routers compiled (pure): the qrouter namespace's veths, routes, NAT table and sysctls, from hand-built
snapshots; a golden of the whole HostState and of the NAT table, and the table's meaning said in words."""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from collections.abc import Sequence

from neutrino.compile.l2 import compile_host
from neutrino.compile.nft import render_sync
from neutrino.compile.routers import compile_router, router_ports, router_ports_index
from neutrino.compile.state import HostState, SysctlSpec
from neutrino.dataplane.sysctls import SysctlPlane
from neutrino.intent.model import (
    FixedIp,
    FloatingIpId,
    FloatingIpSpec,
    HostRoute,
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
from tests.unit.test_golden import check, plain

R1 = RouterId("r1000000-0000-0000-0000-000000000001")
NA = NetworkId("a0000000-0000-0000-0000-00000000000a")
NB = NetworkId("b0000000-0000-0000-0000-00000000000b")
NX = NetworkId("e0000000-0000-0000-0000-00000000000e")
SA = SubnetId("5a000000-0000-0000-0000-00000000000a")
SB = SubnetId("5b000000-0000-0000-0000-00000000000b")
SX = SubnetId("5e000000-0000-0000-0000-00000000000e")
QA = PortId("qa000000-0000-0000-0000-000000000000")
QB = PortId("qb000000-0000-0000-0000-000000000000")
QG = PortId("qe000000-0000-0000-0000-000000000000")


def ip(a: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(a)


def rport(pid: PortId, net: NetworkId, sub: SubnetId, mac: str, addr: str, owner: str) -> PortSpec:
    return PortSpec(pid, net, mac, (FixedIp(sub, ip(addr)),), owner, R1, None)


def router_snapshot(snat: bool = True, gateway: str = "203.0.113.1") -> Snapshot:
    return Snapshot(
        revision=1,
        networks={NA: NetworkSpec(NA, NetworkType.VXLAN, 201, None, 1450),
                  NB: NetworkSpec(NB, NetworkType.VXLAN, 202, None, 1450),
                  NX: NetworkSpec(NX, NetworkType.FLAT, None, "public", 1500)},
        subnets={SA: SubnetSpec(SA, NA, ipaddress.ip_network("10.1.0.0/24"), ip("10.1.0.1"), True),
                 SB: SubnetSpec(SB, NB, ipaddress.ip_network("10.2.0.0/24"), ip("10.2.0.1"), True),
                 SX: SubnetSpec(SX, NX, ipaddress.ip_network("203.0.113.0/24"), ip(gateway), False)},
        ports={QA: rport(QA, NA, SA, "fa:16:3e:00:0a:01", "10.1.0.1", "network:router_interface"),
               QB: rport(QB, NB, SB, "fa:16:3e:00:0b:01", "10.2.0.1", "network:router_interface"),
               QG: rport(QG, NX, SX, "fa:16:3e:00:0e:01", "203.0.113.10", "network:router_gateway")},
        routers={R1: RouterSpec(R1, enable_snat=snat,
                                routes=(HostRoute(ipaddress.ip_network("192.168.50.0/24"), ip("10.2.0.254")),),
                                floating_ips=(FloatingIpSpec(FloatingIpId("f1"), ip("203.0.113.20"),
                                                             ip("10.1.0.5"), PortId("i1")),))})


def compiled(snap: Snapshot | None = None) -> HostState:
    return compile_host(snap or router_snapshot(), "h1", "198.18.0.1", {"public": "eth9"})


NS = f"qrouter-{R1}"


def test_router_golden() -> None:
    state = compiled()
    table = state.nft[0]
    check({"router_state.json": json.dumps(plain(state), indent=1, sort_keys=True) + "\n",
           "router_nat.nft": render_sync(table, "OWNER")})


def test_namespace_devices_and_bridges() -> None:
    state = compiled()
    assert state.namespaces == (NS,) and state.routers == (R1,) and state.problems == ()
    by_peer = {p.peer: p for p in state.port_links}
    assert set(by_peer) == {"qr-qa000000-00", "qr-qb000000-00", "qg-qe000000-00"}
    assert all(p.namespace == NS and p.device == f"tap{p.port_id[:11]}" for p in state.port_links)
    qg = by_peer["qg-qe000000-00"]
    assert [str(a) for a in qg.addresses] == ["203.0.113.10/24", "203.0.113.20/32"]  # gateway + floating IP
    assert qg.bridge == f"brq{NX[:11]}"
    assert [str(a) for a in by_peer["qr-qa000000-00"].addresses] == ["10.1.0.1/24"]
    bridges = {b.name: b for b in state.bridges}
    assert set(bridges) == {f"brq{n[:11]}" for n in (NA, NB, NX)}
    assert bridges[f"brq{NX[:11]}"].uplink == "eth9"
    assert {v.vni for v in state.vxlans} == {201, 202}


def test_routes_default_and_extra() -> None:
    routes = {(str(r.destination), str(r.gateway), r.device) for r in compiled().routes}
    assert routes == {("0.0.0.0/0", "203.0.113.1", "qg-qe000000-00"),
                      ("192.168.50.0/24", "10.2.0.254", "qr-qb000000-00")}
    assert all(r.namespace == NS for r in compiled().routes)


def test_gateway_outside_the_subnet_gets_an_on_link_route_first() -> None:
    routes = compiled(router_snapshot(gateway="198.51.100.1")).routes
    assert (str(routes[0].destination), routes[0].gateway, routes[0].device) == \
        ("198.51.100.1/32", None, "qg-qe000000-00")
    assert str(routes[1].destination) == "0.0.0.0/0" and str(routes[1].gateway) == "198.51.100.1"


def test_ipv6_gateway_gets_an_ipv6_default_route() -> None:
    snap = router_snapshot()
    sx6 = SubnetId("s6000000-0000-0000-0000-000000000000")
    qg = snap.ports[QG]
    v6 = FixedIp(sx6, ip("2001:db8:9::10"))
    snap = dataclasses.replace(
        snap, subnets={**snap.subnets, sx6: SubnetSpec(sx6, NX, ipaddress.ip_network("2001:db8:9::/64"),
                                                       ip("2001:db8:9::1"), False)},
        ports={**snap.ports, QG: dataclasses.replace(qg, fixed_ips=(*qg.fixed_ips, v6))})
    routes = {(str(r.destination), str(r.gateway), r.device) for r in compiled(snap).routes}
    assert ("::/0", "2001:db8:9::1", "qg-qe000000-00") in routes
    assert ("0.0.0.0/0", "203.0.113.1", "qg-qe000000-00") in routes


def test_hairpin_is_masqueraded_only_between_internal_ports() -> None:
    post = compiled().nft[0].body.split("chain postrouting")[1]
    assert 'ct status dnat iifname != "qg-qe000000-00" oifname != "qg-qe000000-00" masquerade' in post
    without_fips = dataclasses.replace(router_snapshot(), routers={R1: RouterSpec(R1)})
    assert "masquerade" not in compiled(without_fips).nft[0].body


def test_nat_table_by_meaning() -> None:
    t = compiled().nft[0]
    assert (t.namespace, t.family) == (NS, "ip") and set(t.ports) == {QA, QB, QG}
    post = t.body.split("chain postrouting")[1]
    fip_snat = 'oifname "qg-qe000000-00" ip saddr 10.1.0.5 snat to 203.0.113.20'
    generic = 'oifname "qg-qe000000-00" ip saddr { 10.1.0.0/24, 10.2.0.0/24 } snat to 203.0.113.10'
    assert fip_snat in post and generic in post and post.index(fip_snat) < post.index(generic)
    pre = t.body.split("chain prerouting")[1].split("}")[0]
    assert "ip daddr 203.0.113.20 dnat to 10.1.0.5" in pre and "hook prerouting" in pre


def test_no_snat_keeps_floating_ips() -> None:
    body = compiled(router_snapshot(snat=False)).nft[0].body
    assert "snat to 203.0.113.10" not in body and "snat to 203.0.113.20" in body


def test_sysctls() -> None:
    assert set(compiled().sysctls) == {SysctlSpec(NS, "net.ipv4.ip_forward", "1"),
                                       SysctlSpec(NS, "net.ipv6.conf.all.forwarding", "1"),
                                       SysctlSpec(NS, "net.ipv4.conf.all.rp_filter", "2"),
                                       SysctlSpec(NS, "net.ipv4.conf.qg-qe000000-00.arp_notify", "1")}


def test_admin_down_router_is_not_realised() -> None:
    snap = router_snapshot()
    snap = dataclasses.replace(snap, routers={R1: dataclasses.replace(snap.routers[R1], admin_state_up=False)})
    state = compiled(snap)
    assert state.namespaces == () and state.port_links == () and state.nft == () and state.routes == ()


def test_extra_route_with_unreachable_nexthop_is_a_problem() -> None:
    snap = router_snapshot()
    r = dataclasses.replace(snap.routers[R1], routes=(HostRoute(ipaddress.ip_network("10.9.0.0/16"),
                                                                ip("172.16.0.1")),))
    state = compiled(dataclasses.replace(snap, routers={R1: r}))
    assert any("172.16.0.1" in p for p in state.problems)
    assert all(str(rt.destination) != "10.9.0.0/16" for rt in state.routes)


class FakeSysctls:
    def __init__(self, values: dict[tuple[str | None, str], str]) -> None:
        self.values = values
        self.writes: list[tuple[str | None, str, str]] = []
        self.entered: list[str | None] = []  # namespaces read from, once per read_all

    def read(self, ns: str | None, key: str) -> str | None:
        return self.values.get((ns, key))

    def read_all(self, ns: str | None, keys: Sequence[str]) -> dict[str, str | None]:
        self.entered.append(ns)
        return {key: self.read(ns, key) for key in keys}

    def write(self, ns: str | None, key: str, value: str) -> None:
        self.writes.append((ns, key, value))
        self.values[(ns, key)] = value


def test_sysctl_plane_writes_only_differences_and_skips_missing_keys() -> None:
    state = compiled()
    kernel = FakeSysctls({(NS, "net.ipv4.ip_forward"): "0", (NS, "net.ipv6.conf.all.forwarding"): "1",
                          (NS, "net.ipv4.conf.all.rp_filter"): "1"})  # no qg- device yet
    plane = SysctlPlane(kernel)
    assert plane.sync(state).changes == 2
    assert sorted(k for _, k, _ in kernel.writes) == ["net.ipv4.conf.all.rp_filter", "net.ipv4.ip_forward"]
    assert plane.sync(state).changes == 0  # idempotent: a restart writes nothing
    assert kernel.entered.count(NS) == 2  # the router's namespace entered once per pass for all its keys


def test_ipv6_subnets_with_an_ra_mode_get_router_advertisements() -> None:
    snap = router_snapshot()
    sa6 = SubnetId("5a600000-0000-0000-0000-00000000000a")
    v6 = SubnetSpec(sa6, NA, ipaddress.ip_network("2001:db8:a::/64"), ip("2001:db8:a::1"), False,
                    ipv6_ra_mode=Ipv6Mode.SLAAC, ipv6_address_mode=Ipv6Mode.SLAAC)
    qa = dataclasses.replace(snap.ports[QA], fixed_ips=(*snap.ports[QA].fixed_ips, FixedIp(sa6, ip("2001:db8:a::1"))))
    state = compiled(dataclasses.replace(snap, subnets={**snap.subnets, sa6: v6}, ports={**snap.ports, QA: qa}))
    [ra] = [d for d in state.daemons if d.kind == "ra"]
    assert ra.namespace == NS and ra.key == R1 and ra.ports == (QA,) and ra.binds == ("qr-qa000000-00",)
    assert "--enable-ra" in ra.argv and "--dhcp-range=2001:db8:a::,ra-only,64" in ra.argv
    assert "--interface=qr-qa000000-00" in ra.argv and "--port=0" in ra.argv  # no DNS
    assert not [d for d in compiled().daemons if d.kind == "ra"]  # IPv4 only: no advertisements


def test_many_routers_compile_from_one_index_of_the_ports() -> None:
    """compile_host indexes the routers' ports once (router_ports_index) instead of scanning every port for
    each router; a router compiled from the index is the one compiled on its own, ports in the same order."""
    snap = router_snapshot()
    ports, routers = dict(snap.ports), dict(snap.routers)
    for n in range(2, 40):  # more routers, each with an interface on network A and the gateway network
        rid = RouterId(f"r{n:07d}-0000-0000-0000-000000000001")
        for pid, owner, net, sub, addr in ((PortId(f"qi{n:06d}-0000-0000-0000-000000000000"),
                                            "network:router_interface", NA, SA, f"10.1.0.{100 + n}"),
                                           (PortId(f"qg{n:06d}-0000-0000-0000-000000000000"),
                                            "network:router_gateway", NX, SX, f"203.0.113.{100 + n}")):
            ports[pid] = dataclasses.replace(rport(pid, net, sub, f"fa:16:3e:00:{n:02x}:01", addr, owner),
                                             device_id=rid)
        routers[rid] = RouterSpec(rid)
    many = dataclasses.replace(snap, ports=ports, routers=routers)
    index = router_ports_index(many)
    for r in routers.values():
        assert router_ports(many, r, index) == router_ports(many, r)
        assert compile_router(many, r, index) == compile_router(many, r)
    assert router_ports(many, routers[R1], index)[0].id == QG  # the gateway first
    state = compiled(many)
    assert len(state.routers) == 39 and len(state.nft) == 39 and state.problems == ()
