"""Security groups compiled (pure): which ports are filtered, what their anti-spoofing and rule chains say,
goldens of both rendered tables, determinism, stable marks, inert rules, and the in-place updates the nft
plane sends for a membership change, a rule change and a port added or removed."""

from __future__ import annotations

import dataclasses
import ipaddress
import random

import pytest

from neutrino.compile import secgroups
from neutrino.compile.l2 import compile_host
from neutrino.compile.nft import NftChain, NftSet, NftTable, render_sync, render_update, structured
from neutrino.compile.secgroups import compile_secgroups, link_local, render_rule
from neutrino.compile.state import HostState, SysctlSpec
from neutrino.dataplane.nft import NftPlane, SyncTable, UpdateTable
from neutrino.intent.model import (
    AddressPair,
    Direction,
    FixedIp,
    HostName,
    NetworkId,
    NetworkSpec,
    NetworkType,
    PortId,
    PortSpec,
    SecurityGroupId,
    SecurityGroupRuleSpec,
    SecurityGroupSpec,
    Snapshot,
    SubnetId,
    SubnetSpec,
)
from tests.unit.test_golden import check
from tests.unit.test_pipeline import FakeNft

ip, net = ipaddress.ip_address, ipaddress.ip_network
N1 = NetworkId("11111111-1111-1111-1111-111111111111")
S4 = SubnetId("51111111-1111-1111-1111-111111111111")
S6 = SubnetId("56666666-1111-1111-1111-111111111111")
WEB = SecurityGroupId("aaaaaaaa-0000-0000-0000-000000000001")
DB = SecurityGroupId("bbbbbbbb-0000-0000-0000-000000000002")
RAW = SecurityGroupId("cccccccc-0000-0000-0000-000000000003")
P1, P2, P3, P4 = (PortId(f"p{n}000000-0000-0000-0000-00000000000{n}") for n in (1, 2, 3, 4))
DHCP = PortId("d1000000-0000-0000-0000-000000000001")
ELSEWHERE = PortId("e1000000-0000-0000-0000-000000000001")
H1 = HostName("h1")


def rule(i: int, d: str, e: int, **kw: object) -> SecurityGroupRuleSpec:
    return SecurityGroupRuleSpec(f"r{i:03d}", Direction(d), e, **kw)  # type: ignore[arg-type]


def port(pid: PortId, mac: str, addrs: tuple[str, ...], groups: tuple[SecurityGroupId, ...] = (),
         secured: bool = True, owner: str = "compute:lab", host: str = "h1",
         pairs: tuple[AddressPair, ...] = ()) -> PortSpec:
    fixed = tuple(FixedIp(S6 if ":" in a else S4, ip(a)) for a in addrs)
    return PortSpec(pid, N1, mac, fixed, owner, "vm", HostName(host), port_security_enabled=secured,
                    security_groups=groups, allowed_address_pairs=pairs)


