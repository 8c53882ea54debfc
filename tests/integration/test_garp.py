"""Gratuitous ARP from a router's gateway device (dataplane/links.py), on the real kernel: every announcement
arrives on the other end of the link as a broadcast ARP request for the address itself from the device's
MAC, and announcing many addresses does not wait for the kernel to release each packet socket (an RCU
grace period per socket, which made a pass with 1,000 new gateways ~20 s longer).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

from neutrino.dataplane import netlink as nl
from neutrino.dataplane.links import CLOSER, ETH_P_ARP, gratuitous_arp
from tests.integration.conftest import PREFIXES

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, packet sockets)")


@pytest.fixture
def link() -> Iterator[tuple[str, str]]:
    """(router-like namespace with qg-test, its peer namespace with peer0)."""
    prefix = f"nt{uuid.uuid4().hex[:6]}"
    PREFIXES.append(prefix)
    ns, peer = f"{prefix}-r", f"{prefix}-p"
    for name in (ns, peer):
        subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "qg-test", "type", "veth", "peer", "name", "peer0", "netns",
                        peer], check=True)
        for name, dev in ((ns, "qg-test"), (peer, "peer0")):
            subprocess.run(["ip", "-n", name, "link", "set", dev, "up"], check=True)
        yield ns, peer
    finally:
        for name in (ns, peer):
            subprocess.run(["ip", "netns", "del", name], check=False)


def test_announcements_arrive_without_waiting_for_socket_release(link: tuple[str, str]) -> None:
    ns, peer = link
    rx = nl._socket_in(peer, lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ARP)))
    with rx:
        rx.bind(("peer0", ETH_P_ARP))
        rx.settimeout(5)
        # What closing a packet socket costs here, synchronously (the kernel's grace period).
        start = time.perf_counter()
        for _ in range(5):
            nl._socket_in(ns, lambda: socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)).close()
        one_close = (time.perf_counter() - start) / 5
        addresses = [ipaddress.IPv4Address("172.24.4.100") + i for i in range(20)]
        start = time.perf_counter()
        for a in addresses:
            gratuitous_arp(ns, "qg-test", a.packed)
        elapsed = time.perf_counter() - start
        mac = bytes.fromhex(subprocess.run(["ip", "netns", "exec", ns, "cat", "/sys/class/net/qg-test/address"],
                                           capture_output=True, text=True, check=True).stdout.strip()
                            .replace(":", ""))
        seen: list[ipaddress.IPv4Address] = []
        while len(seen) < len(addresses):
            frame = rx.recv(2048)
            arp = frame[14:42]
            assert frame[:6] == b"\xff" * 6 and frame[6:12] == mac, frame.hex()
            assert arp[6:8] == b"\x00\x01" and arp[8:14] == mac  # a request, from the device's MAC
            assert arp[14:18] == arp[24:28]  # for the address itself
            seen.append(ipaddress.IPv4Address(arp[14:18]))
    assert seen == addresses
    assert elapsed < len(addresses) * one_close / 4, (elapsed, one_close)
    deadline = time.monotonic() + 10
    while CLOSER.pending() and time.monotonic() < deadline:  # the sockets do get closed
        time.sleep(0.01)
    assert CLOSER.pending() == 0
