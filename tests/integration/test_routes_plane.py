"""The routes plane on a real kernel, in a throwaway namespace: it makes the desired routes (on-link route
to a gateway outside the subnet first), makes nothing the second time, repairs a route deleted behind its
back, takes over a desired route held by another protocol, and its cleanup leaves foreign routes alone."""

from __future__ import annotations

import ipaddress
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from neutrino.compile.state import HostState, RouteSpec
from neutrino.dataplane import ownership as own
from neutrino.dataplane.routes import NetlinkRoutes, RoutesPlane

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, links, routes)")
P = own.ROUTE_PROTOCOL


@pytest.fixture
def netns() -> Iterator[str]:
    ns = f"ntrt{os.getpid()}"
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        script = """
link set lo up
link add qg-test type veth peer name qg-peer
addr add 198.18.8.1/24 dev qg-test
addr add 2001:db8:8::1/64 dev qg-test nodad
link set qg-test up
link set qg-peer up
"""
        subprocess.run(["ip", "-n", ns, "-batch", "-"], input=script, text=True, check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def ip_route(ns: str, *args: str) -> list[str]:
    done = subprocess.run(["ip", "-n", ns, *args], capture_output=True, text=True, check=True)
    return sorted(" ".join(line.split()) for line in done.stdout.splitlines())


def spec(ns: str, dst: str, gateway: str | None) -> RouteSpec:
    return RouteSpec(ns, ipaddress.ip_network(dst), ipaddress.ip_address(gateway) if gateway else None, "qg-test")


def test_routes_plane_on_a_real_kernel(netns: str, tmp_path: Path) -> None:
    records = own.NamespaceRecords(tmp_path)
    records.add(netns)  # as the link plane records the namespaces it makes
    want = HostState(routes=(
        spec(netns, "0.0.0.0/0", "203.0.113.1"),      # via a gateway outside qg-test's subnet...
        spec(netns, "203.0.113.1/32", None),          # ...reached on-link
        spec(netns, "10.80.0.0/16", "198.18.8.2"),
        spec(netns, "2001:db8:80::/48", "2001:db8:8::2"),
    ))
    subprocess.run(["ip", "-n", netns, "route", "add", "10.81.0.0/16", "via", "198.18.8.3", "proto", "static"],
                   check=True)                        # foreign: must survive everything
    subprocess.run(["ip", "-n", netns, "route", "add", "10.80.0.0/16", "via", "198.18.8.9", "proto", "static"],
                   check=True)                        # a desired destination held by a static route: replaced
    plane = RoutesPlane(NetlinkRoutes(), "o1", records)
    assert plane.sync(want).changes == 4
    ours = ip_route(netns, "route", "show", "proto", str(P))
    assert ours == sorted(["default via 203.0.113.1 dev qg-test", "203.0.113.1 dev qg-test scope link",
                           "10.80.0.0/16 via 198.18.8.2 dev qg-test"])
    assert ip_route(netns, "-6", "route", "show", "proto", str(P)) == [
        "2001:db8:80::/48 via 2001:db8:8::2 dev qg-test metric 1024 pref medium"]
    assert plane.sync(want).changes == 0
    assert RoutesPlane(NetlinkRoutes(), "o1", records).sync(want).changes == 0  # restarted: nothing to do

    subprocess.run(["ip", "-n", netns, "route", "del", "default"], check=True)  # behind its back
    assert plane.sync(want).changes == 1
    assert ip_route(netns, "route", "show", "proto", str(P)) == ours

    assert RoutesPlane(NetlinkRoutes(), "o1", records).sync(HostState()).changes == 4  # cleanup, fresh memory
    assert ip_route(netns, "route", "show", "proto", str(P)) == []
    assert ip_route(netns, "-6", "route", "show", "proto", str(P)) == []
    assert ip_route(netns, "route", "show", "proto", "static") == ["10.81.0.0/16 via 198.18.8.3 dev qg-test"]