def snapshot() -> Snapshot:
    """Three filtered ports (web with a v6 address and two address pairs, db, a stateless one), one without
    port security, a DHCP port, and a port of another host that is a member of web."""
    ports = [
        port(P1, "fa:16:3e:00:00:01", ("10.0.0.11", "2001:db8::11"), (WEB,),
             pairs=(AddressPair(net("10.0.0.100/32"), "fa:16:3e:00:00:01"),
                    AddressPair(net("10.0.1.0/28"), "fa:16:3e:aa:bb:cc"))),
        port(P2, "fa:16:3e:00:00:02", ("10.0.0.12",), (DB,)),
        port(P3, "fa:16:3e:00:00:03", ("10.0.0.13",), secured=False),
        port(P4, "fa:16:3e:00:00:04", ("10.0.0.14",), (RAW,)),
        port(DHCP, "fa:16:3e:00:00:05", ("10.0.0.2",), owner="network:dhcp"),
        port(ELSEWHERE, "fa:16:3e:00:00:06", ("10.0.0.21",), (WEB,), host="h2"),
    ]
    groups = [
        SecurityGroupSpec(WEB, True, (
            rule(1, "ingress", 4, protocol=6, port_min=80, port_max=80),
            rule(2, "ingress", 4, protocol=1, port_min=8),
            rule(3, "ingress", 4, protocol=6, port_min=22, port_max=22, remote_ip_prefix=net("192.0.2.0/24")),
            rule(4, "egress", 4), rule(5, "egress", 6),
            rule(6, "ingress", 6, protocol=58, port_min=128, port_max=0),
            rule(7, "ingress", 4, protocol=6, port_min=5432, port_max=5440, remote_group_id=DB)),
            (net("10.0.0.11/32"), net("10.0.0.21/32"), net("10.0.0.100/32"), net("10.0.1.0/28"),
             net("2001:db8::11/128"))),
        SecurityGroupSpec(DB, True, (
            rule(8, "ingress", 4, protocol=6, port_min=5432, port_max=5432, remote_group_id=WEB),
            rule(9, "egress", 4, remote_group_id=WEB)), (net("10.0.0.12/32"),)),
        SecurityGroupSpec(RAW, False, (
            rule(10, "ingress", 4, protocol=17, port_min=53, port_max=53), rule(11, "egress", 4, protocol=17))),
    ]
    return Snapshot(revision=3, networks={N1: NetworkSpec(N1, NetworkType.VXLAN, 100, None, 1450)},
                    subnets={S4: SubnetSpec(S4, N1, net("10.0.0.0/24"), ip("10.0.0.1"), True),
                             S6: SubnetSpec(S6, N1, net("2001:db8::/64"), ip("2001:db8::1"), True)},
                    ports={p.id: p for p in ports}, dhcp_networks=frozenset({N1}),
                    security_groups={g.id: g for g in groups})


def tables(snap: Snapshot) -> dict[str, NftTable]:
    return {t.family: t for t in compile_secgroups(snap, "h1").tables}


def elements(table: NftTable, name: str) -> tuple[str, ...]:
    return next(s.elements for s in table.sets if s.name == name)


def chain(table: NftTable, name: str) -> tuple[str, ...]:
    return next(c.rules for c in table.chains if c.name == name)


def test_golden_tables() -> None:
    t = tables(snapshot())
    check({"secgroups_bridge.nft": render_sync(t["bridge"], "golden"),
           "secgroups_inet.nft": render_sync(t["inet"], "golden")})


def test_bridges_without_filtered_ports_are_not_tracked() -> None:
    snap = snapshot()
    ext = NetworkId("e2222222-2222-2222-2222-222222222222")
    snap = dataclasses.replace(snap, networks={**snap.networks, ext: NetworkSpec(ext, NetworkType.FLAT, None,
                                                                                "public", 1500)})
    inet = tables(snap)["inet"]
    assert elements(inet, "untracked") == ('"brqe2222222-22"',)
    assert elements(inet, "zones") == ('"brq11111111-11" : 22005',)
    assert chain(inet, "zone") == ("iifname @untracked notrack", "ct zone set iifname map @zones")


def test_only_instance_ports_bound_here_with_port_security_are_filtered() -> None:
    c = compile_secgroups(snapshot(), "h1")
    assert c.ports == (P1, P2, P4)
    assert all(t.namespace is None and t.ports == (P1, P2, P4) for t in c.tables)
    assert set(c.sysctls) == {SysctlSpec(None, "net.bridge.bridge-nf-call-iptables", "1", (P1, P2, P4)),
                              SysctlSpec(None, "net.bridge.bridge-nf-call-ip6tables", "1", (P1, P2, P4))}
    bridge = tables(snapshot())["bridge"]
    assert elements(bridge, "ports") == ('"tapp1000000-00"', '"tapp2000000-00"', '"tapp4000000-00"')
    # The whole host: the filter and br_netfilter are in the one HostState, next to the DHCP port's veth.
    state = compile_host(snapshot(), "h1", "198.18.0.1", {})
    assert {t.family for t in state.nft} == {"bridge", "inet"} and set(c.sysctls) <= set(state.sysctls)
    nobody = dataclasses.replace(snapshot(), ports={k: dataclasses.replace(p, port_security_enabled=False)
                                                    for k, p in snapshot().ports.items()})
    assert compile_secgroups(nobody, "h1") == compile_secgroups(nobody, "h1")
    assert compile_host(nobody, "h1", "198.18.0.1", {}).nft == () and compile_secgroups(nobody, "h1").sysctls == ()


