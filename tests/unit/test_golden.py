"""Goldens: the whole HostState and the exact bytes of every daemon file, compared with tests/unit/golden/.

A change of compile output must show as a diff of these files in review. Regenerate deliberately with
``NEUTRINO_REGENERATE_GOLDEN=1`` (the test then fails once, saying what it wrote): never silently.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import json
import os
from pathlib import Path
from typing import Any

import pytest

from neutrino.compile.l2 import compile_host
from neutrino.compile.state import HostState
from neutrino.intent.model import FixedIp, Ipv6Mode, PortId, Snapshot, SubnetId, SubnetSpec
from tests.unit.test_compile import N1, ip, snapshot

GOLDEN = Path(__file__).parent / "golden"
REGENERATE = os.environ.get("NEUTRINO_REGENERATE_GOLDEN") == "1"
S_STATEFUL = SubnetId("61000000-0000-0000-0000-000000000061")  # distinct in their first 16 hex digits:
S_SLAAC = SubnetId("62000000-0000-0000-0000-000000000062")     # those make the dnsmasq tags
S_STATELESS = SubnetId("63000000-0000-0000-0000-000000000063")


def dual_stack() -> Snapshot:
    """test_compile's snapshot with three IPv6 subnets on N1: DHCPv6 stateful, SLAAC, stateless."""
    snap = snapshot()
    v6 = {
        S_STATEFUL: SubnetSpec(S_STATEFUL, N1, ipaddress.ip_network("2001:db8:1::/64"), ip("2001:db8:1::1"), True,
                               (ip("2001:db8:1::53"),), (), Ipv6Mode.DHCPV6_STATEFUL, Ipv6Mode.DHCPV6_STATEFUL),
        S_SLAAC: SubnetSpec(S_SLAAC, N1, ipaddress.ip_network("2001:db8:2::/64"), ip("2001:db8:2::1"), True,
                            (), (), Ipv6Mode.SLAAC, Ipv6Mode.SLAAC),
        S_STATELESS: SubnetSpec(S_STATELESS, N1, ipaddress.ip_network("2001:db8:3::/64"), ip("2001:db8:3::1"),
                                True, (ip("2001:db8:3::53"),), (), Ipv6Mode.DHCPV6_STATELESS,
                                Ipv6Mode.DHCPV6_STATELESS),
    }
    ports = dict(snap.ports)
    for pid, addrs in (("d0000000-0000-0000-0000-000000000000", ("2001:db8:1::2", "2001:db8:2::2")),
                       ("p1000000-0000-0000-0000-000000000000", ("2001:db8:1::11", "2001:db8:2::11"))):
        p = ports[PortId(pid)]
        extra = tuple(FixedIp(s, ip(a)) for s, a in zip((S_STATEFUL, S_SLAAC), addrs, strict=True))
        ports[p.id] = dataclasses.replace(p, fixed_ips=(*p.fixed_ips, *extra))
    return dataclasses.replace(snap, subnets={**snap.subnets, **v6}, ports=ports)


def plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple | list):
        return [plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def check(files: dict[str, str]) -> None:
    """Compare every file (or, regenerating, write those that differ and fail naming them)."""
    written = []
    for name, actual in files.items():
        path = GOLDEN / name
        if REGENERATE:
            if not path.exists() or path.read_bytes() != actual.encode():
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(actual.encode())
                written.append(name)
            continue
        assert path.exists(), f"no golden {path}: run once with NEUTRINO_REGENERATE_GOLDEN=1 and review it"
        assert actual == path.read_bytes().decode(), f"{name} differs from its golden"
    if written:
        pytest.fail(f"regenerated {', '.join(written)}: review the diff, then run without NEUTRINO_REGENERATE_GOLDEN")


def state() -> HostState:
    return compile_host(dual_stack(), "h1", "198.18.0.1", {"physnet1": "eth1"})


def test_host_state_golden() -> None:
    check({"host_state.json": json.dumps(plain(state()), indent=1, sort_keys=True) + "\n"})


def test_daemon_files_golden() -> None:
    files = {}
    for spec in state().daemons:
        base = f"{spec.kind}-{spec.key}"
        files[f"{base}/argv"] = "".join(f"{a}\n" for a in spec.argv)
        files.update({f"{base}/{name}": text for name, text in spec.files})
    assert files
    check(files)


def test_ipv6_options_and_ra_flags_are_in_the_golden() -> None:
    """What the golden pins, said in words (so a regenerated golden that loses them fails here)."""
    [spec] = state().daemons
    argv = spec.argv
    assert "--enable-ra" in argv and "--ra-param=ns-d0000000-00,10,0" in argv
    assert any(a.startswith("--dhcp-range=set:") and a.endswith(",ra-only,64,86400s") for a in argv)
    assert any(a.endswith(",ra-stateless,64,86400s") for a in argv)
    assert any("2001:db8:1::,static,64" in a for a in argv)
    assert "option6:dns-server,[2001:db8:1::53]" in spec.file("opts")
    assert "[2001:db8:1::11]" in spec.file("hosts") and "2001:db8:2::11" not in spec.file("hosts")
