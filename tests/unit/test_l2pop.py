"""VXLAN forwarding from port bindings (compile/l2.vxlan_forwarding, the l2population idea): each host's
FDB sends unicast for a remote port's MACs (its own and its address pairs') straight to that port's host,
and broadcast only to the live hosts with a port on the network. Golden: tests/unit/golden/l2pop_vxlans.json.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import random

from neutrino.compile.l2 import compile_host, vxlan_forwarding
from neutrino.intent.model import (
    AddressPair,
    HostName,
    HostSpec,
    NetworkId,
    NetworkSpec,
    NetworkType,
    PortId,
    PortSpec,
    Snapshot,
)
from tests.unit.test_golden import check, plain

N1, N2, N3 = (NetworkId(f"{d * 8}-{d * 4}-{d * 4}-{d * 4}-{d * 12}") for d in "abc")
TUNNEL = {"h1": "198.18.0.1", "h2": "198.18.0.2", "h3": "198.18.0.3"}  # h4: its agent is dead


def vm(n: int, net: NetworkId, host: str | None, pairs: tuple[str, ...] = (), owner: str = "compute:nova") -> PortSpec:
    return PortSpec(PortId(f"p{n:07d}-0000-0000-0000-000000000000"), net, f"fa:16:3e:00:00:{n:02x}", (), owner, "",
                    HostName(host) if host else None,
                    allowed_address_pairs=tuple(AddressPair(ipaddress.ip_network(f"10.9.0.{i + 1}/32"), mac)
                                                for i, mac in enumerate(pairs)))


def snapshot(order: int = 0) -> Snapshot:
    ports = [
        vm(0x11, N1, "h1", ("fa:16:3e:00:00:aa",)),          # local, with a MAC of its own in a pair
        vm(0x01, N1, "h2", owner="network:dhcp"),            # h2 serves N1's DHCP
        vm(0x12, N1, "h2", ("fa:16:3e:00:00:bb", "fa:16:3e:00:00:12")),  # a VIP MAC, and its own MAC again
        vm(0x13, N1, "h3", ("FA:16:3E:00:00:BB",)),          # the same VIP MAC on another host
        vm(0x16, N1, "h3", ("fa:16:3e:00:00:aa",)),          # claims a MAC that is also local
        vm(0x14, N1, "h4"),                                  # on a host whose agent is dead
        vm(0x15, N1, None),                                  # unbound
        vm(0x21, N2, "h1"),
        vm(0x23, N2, "h3"),
        vm(0x32, N3, "h2"),                                  # h1 has no port on N3
        vm(0x33, N3, "h3"),
    ]
    random.Random(order).shuffle(ports)
    hosts = list(TUNNEL.items())
    random.Random(order).shuffle(hosts)
    return Snapshot(
        revision=9,
        networks={n: NetworkSpec(n, NetworkType.VXLAN, vni, None, 1450)
                  for n, vni in ((N1, 101), (N2, 102), (N3, 103))},
        ports={p.id: p for p in ports},
        hosts={HostName(h): HostSpec(HostName(h), ipaddress.ip_address(ip)) for h, ip in hosts},
    )


def vxlans(host: str, order: int = 0) -> str:
    state = compile_host(snapshot(order), host, TUNNEL[host], {})
    return json.dumps(plain(state.vxlans), indent=1, sort_keys=True) + "\n"


def test_l2pop_golden() -> None:
    check({"l2pop_vxlans.json": "".join(f"# {h}\n{vxlans(h)}" for h in ("h1", "h2", "h3"))})


def test_unicast_goes_straight_to_the_ports_host_and_broadcast_only_to_hosts_of_the_network() -> None:
    state = compile_host(snapshot(), "h1", TUNNEL["h1"], {})
    by_vni = {vx.vni: vx for vx in state.vxlans}
    assert sorted(by_vni) == [101, 102]  # no VXLAN device for N3: nothing of h1 is on it
    n1 = by_vni[101]
    assert n1.flood == ("198.18.0.2", "198.18.0.3")  # h4's agent is dead: not flooded to
    assert dict(n1.fdb) == {
        "fa:16:3e:00:00:01": "198.18.0.2",  # the DHCP port on h2
        "fa:16:3e:00:00:12": "198.18.0.2",
        "fa:16:3e:00:00:13": "198.18.0.3",
        "fa:16:3e:00:00:16": "198.18.0.3",
    }  # not: the VIP MAC :bb (on h2 and h3), :aa (also local), :14 (dead host), :15 (unbound)
    assert by_vni[102].flood == ("198.18.0.3",) and by_vni[102].fdb == (("fa:16:3e:00:00:23", "198.18.0.3"),)


def test_an_address_pair_mac_on_one_host_is_forwarded_there() -> None:
    snap = snapshot()
    lone = vm(0x17, N1, "h3", ("fa:16:3e:00:00:cc",))
    snap = dataclasses.replace(snap, ports={**snap.ports, lone.id: lone})
    flood, fdb = vxlan_forwarding(snap, "h1", TUNNEL["h1"], [p for p in snap.ports.values() if p.network_id == N1])
    assert ("fa:16:3e:00:00:cc", "198.18.0.3") in fdb and "198.18.0.3" in flood


def test_entries_follow_the_bindings() -> None:
    """A port bound to h3 adds h3 to N2's flood list on h1 and its MAC to the FDB; unbinding removes both;
    the last port of h3 on the network going takes h3 out of the flood list."""
    snap = snapshot()
    ports = [p for p in snap.ports.values() if p.network_id == N2]
    assert vxlan_forwarding(snap, "h1", TUNNEL["h1"], ports) == (("198.18.0.3",), (("fa:16:3e:00:00:23",
                                                                                     "198.18.0.3"),))
    unbound = [dataclasses.replace(p, host=None) if p.host == "h3" else p for p in ports]
    assert vxlan_forwarding(snap, "h1", TUNNEL["h1"], unbound) == ((), ())


def test_deterministic_under_shuffles() -> None:
    assert len({vxlans("h2", order) for order in range(6)}) == 1