def test_anti_spoofing_binds_addresses_to_macs() -> None:
    assert link_local("fa:16:3e:00:00:01") == ip("fe80::f816:3eff:fe00:1")
    bridge = tables(snapshot())["bridge"]
    tap = '"tapp1000000-00"'
    assert [e for e in elements(bridge, "macs") if e.startswith(tap)] == [
        f"{tap} . fa:16:3e:00:00:01", f"{tap} . fa:16:3e:aa:bb:cc"]  # its own MAC and a pair's
    assert {e for e in elements(bridge, "ipv4") if e.startswith(tap)} == {
        f"{tap} . fa:16:3e:00:00:01 . 10.0.0.11", f"{tap} . fa:16:3e:00:00:01 . 10.0.0.100"}
    assert {e for e in elements(bridge, "ipv4-nets") if e.startswith(tap)} == {
        f"{tap} . fa:16:3e:aa:bb:cc . 10.0.1.0/28"}                 # the pair's CIDR only with the pair's MAC
    assert {e for e in elements(bridge, "ipv6") if e.startswith(tap)} == {
        f"{tap} . fa:16:3e:00:00:01 . 2001:db8::11", f"{tap} . fa:16:3e:00:00:01 . fe80::f816:3eff:fe00:1",
        f"{tap} . fa:16:3e:aa:bb:cc . fe80::f816:3eff:feaa:bbcc"}   # a link-local address per MAC
    assert f"{tap} . 0x20010db8000000000000000000000011" in elements(bridge, "nd-targets")
    ipv4 = chain(bridge, "from-port-ipv4")
    assert ipv4.index("udp sport 67 drop") < ipv4.index("iifname . ether saddr . ip saddr @ipv4 accept") \
        < ipv4.index("iifname . ether saddr . ip saddr @ipv4-nets accept")  # the exact set first (hash)
    declared = {st.name: st.declaration for st in bridge.sets}
    assert "flags interval" not in declared["ipv4"] + declared["ipv6"]
    assert "flags interval" in declared["ipv4-nets"] and "flags interval" in declared["ipv6-nets"]
    assert chain(bridge, "from-port-ipv6")[0] == "icmpv6 type nd-router-advert drop"
    assert chain(bridge, "prerouting")[-1] == "drop"  # anything but ARP, IPv4 and IPv6 from a filtered tap


def test_overlapping_addresses_are_merged_for_interval_sets() -> None:
    snap = snapshot()
    p1 = dataclasses.replace(snap.ports[P1], allowed_address_pairs=(
        AddressPair(net("10.0.0.0/25"), "fa:16:3e:00:00:01"), AddressPair(net("10.0.0.128/25"), "fa:16:3e:00:00:01")))
    web = dataclasses.replace(snap.security_groups[WEB], members=(net("10.0.0.0/24"), net("10.0.0.5/32")))
    snap = dataclasses.replace(snap, ports={**snap.ports, P1: p1}, security_groups={**snap.security_groups, WEB: web})
    t = tables(snap)
    assert [e for e in elements(t["bridge"], "ipv4-nets") if "tapp1" in e] == [
        '"tapp1000000-00" . fa:16:3e:00:00:01 . 10.0.0.0/24']
    assert [e for e in elements(t["bridge"], "ipv4") if "tapp1" in e] == [  # its own address, exact
        '"tapp1000000-00" . fa:16:3e:00:00:01 . 10.0.0.11']
    assert elements(t["inet"], "sg-aaaaaaaa-0000-0000-0000-000000000001-ipv4") == ("10.0.0.0/24",)


