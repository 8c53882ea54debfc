"""compile_host and the dnsmasq renderer: golden outputs, determinism under any input order."""

from __future__ import annotations

import dataclasses
import ipaddress
import random

from neutrino.compile.dhcp import compile_dhcp, render_dnsmasq
from neutrino.compile.l2 import compile_host
from neutrino.intent.model import (
    ExtraDhcpOpt,
    FixedIp,
    HostName,
    HostRoute,
    HostSpec,
    NetworkId,
    NetworkSpec,
    NetworkType,
    PortId,
    PortSpec,
    Snapshot,
    SubnetId,
    SubnetSpec,
)

N1 = NetworkId("11111111-1111-1111-1111-111111111111")
N2 = NetworkId("22222222-2222-2222-2222-222222222222")
S1 = SubnetId("aaaaaaaa-0000-0000-0000-000000000001")
S2 = SubnetId("aaaaaaaa-0000-0000-0000-000000000002")
ip = ipaddress.ip_address


def port(pid: str, net: NetworkId, mac: str, addr: str, owner: str, host: str | None,
         opts: tuple[ExtraDhcpOpt, ...] = ()) -> PortSpec:
    return PortSpec(PortId(pid), net, mac, (FixedIp(S1 if net == N1 else S2, ip(addr)),), owner, "dev",
                    HostName(host) if host else None, extra_dhcp_opts=opts)


def snapshot(order: int = 0) -> Snapshot:
    ports = [
        port("d0000000-0000-0000-0000-000000000000", N1, "fa:16:3e:00:00:01", "10.0.0.2", "network:dhcp", "h1"),
        port("p1000000-0000-0000-0000-000000000000", N1, "fa:16:3e:00:00:11", "10.0.0.11", "compute:lab", "h1",
             (ExtraDhcpOpt("bootfile-name", "pxe.0"),)),
        port("p2000000-0000-0000-0000-000000000000", N1, "fa:16:3e:00:00:12", "10.0.0.12", "compute:lab", "h2"),
        port("p3000000-0000-0000-0000-000000000000", N2, "fa:16:3e:00:00:21", "192.168.5.9", "compute:lab", "h1"),
    ]
    random.Random(order).shuffle(ports)
    return Snapshot(
        revision=5,
        networks={N1: NetworkSpec(N1, NetworkType.VXLAN, 101, None, 1450),
                  N2: NetworkSpec(N2, NetworkType.FLAT, None, "physnet1", 1500)},
        subnets={S1: SubnetSpec(S1, N1, ipaddress.ip_network("10.0.0.0/24"), ip("10.0.0.1"), True,
                                (ip("10.0.0.53"),), (HostRoute(ipaddress.ip_network("172.16.0.0/12"),
                                                               ip("10.0.0.254")),)),
                 S2: SubnetSpec(S2, N2, ipaddress.ip_network("192.168.5.0/24"), None, False)},
        ports={p.id: p for p in ports},
        dhcp_networks=frozenset({N1}),
        hosts={HostName("h1"): HostSpec(HostName("h1"), ip("198.18.0.1")),
               HostName("h2"): HostSpec(HostName("h2"), ip("198.18.0.2"))},
    )


def test_host_state_golden() -> None:
    state = compile_host(snapshot(), "h1", "198.18.0.1", {"physnet1": "eth1"})
    assert [(b.name, b.mtu, b.uplink) for b in state.bridges] == [
        ("brq11111111-11", 1450, "vxlan-101"), ("brq22222222-22", 1500, "eth1")]
    [vx] = state.vxlans
    assert (vx.name, vx.vni, vx.local, vx.flood) == ("vxlan-101", 101, "198.18.0.1", ("198.18.0.2",))
    assert vx.fdb == (("fa:16:3e:00:00:12", "198.18.0.2"),)
    assert [(p.device, p.bridge) for p in state.plugs] == [("tapp1000000-00", "brq11111111-11"),
                                                             ("tapp3000000-00", "brq22222222-22")]
    [link] = state.port_links
    assert (link.device, link.peer, link.namespace) == ("tapd0000000-00", "ns-d0000000-00",
                                                        f"qdhcp-{N1}")
    assert [str(a) for a in link.addresses] == ["10.0.0.2/24"]
    assert state.namespaces == (f"qdhcp-{N1}",) and state.problems == ()


def test_deterministic_under_shuffles() -> None:
    first = compile_host(snapshot(0), "h1", "198.18.0.1", {"physnet1": "eth1"})
    for order in range(1, 20):
        assert compile_host(snapshot(order), "h1", "198.18.0.1", {"physnet1": "eth1"}) == first


def test_unmapped_physnet_and_vlan() -> None:
    state = compile_host(snapshot(), "h1", "198.18.0.1", {})
    assert state.problems and "physnet1" in state.problems[0]
    snap = snapshot()
    vlan = NetworkSpec(N2, NetworkType.VLAN, 42, "physnet1", 1500)
    snap = Snapshot(snap.revision, {**snap.networks, N2: vlan}, snap.subnets, snap.ports, snap.dhcp_networks,
                    snap.hosts)
    state = compile_host(snap, "h1", "198.18.0.1", {"physnet1": "eth1"})
    assert [(v.name, v.parent, v.vid) for v in state.vlans] == [("eth1.42", "eth1", 42)]
    assert state.bridges[1].uplink == "eth1.42"


