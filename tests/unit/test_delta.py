"""intent/delta.py: a snapshot sent without the networks the agent keeps, and merged back."""

from __future__ import annotations

import ipaddress

from neutrino.intent.delta import merge, port_networks, without
from neutrino.intent.model import (
    FixedIp,
    HostName,
    NetworkId,
    NetworkSpec,
    NetworkType,
    PortId,
    PortSpec,
    Snapshot,
    SubnetId,
    SubnetSpec,
)

HOST = "h1"


def snap(revision: int, ports: dict[str, list[str | None]], dhcp: tuple[str, ...] = ()) -> Snapshot:
    """Networks by name with their ports' hosts (None: unbound); a /24 and one address per port."""
    networks, subnets, out = {}, {}, {}
    for i, (name, hosts) in enumerate(sorted(ports.items())):
        n, s = NetworkId(f"net-{name}"), SubnetId(f"sub-{name}")
        networks[n] = NetworkSpec(n, NetworkType.VXLAN, 100 + i, None, 1450)
        cidr = ipaddress.ip_network(f"10.{i}.0.0/24")
        subnets[s] = SubnetSpec(s, n, cidr, cidr[1], True)
        for j, h in enumerate(hosts):
            p = PortId(f"port-{name}-{j}-r{revision}")
            out[p] = PortSpec(p, n, f"fa:16:3e:00:{i:02x}:{j:02x}", (FixedIp(s, cidr[10 + j]),), "compute:x",
                              "vm", HostName(h) if h else None)
    return Snapshot(revision=revision, networks=networks, subnets=subnets, ports=out,
                    dhcp_networks=frozenset(NetworkId(f"net-{d}") for d in dhcp))


def test_port_networks_are_the_dhcp_ones_and_those_with_a_port_bound_here() -> None:
    s = snap(1, {"a": [HOST, "h2"], "b": ["h2"], "c": [None]}, dhcp=("c",))
    assert port_networks(s, HOST) == {"net-a", "net-c"}


def test_without_then_merge_gives_the_whole_back_with_the_kept_pieces_from_the_base() -> None:
    base = snap(1, {"a": [HOST], "b": [HOST, "h2"], "c": [HOST]})
    now = snap(2, {"a": [HOST, "h3"], "b": [HOST, "h2"], "c": [HOST]})
    kept = [NetworkId("net-b"), NetworkId("net-c")]
    wire = without(now, kept)
    assert set(wire.networks) == {"net-a"} and {p.network_id for p in wire.ports.values()} == {"net-a"}
    assert set(wire.subnets) == {"sub-a"}
    merged = merge(base, wire, kept, HOST)
    assert merged is not None and merged.revision == 2
    assert merged.networks == now.networks and merged.subnets == now.subnets
    # a's ports are the new ones; b's and c's are the base's very objects (what the agent held)
    assert {p for p in merged.ports if p.startswith("port-a")} == {p for p in now.ports if p.startswith("port-a")}
    assert all(merged.ports[p] is base.ports[p] for p in base.ports if not p.startswith("port-a"))
    assert without(now, []) is now and merge(base, now, [], HOST) is now


def test_merge_refuses_a_kept_network_the_base_lacks_or_holds_only_in_part() -> None:
    base = snap(1, {"a": [HOST], "r": ["h2"]})  # r: only a router's ports, say -- no port of this host on it
    now = snap(2, {"a": [HOST], "r": ["h2", HOST]})
    for name, mergeable in (("net-r", False), ("net-x", False), ("net-a", True)):
        kept = [NetworkId(name)]
        assert (merge(base, without(now, kept), kept, HOST) is not None) is mergeable, name
