"""The route reader (plain netlink socket, own parser) sees what pyroute2's full decoding sees, and its
protocol filter (a strict dump: the kernel filters) returns exactly the routes with that protocol."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import time
from collections.abc import Iterator

import pytest

from neutrino.dataplane import netlink as nl
from neutrino.dataplane.ownership import ROUTE_PROTOCOL

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creates a namespace and links (root)")


@pytest.fixture
def namespace() -> Iterator[str]:
    ns = f"ntroute{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)


def test_route_reader_matches_pyroute2(namespace: str) -> None:
    script = f"""
link set lo up
link add v0 type veth peer name v1
addr add 198.18.6.1/24 dev v0
addr add 2001:db8:6::1/64 dev v0 nodad
link set v0 up
link set v1 up
route add 10.60.0.0/16 via 198.18.6.2 dev v0 proto static metric 7
route add 203.0.113.1/32 dev v0 scope link proto {ROUTE_PROTOCOL}
route add default via 203.0.113.1 dev v0 proto {ROUTE_PROTOCOL}
route add 10.61.0.0/16 via 198.18.6.3 dev v0 table 1000 proto {ROUTE_PROTOCOL}
route add blackhole 10.62.0.0/16
route add 2001:db8:60::/48 via 2001:db8:6::2 dev v0 proto {ROUTE_PROTOCOL}
"""
    subprocess.run(["ip", "-n", namespace, "-batch", "-"], input=script, text=True, check=True)
    with nl.socket(namespace) as sock, nl.reader(namespace) as reader:
        # The kernel adds IPv6 link-local and multicast routes on its own a moment after a link comes up:
        # the two readers are compared on a settled table (two reads in a row that agree).
        deadline = time.monotonic() + 5
        while True:
            found = reader.routes()
            if sorted(found, key=str) == sorted(nl.routes(sock), key=str) == sorted(reader.routes(), key=str):
                break
            assert time.monotonic() < deadline, (sorted(found, key=str), sorted(nl.routes(sock), key=str))
            time.sleep(0.05)
        ours = reader.routes(ROUTE_PROTOCOL)
        assert sorted(ours, key=str) == sorted((r for r in found if r.protocol == ROUTE_PROTOCOL), key=str)
        assert {(str(r.destination), str(r.gateway), r.table, r.metric) for r in ours} == {
            ("203.0.113.1/32", "None", 254, 0), ("0.0.0.0/0", "203.0.113.1", 254, 0),
            ("10.61.0.0/16", "198.18.6.3", 1000, 0), ("2001:db8:60::/48", "2001:db8:6::2", 254, 1024)}
        static = next(r for r in found if r.destination == ipaddress.ip_network("10.60.0.0/16"))
        assert (static.protocol, static.metric, static.kind) == (4, 7, 1)
        assert next(r for r in found if r.destination == ipaddress.ip_network("10.62.0.0/16")).oif is None
        idx = nl.index(sock, "v0")
        assert idx is not None
        nl.replace_route(sock, ipaddress.ip_network("10.60.0.0/16"), ipaddress.ip_address("198.18.6.4"), idx, 7, 254,
                         ROUTE_PROTOCOL, "v0", namespace)  # takes the static route's place
        taken = next(r for r in reader.routes(ROUTE_PROTOCOL) if r.destination == static.destination)
        assert (str(taken.gateway), taken.oif, taken.metric) == ("198.18.6.4", idx, 7)
        nl.delete_route(sock, static.destination, 7, 254, ROUTE_PROTOCOL, "v0", namespace)
        nl.delete_route(sock, static.destination, 7, 254, ROUTE_PROTOCOL, "v0", namespace)  # gone: no error
        assert static.destination not in {r.destination for r in reader.routes()}