def test_dnsmasq_files_golden() -> None:
    [spec] = compile_dhcp(snapshot(), "h1")
    assert (spec.namespace, spec.interface) == (f"qdhcp-{N1}", "ns-d0000000-00")
    files = render_dnsmasq(spec)
    # No tag in the hosts file (dnsmasq 2.90 crashes reloading one): the port's tag is on the command line.
    assert files.argv_tail == ("--dhcp-range=set:saaaaaaaa00000000,10.0.0.0,static,255.255.255.0,86400s",
                               "--dhcp-mac=set:pp100000000000000,fa:16:3e:00:00:11")
    assert files.hosts == (
        "fa:16:3e:00:00:11,10.0.0.11,host-10-0-0-11,86400s\n"
        "fa:16:3e:00:00:12,10.0.0.12,host-10-0-0-12,86400s\n")
    opts = files.opts.splitlines()
    assert "tag:saaaaaaaa00000000,option:router,10.0.0.1" in opts
    assert "tag:saaaaaaaa00000000,option:dns-server,10.0.0.53" in opts
    assert "tag:saaaaaaaa00000000,option:mtu,1450" in opts
    assert ("tag:saaaaaaaa00000000,option:classless-static-route,172.16.0.0/12,10.0.0.254,0.0.0.0/0,10.0.0.1"
            in opts)
    assert "tag:pp100000000000000,option:bootfile-name,pxe.0" in opts
    assert compile_dhcp(snapshot(), "h2") == ()  # h2 is not the DHCP host of N1


def test_gateway_outside_the_subnet_is_reached_on_link() -> None:
    snap = snapshot()
    s1 = snap.subnets[S1]
    outside = SubnetSpec(S1, N1, s1.cidr, ip("10.9.9.1"), True, ())
    snap = Snapshot(snap.revision, snap.networks, {**snap.subnets, S1: outside}, snap.ports, snap.dhcp_networks,
                    snap.hosts)
    [spec] = compile_dhcp(snap, "h1")
    opts = render_dnsmasq(spec).opts.splitlines()
    assert "tag:saaaaaaaa00000000,option:router,10.9.9.1" in opts
    assert ("tag:saaaaaaaa00000000,option:classless-static-route,10.9.9.1/32,0.0.0.0,0.0.0.0/0,10.9.9.1"
            in opts)


def test_admin_down_port_is_plugged_down_and_not_served() -> None:
    snap = snapshot()
    pid = PortId("p1000000-0000-0000-0000-000000000000")
    down = dataclasses.replace(snap.ports[pid], admin_state_up=False)
    snap = dataclasses.replace(snap, ports={**snap.ports, pid: down})
    state = compile_host(snap, "h1", "198.18.0.1", {"physnet1": "eth1"})
    assert {p.device: p.up for p in state.plugs} == {"tapp1000000-00": False, "tapp3000000-00": True}
    [spec] = state.dhcp
    assert "fa:16:3e:00:00:11" not in render_dnsmasq(spec).hosts


def test_tenant_text_with_control_characters_never_reaches_the_options_file() -> None:
    """Whatever the database holds, a newline in an option cannot start a line outside the port's tag."""
    attack = "a.example\noption:classless-static-route,0.0.0.0/1,10.0.0.66,128.0.0.0/1,10.0.0.66"
    snap = snapshot()
    pid = PortId("p1000000-0000-0000-0000-000000000000")
    opts = (ExtraDhcpOpt("domain-name", attack), ExtraDhcpOpt("mtu\nrouter", "1400"),
            ExtraDhcpOpt("bootfile-name", "pxe.0"))
    snap = dataclasses.replace(snap, ports={**snap.ports, pid: dataclasses.replace(snap.ports[pid],
                                                                                  extra_dhcp_opts=opts)})
    [spec] = compile_dhcp(snap, "h1")
    lines = render_dnsmasq(spec).opts.splitlines()
    assert all(line.startswith("tag:") for line in lines)
    assert [line for line in lines if "pp1000" in line] == ["tag:pp100000000000000,option:bootfile-name,pxe.0"]
    assert not any("0.0.0.0/1" in line for line in lines)


def test_ipv6_is_left_out_below_1280() -> None:
    """The kernel refuses IPv6 addresses on a link under 1280 bytes: never ask it to (no EINVAL loop)."""
    snap = snapshot()
    s6 = SubnetId("aaaaaaaa-0000-0000-0000-000000000006")
    dhcp_port = PortId("d0000000-0000-0000-0000-000000000000")
    port6 = dataclasses.replace(snap.ports[dhcp_port], fixed_ips=(
        *snap.ports[dhcp_port].fixed_ips, FixedIp(s6, ip("2001:db8::2"))))
    snap = dataclasses.replace(
        snap, networks={**snap.networks, N1: dataclasses.replace(snap.networks[N1], mtu=1200)},
        subnets={**snap.subnets, s6: SubnetSpec(s6, N1, ipaddress.ip_network("2001:db8::/64"), None, True)},
        ports={**snap.ports, dhcp_port: port6})
    state = compile_host(snap, "h1", "198.18.0.1", {"physnet1": "eth1"})
    [link] = state.port_links
    assert [str(a) for a in link.addresses] == ["10.0.0.2/24"]
    assert any("below 1280" in p for p in state.problems)
    assert not any("2001:db8" in r for r in render_dnsmasq(state.dhcp[0]).argv_tail)
