"""The link plane against an in-memory kernel: converges, stays still, repairs drift, sweeps only its own."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from neutrino.compile.l2 import compile_host
from neutrino.compile.state import HostState
from neutrino.dataplane import links as lk
from neutrino.dataplane import ownership as own
from neutrino.errors import KernelError
from neutrino.intent.model import DeviceOwner, PortId
from tests.unit.fakes import FakeKernel
from tests.unit.test_compile import N1, port, snapshot

OWNER = "me0000000000"
MARK = own.mark(OWNER, own.Creator.AGENT)


def desired(snap_order: int = 0) -> HostState:
    return compile_host(snapshot(snap_order), "h1", "198.18.0.1", {"physnet1": "eth1"})


@pytest.fixture
def kernel() -> FakeKernel:
    k = FakeKernel()
    k.add_link(None, "eth1", up=True)
    k.add_link(None, "tapp1000000-00", "tun")  # instance taps: the hypervisor's
    k.add_link(None, "tapp3000000-00", "tun")
    return k


def plane(kernel: FakeKernel, tmp_path: Path, owner: str = OWNER) -> lk.LinkPlane:
    return lk.LinkPlane(kernel, owner, own.NamespaceRecords(tmp_path / owner))


def test_converges_then_makes_no_ops(kernel: FakeKernel, tmp_path: Path) -> None:
    p, want = plane(kernel, tmp_path), desired()
    result = p.sync(want)
    assert result.changes > 0
    root = kernel.ns[None]
    br1, br2 = root["brq11111111-11"], root["brq22222222-22"]
    assert (br1.alias, br1.mtu, br1.up) == (MARK, 1450, True)
    assert root["vxlan-101"].master == br1.index and root["vxlan-101"].alias == MARK
    assert root["eth1"].master == br2.index and root["eth1"].alias is None  # enslaved, never marked
    assert root["tapp1000000-00"].master == br1.index and root["tapp1000000-00"].alias is None
    ns = f"qdhcp-{N1}"
    assert kernel.ns[ns]["ns-d0000000-00"].alias == MARK and kernel.ns[ns]["ns-d0000000-00"].mac == "fa:16:3e:00:00:01"
    assert {str(a) for a in kernel.addrs[(ns, "ns-d0000000-00")]} == {"10.0.0.2/24"}
    assert kernel.fdb["vxlan-101"] == {("00:00:00:00:00:00", "198.18.0.2"), ("fa:16:3e:00:00:12", "198.18.0.2")}
    assert own.NamespaceRecords(tmp_path / OWNER).names() == {ns}
    assert result.ready == {PortId(p.port_id) for p in want.plugs} | {want.port_links[0].port_id}
    assert result.made >= {(None, "tapd0000000-00"), (ns, "ns-d0000000-00")}
    before = kernel.snapshot()
    assert p.diff(want, p.observe(want)) == []
    assert p.sync(desired(7)).changes == 0  # same state from a shuffled snapshot: nothing to do
    assert kernel.snapshot() == before


def test_drift_is_repaired(kernel: FakeKernel, tmp_path: Path) -> None:
    p, want = plane(kernel, tmp_path), desired()
    p.sync(want)
    converged = kernel.snapshot()
    ns = f"qdhcp-{N1}"
    kernel.delete(None, "brq11111111-11")                 # a bridge deleted (its ports fall out)
    kernel.change(None, "brq22222222-22", mtu=9000)          # an MTU changed
    kernel.addrs[(ns, "ns-d0000000-00")].clear()          # the DHCP address removed
    kernel.fdb["vxlan-101"].add(("fa:16:3e:99:99:99", "198.18.0.9"))  # a stale FDB entry
    kernel.delete(None, "tapd0000000-00")                 # the DHCP veth deleted (both ends)
    result = p.sync(want)
    assert result.changes > 0 and (None, "tapd0000000-00") in result.made
    assert kernel.snapshot() == converged
    assert p.diff(want, p.observe(want)) == []


def test_sweeps_only_what_this_owner_made(kernel: FakeKernel, tmp_path: Path) -> None:
    other = own.mark("other0000000", own.Creator.AGENT)
    kernel.add_link(None, "brqforeign-00", "bridge")                     # a Linux-bridge Neutron agent's
    kernel.add_link(None, "brqother-0000", "bridge", alias=other)        # another neutrino's
    kernel.add_link(None, "tapl0000000-00", "tun", alias=own.mark(OWNER, own.Creator.LAB))  # our lab's tap
    kernel.add_ns("qdhcp-foreign")                                       # not recorded by us
    p = plane(kernel, tmp_path)
    p.sync(desired())
    assert kernel.ns[None]["brqforeign-00"].alias is None
    p.sync(HostState())  # cleanup
    root = kernel.ns[None]
    assert {"brqforeign-00", "brqother-0000", "tapl0000000-00", "eth1", "tapp1000000-00"} <= set(root)
    assert not [n for n, link in root.items() if link.alias == MARK]
    assert kernel.namespaces() == {"qdhcp-foreign"}
    assert own.NamespaceRecords(tmp_path / OWNER).names() == set()
    assert p.diff(HostState(), p.observe(HostState())) == []


def test_replaced_dhcp_port_leaves_no_orphan(kernel: FakeKernel, tmp_path: Path) -> None:
    """A still-served network whose DHCP port is replaced: the old veth (and its address) goes."""
    p = plane(kernel, tmp_path)
    p.sync(desired())
    snap = snapshot()
    old = PortId("d0000000-0000-0000-0000-000000000000")
    ports = {k: v for k, v in snap.ports.items() if k != old}
    new = port("d9000000-0000-0000-0000-000000000000", N1, "fa:16:3e:00:00:09", "10.0.0.3", DeviceOwner.DHCP, "h1")
    snap = dataclasses.replace(snap, ports={**ports, new.id: new})
    want = compile_host(snap, "h1", "198.18.0.1", {"physnet1": "eth1"})
    p.sync(want)
    ns = f"qdhcp-{N1}"
    assert "tapd0000000-00" not in kernel.ns[None] and "ns-d0000000-00" not in kernel.ns[ns]
    assert {str(a) for link, a in ((n, a) for (s, n), addrs in kernel.addrs.items() if s == ns for a in addrs)} \
        == {"10.0.0.3/24"}
    assert p.diff(want, p.observe(want)) == []


def test_unmarked_desired_objects_are_adopted_and_other_owners_refused(kernel: FakeKernel, tmp_path: Path) -> None:
    kernel.add_link(None, "brq11111111-11", "bridge", mtu=1450, up=True)  # made by an older neutrino
    kernel.add_link(None, "brq22222222-22", "bridge", alias=own.mark("other0000000", "agent"))
    p = plane(kernel, tmp_path)
    with pytest.raises(KernelError, match="held by other0000000"):
        p.sync(desired())
    root = kernel.ns[None]
    assert root["brq11111111-11"].alias == MARK
    assert root["brq22222222-22"].alias == own.mark("other0000000", "agent")  # untouched
    assert root["eth1"].master is None and root["tapp3000000-00"].master is None  # nothing plugged into it


def test_failed_op_raises_after_attempting_the_rest(kernel: FakeKernel, tmp_path: Path) -> None:
    kernel.fail.add("vxlan-101")
    p = plane(kernel, tmp_path)
    with pytest.raises(KernelError, match="vxlan-101"):
        p.sync(desired())
    assert "brq22222222-22" in kernel.ns[None] and f"qdhcp-{N1}" in kernel.namespaces()
    kernel.fail.clear()
    p.sync(desired())
    assert p.diff(desired(), p.observe(desired())) == []