def test_a_big_groups_members_changing_keeps_only_its_latest_sets() -> None:
    """Members change far more often than rules: the group's chains are not compiled again, and only the
    latest version of its remote sets is held (an agent compiling after every join of a 5,000-member
    default group must not hold every old set)."""
    snap = snapshot()
    tables(snap)
    rule_compiles = secgroups._group.cache_info().misses
    old_members = snap.security_groups[WEB].members
    for i in range(1, 6):
        web = dataclasses.replace(snap.security_groups[WEB], members=(*old_members, net(f"10.9.0.{i}/32")))
        t = tables(dataclasses.replace(snap, security_groups={**snap.security_groups, WEB: web}))
        assert f"10.9.0.{i}" in elements(t["inet"], "sg-aaaaaaaa-0000-0000-0000-000000000001-ipv4")
    assert secgroups._group.cache_info().misses == rule_compiles
    held = secgroups._REMOTE[WEB]
    assert held[0] == web.members and net("10.9.0.4/32") not in held[0]


@pytest.mark.parametrize(("spec", "rendered"), [
    (rule(1, "ingress", 4, protocol=6, port_min=80, port_max=80),
     "meta nfproto ipv4 meta l4proto 6 th dport 80 accept"),
    (rule(1, "ingress", 4, protocol=17, port_min=1000, port_max=2000),
     "meta nfproto ipv4 meta l4proto 17 th dport 1000-2000 accept"),
    (rule(1, "ingress", 4, protocol=6, port_min=1, port_max=65535),
     "meta nfproto ipv4 meta l4proto 6 th dport 1-65535 accept"),
    (rule(1, "ingress", 4, protocol=6, port_min=0, port_max=65535), "meta nfproto ipv4 meta l4proto 6 accept"),
    (rule(1, "ingress", 4, protocol=1, port_min=8, port_max=0),
     "meta nfproto ipv4 meta l4proto 1 icmp type 8 icmp code 0 accept"),
    (rule(1, "ingress", 6, protocol=58, port_min=128), "meta nfproto ipv6 meta l4proto 58 icmpv6 type 128 accept"),
    (rule(1, "ingress", 4, protocol=47), "meta nfproto ipv4 meta l4proto 47 accept"),
    (rule(1, "egress", 6), "meta nfproto ipv6 accept"),
    (rule(1, "ingress", 4, remote_ip_prefix=net("192.0.2.0/24")), "meta nfproto ipv4 ip saddr 192.0.2.0/24 accept"),
    (rule(1, "egress", 4, remote_ip_prefix=net("192.0.2.0/24")), "meta nfproto ipv4 ip daddr 192.0.2.0/24 accept"),
    (rule(1, "ingress", 4, remote_ip_prefix=net("0.0.0.0/0")), "meta nfproto ipv4 accept"),
    (rule(1, "ingress", 6, protocol=6, remote_group_id=WEB),
     "meta nfproto ipv6 meta l4proto 6 ip6 saddr @sg-aaaaaaaa-0000-0000-0000-000000000001-ipv6 accept"),
])
def test_rules_render(spec: SecurityGroupRuleSpec, rendered: str) -> None:
    assert render_rule(spec) == rendered


def test_inert_rules_are_left_out_and_said() -> None:
    snap = snapshot()
    bad = (rule(20, "ingress", 4, remote_ip_prefix=net("2001:db8::/64")),
           rule(21, "ingress", 4, protocol=6, port_min=90, port_max=80),
           rule(22, "ingress", 4, protocol=1, port_min=300),
           rule(23, "ingress", 5),
           rule(24, "ingress", 4, protocol=300))
    raw = dataclasses.replace(snap.security_groups[RAW], rules=snap.security_groups[RAW].rules + bad)
    c = compile_secgroups(dataclasses.replace(snap, security_groups={**snap.security_groups, RAW: raw}), "h1")
    inet = next(t for t in c.tables if t.family == "inet")
    assert chain(inet, "sg-cccccccc-0000-0000-0000-000000000003-ingress") == (
        "meta nfproto ipv4 meta l4proto 17 th dport 53 accept",)
    assert sorted(p.split(":")[0] for p in c.problems if "rule r02" in p) == [
        f"security group {RAW} rule r02{i}" for i in range(5)]


