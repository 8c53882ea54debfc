"""The routes plane against in-memory routing tables: final state equals desired, a second pass makes no
ops, drift is repaired, only our orphans are swept (never a route of another protocol or of another
neutrino), and an idle pass reads nothing."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from neutrino.agent.pipeline import Pipeline
from neutrino.compile.state import HostState, RouteSpec
from neutrino.dataplane import ownership as own
from neutrino.dataplane.routes import RouteAdd, RoutesPlane
from neutrino.errors import KernelError
from tests.unit.fakes import FakeRoutes
from tests.unit.test_agent_wakeups import settings

OWNER = "o1"
NS = "qrouter-r1"
MARK = own.mark(OWNER, own.Creator.AGENT)
P = own.ROUTE_PROTOCOL


def route(ns: str | None, dst: str, device: str, gateway: str | None = None, metric: int = 0) -> RouteSpec:
    return RouteSpec(ns, ipaddress.ip_network(dst), ipaddress.ip_address(gateway) if gateway else None, device,
                     metric)


WANT = HostState(routes=(
    route(NS, "0.0.0.0/0", "qg-1", "203.0.113.1"),
    route(NS, "203.0.113.1/32", "qg-1"),                  # the gateway lies outside qg-1's subnet: on-link
    route(NS, "10.2.0.0/16", "qr-1", "10.0.0.5"),
    route(NS, "2001:db8:9::/48", "qr-1", "2001:db8::5"),  # metric 0 on IPv6 is the kernel's 1024
    route(None, "10.99.0.0/24", "brq1", "192.0.2.9", metric=10),
))
EXPECTED = {
    NS: {("0.0.0.0/0", "203.0.113.1", "qg-1", 0, 254, P), ("203.0.113.1/32", None, "qg-1", 0, 254, P),
         ("10.2.0.0/16", "10.0.0.5", "qr-1", 0, 254, P), ("2001:db8:9::/48", "2001:db8::5", "qr-1", 1024, 254, P)},
    None: {("10.99.0.0/24", "192.0.2.9", "brq1", 10, 254, P)},
}


def plane(tmp_path: Path, kernel: FakeRoutes) -> RoutesPlane:
    records = own.NamespaceRecords(tmp_path)
    for ns in kernel.namespaces():
        records.add(ns)
    return RoutesPlane(kernel, OWNER, records)


def test_converges_then_makes_no_ops(tmp_path: Path) -> None:
    kernel = FakeRoutes([NS])
    p = plane(tmp_path, kernel)
    assert p.sync(WANT).changes == 5
    assert kernel.state() == EXPECTED
    adds = [op.route.destination for op in p.last_ops if isinstance(op, RouteAdd)]
    assert adds.index(ipaddress.ip_network("203.0.113.1/32")) < adds.index(ipaddress.ip_network("0.0.0.0/0"))
    assert p.sync(WANT).changes == 0 and p.last_ops == []
    assert plane(tmp_path, kernel).sync(WANT).changes == 0  # a restarted agent changes nothing


def test_drift_is_repaired(tmp_path: Path) -> None:
    kernel = FakeRoutes([NS])
    p = plane(tmp_path, kernel)
    p.sync(WANT)
    del kernel.ns[NS][(254, ipaddress.ip_network("10.2.0.0/16"), 0)]               # deleted behind our back
    kernel.add(NS, "0.0.0.0/0", "qg-1", "203.0.113.66", protocol=P)                 # changed
    kernel.add(None, "10.99.0.0/24", "eth0", "192.0.2.1", protocol=4, metric=10)   # taken over by a static one
    assert p.sync(WANT).changes == 3
    assert kernel.state() == EXPECTED
    assert p.sync(WANT).changes == 0


def test_only_our_orphans_are_swept(tmp_path: Path) -> None:
    kernel = FakeRoutes([NS, "qdhcp-other"])
    kernel.add(NS, "10.5.0.0/16", "qr-1", "10.0.0.7", protocol=P)        # ours: a namespace with our record
    kernel.add(NS, "10.6.0.0/16", "qr-1", "10.0.0.8", protocol=4)        # static: not ours
    kernel.add(None, "10.7.0.0/16", "brq1", "192.0.2.7", protocol=P)     # ours: out of a link with our mark
    kernel.aliases[(None, "brq1")] = MARK
    kernel.add(None, "10.8.0.0/16", "brq2", "192.0.2.8", protocol=P)     # another neutrino's link
    kernel.aliases[(None, "brq2")] = own.mark("o2", own.Creator.AGENT)
    kernel.add(None, "0.0.0.0/0", "eth0", "192.0.2.1", protocol=3)       # the machine's default route
    p = plane(tmp_path, kernel)
    own.NamespaceRecords(tmp_path).remove("qdhcp-other")
    kernel.add("qdhcp-other", "10.9.0.0/16", "ns-1", "10.0.0.9", protocol=P)  # a namespace of someone else
    assert p.sync(HostState()).changes == 2
    assert kernel.state() == {
        NS: {("10.6.0.0/16", "10.0.0.8", "qr-1", 0, 254, 4)},
        None: {("10.8.0.0/16", "192.0.2.8", "brq2", 0, 254, P), ("0.0.0.0/0", "192.0.2.1", "eth0", 0, 254, 3)},
        "qdhcp-other": {("10.9.0.0/16", "10.0.0.9", "ns-1", 0, 254, P)},
    }


def test_routes_no_longer_desired_go(tmp_path: Path) -> None:
    kernel = FakeRoutes([NS])
    p = RoutesPlane(kernel, OWNER, own.NamespaceRecords(tmp_path))  # no records: only what it made itself
    p.sync(WANT)
    assert p.sync(HostState(routes=WANT.routes[:1])).changes == 4
    assert kernel.state() == {NS: {("0.0.0.0/0", "203.0.113.1", "qg-1", 0, 254, P)}, None: set()}


def test_an_idle_pass_reads_nothing_and_a_failure_brings_the_sweep_back(tmp_path: Path) -> None:
    kernel = FakeRoutes([NS])
    p = plane(tmp_path, kernel)
    p.sync(HostState())
    assert set(kernel.reads) == {(None, P), (NS, P)}  # the first pass sweeps
    kernel.reads.clear()
    assert p.sync(HostState()).changes == 0 and kernel.reads == []
    kernel.fail.add("qr-1")
    with pytest.raises(KernelError, match="injected"):
        p.sync(WANT)
    kernel.fail.clear()
    kernel.reads.clear()
    assert p.sync(WANT).changes == 2  # the two routes out of qr-1
    assert (None, P) in kernel.reads and kernel.state() == EXPECTED
    kernel.reads.clear()
    p.sync(WANT)
    assert set(kernel.reads) == {(None, P), (NS, P)}  # only where its routes are


def test_a_vanished_namespace_takes_its_routes_along(tmp_path: Path) -> None:
    kernel = FakeRoutes([NS])
    p = plane(tmp_path, kernel)
    p.sync(WANT)
    del kernel.ns[NS]
    assert p.sync(HostState(routes=WANT.routes[4:])).changes == 0
    kernel.reads.clear()
    p.sync(HostState(routes=WANT.routes[4:]))
    assert kernel.reads == [(None, P)]


def test_the_pipeline_runs_routes_between_links_and_nft(tmp_path: Path) -> None:
    planes = [p.name for p in Pipeline(settings(tmp_path, 1.0)).planes]
    assert planes == ["nft-host", "links", "sysctls", "routes", "nft", "daemons"]