def test_port_chains_stateful_stateless_and_missing_groups() -> None:
    inet = tables(snapshot())["inet"]
    assert chain(inet, f"port-{P1}-ingress") == (
        "jump stateful-ingress", "jump sg-aaaaaaaa-0000-0000-0000-000000000001-ingress", "drop")
    stateful = chain(inet, "stateful-ingress")
    assert stateful[0] == "ct state established,related accept" and stateful[-1] == "ct state invalid drop"
    assert "meta nfproto ipv4 udp sport 67 udp dport 68 accept" in stateful  # DHCP replies always reach it
    assert chain(inet, f"port-{P4}-egress") == (  # stateless: explicit rules both ways, no conntrack
        "jump stateless-egress", "jump sg-cccccccc-0000-0000-0000-000000000003-egress", "drop")
    assert not any(r.startswith("ct ") for r in chain(inet, "stateless-egress"))
    assert elements(inet, "ingress-ports") and all(" : jump port-" in e for e in elements(inet, "ingress-ports"))
    snap = snapshot()
    lost = dataclasses.replace(snap, security_groups={k: v for k, v in snap.security_groups.items() if k != DB})
    c = compile_secgroups(lost, "h1")
    inet = next(t for t in c.tables if t.family == "inet")
    assert chain(inet, f"sg-{DB}-ingress") == () and any(DB in p for p in c.problems)
    assert elements(inet, f"sg-{DB}-ipv4") == ()  # still declared: web's rule names it
    mixed = dataclasses.replace(snap, ports={**snap.ports, P4: dataclasses.replace(snap.ports[P4],
                                                                                  security_groups=(RAW, DB))})
    c = compile_secgroups(mixed, "h1")
    assert any("mixes stateful and stateless" in p for p in c.problems)
    assert chain(next(t for t in c.tables if t.family == "inet"), f"port-{P4}-egress")[0] == "jump stateful-egress"


def test_same_snapshot_in_any_order_compiles_to_the_same_bytes() -> None:
    snap = snapshot()
    want = compile_secgroups(snap, "h1")
    rng = random.Random(7)
    for _ in range(5):
        ports = list(snap.ports.items())
        groups = [(k, dataclasses.replace(g, rules=tuple(rng.sample(g.rules, len(g.rules)))))
                  for k, g in snap.security_groups.items()]
        rng.shuffle(ports)
        rng.shuffle(groups)
        shuffled = dataclasses.replace(snap, ports=dict(ports), security_groups=dict(groups))
        assert compile_secgroups(shuffled, "h1") == want


def test_marks_and_zones_stay_when_ports_come_and_go() -> None:
    snap = snapshot()
    before = tables(snap)
    extra = PortId("p9000000-0000-0000-0000-000000000009")
    more = dataclasses.replace(snap, ports={**snap.ports,
                                            extra: port(extra, "fa:16:3e:00:00:09", ("10.0.0.19",), (DB,))})
    after = tables(more)
    for name in ("egress-marks", "ingress-marks"):
        assert set(elements(before["bridge"], name)) < set(elements(after["bridge"], name))
    assert elements(before["inet"], "zones") == elements(after["inet"], "zones")
    marks = [e.split(" : ")[1] for e in elements(after["bridge"], "ingress-marks")]
    assert len(set(marks)) == len(marks) and all(int(m, 16) < 0x80000000 for m in marks)


def test_updates_touch_only_what_changed() -> None:
    snap = snapshot()
    old = tables(snap)
    # A member joins web: elements of one set, nothing else.
    web = dataclasses.replace(snap.security_groups[WEB],
                              members=(*snap.security_groups[WEB].members, net("10.0.0.50/32")))
    new = tables(dataclasses.replace(snap, security_groups={**snap.security_groups, WEB: web}))
    assert render_update(old["bridge"], new["bridge"], "o") == ""
    assert render_update(old["inet"], new["inet"], "o") == \
        "add element inet neutrino-o sg-aaaaaaaa-0000-0000-0000-000000000001-ipv4 { 10.0.0.50 }\n"
    # A rule added to db: its chain flushed and filled, nothing else.
    db = dataclasses.replace(snap.security_groups[DB], rules=(*snap.security_groups[DB].rules,
                                                              rule(30, "ingress", 4, protocol=6, port_min=22)))
    script = render_update(old["inet"], tables(dataclasses.replace(
        snap, security_groups={**snap.security_groups, DB: db}))["inet"], "o")
    assert script is not None
    assert script.splitlines() == [f"flush chain inet neutrino-o sg-{DB}-ingress",
                                   f"add rule inet neutrino-o sg-{DB}-ingress " + render_rule(db.rules[0]),
                                   f"add rule inet neutrino-o sg-{DB}-ingress " + render_rule(db.rules[2])]
    # A port removed (the only one in db): its elements deleted, its chains and db's chains flushed, then
    # deleted, then the sets only db's rules named (web's members) -- nothing is deleted while referred to.
    gone = tables(dataclasses.replace(snap, ports={k: v for k, v in snap.ports.items() if k != P2}))
    lines = (render_update(old["inet"], gone["inet"], "o") or "").splitlines()
    kinds = [" ".join(line.split()[:2]) for line in lines]
    assert kinds == sorted(kinds, key=["delete element", "flush chain", "delete chain", "delete set"].index)
    assert f"delete chain inet neutrino-o port-{P2}-egress" in lines
    assert f"delete chain inet neutrino-o sg-{DB}-ingress" in lines
    assert lines[-1] == f"delete set inet neutrino-o sg-{WEB}-ipv6"
    # ... and added back: chains declared before the map elements that jump to them.
    lines = (render_update(gone["inet"], old["inet"], "o") or "").splitlines()
    assert lines[0].startswith("add chain")
    assert any(line.startswith("add element inet neutrino-o egress-ports") for line in lines)
    bridge = (render_update(gone["bridge"], old["bridge"], "o") or "").splitlines()
    assert bridge and all(line.startswith("add element") for line in bridge)
    # What cannot change in place: the caller syncs the table whole.
    other = structured(None, "inet", (NftSet("zones", ("type ipv4_addr",)),), ())
    assert render_update(old["inet"], other, "o") is None
    hooked = structured(None, "inet", (), (NftChain("egress", (), "type filter hook input priority 0;"),))
    assert render_update(old["inet"], hooked, "o") is None
    assert render_update(NftTable(None, "inet", "chain x {\n}\n"), old["inet"], "o") is None


def test_the_plane_updates_in_place_in_one_transaction_per_namespace() -> None:
    nft = FakeNft()
    plane = NftPlane("me", nft, scope="host")
    snap = snapshot()
    first = HostState(nft=compile_secgroups(snap, "h1").tables)
    assert plane.sync(first).ready == {P1, P2, P4} and len(nft.scripts) == 1  # both tables, one transaction
    gone = dataclasses.replace(snap, ports={k: v for k, v in snap.ports.items() if k != P2})
    want = HostState(nft=compile_secgroups(gone, "h1").tables)
    ops = plane.diff(want, plane.observe(want))
    assert [type(op) for op in ops] == [UpdateTable, UpdateTable]
    result = plane.sync(want)
    assert result.changes == 2 and result.ready == {P1, P4} and len(nft.scripts) == 2
    assert "delete table" not in nft.scripts[-1] and "delete element bridge neutrino-me ports" in nft.scripts[-1]
    nft.store[(None, "inet", "neutrino-me")] = "edited"  # drift: the table is set whole again
    assert [type(op) for op in plane.diff(want, plane.observe(want))] == [SyncTable]
    # The host plane leaves other namespaces' tables to the other plane.
    router = NftTable("qrouter-1", "ip", "chain x {\n}\n", (P3,))
    assert plane.names(HostState(nft=(*want.nft, router))) == {P1, P4}
    assert NftPlane("me", nft, scope="namespaces").names(HostState(nft=(*want.nft, router))) == {P3}
