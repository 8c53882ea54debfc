"""The plain-socket writer (dataplane/netlink.py ``Writer`` behind ``set_link``, ``index``, ``delete_link``,
``add_address``, ``delete_address``) does to links what iproute2 shows afterwards, in a throwaway namespace:
master on and off, MTU, up and down, MAC, alias; addresses IPv4 (with broadcast) and IPv6 (no DAD);
errors as KernelError (no such link) or tolerated (already there, already gone), nothing else touched."""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from neutrino.dataplane import netlink as nl
from neutrino.errors import KernelError

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creates a namespace and links (root)")


@pytest.fixture
def namespace() -> Iterator[str]:
    ns = f"ntwrite{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "br0", "type", "bridge"], check=True)
        subprocess.run(["ip", "-n", ns, "link", "add", "qr-a", "type", "veth", "peer", "name", "tap-a"], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)


def show(ns: str, dev: str) -> dict[str, Any]:
    out = subprocess.run(["ip", "-n", ns, "-j", "-d", "addr", "show", "dev", dev], capture_output=True, text=True,
                         check=True).stdout
    return dict(json.loads(out)[0])


def test_link_settings_and_addresses_as_iproute2_sees_them(namespace: str) -> None:
    ns = namespace
    with nl.socket(ns) as sock:
        br = nl.index(sock, "br0")
        assert br is not None and nl.index(sock, "nosuch0") is None
        nl.set_link(sock, "tap-a", ns, master=br, mtu=1400, address="fa:16:3e:00:00:0a", ifalias="neutrino:x:agent")
        nl.set_link(sock, "tap-a", ns, state="up")
        tap = show(ns, "tap-a")
        assert (tap["master"], tap["mtu"], tap["address"], tap["ifalias"]) == ("br0", 1400, "fa:16:3e:00:00:0a",
                                                                               "neutrino:x:agent")
        assert "UP" in tap["flags"]
        before = show(ns, "qr-a")  # the other end is untouched
        idx = nl.index(sock, "qr-a")
        assert idx is not None
        for addr in ("10.9.0.1/24", "2001:db8:9::1/64"):
            nl.add_address(sock, idx, ipaddress.ip_interface(addr), "qr-a", ns)
            nl.add_address(sock, idx, ipaddress.ip_interface(addr), "qr-a", ns)  # already there: fine
        found = {(a["local"], a["prefixlen"]): a for a in show(ns, "qr-a")["addr_info"]}
        assert found[("10.9.0.1", 24)]["broadcast"] == "10.9.0.255"
        assert not found[("2001:db8:9::1", 64)].get("tentative") and found[("2001:db8:9::1", 64)].get("nodad")
        assert show(ns, "qr-a")["mtu"] == before["mtu"] and "UP" not in show(ns, "qr-a")["flags"]
        nl.delete_address(sock, idx, ipaddress.ip_interface("10.9.0.1/24"), "qr-a", ns)
        nl.delete_address(sock, idx, ipaddress.ip_interface("10.9.0.1/24"), "qr-a", ns)  # gone already: fine
        assert {a["local"] for a in show(ns, "qr-a")["addr_info"]} >= {"2001:db8:9::1"}
        assert "10.9.0.1" not in {a["local"] for a in show(ns, "qr-a")["addr_info"]}
        nl.set_link(sock, "tap-a", ns, master=None, state="down")  # off its bridge (as pyroute2 took None)
        tap = show(ns, "tap-a")
        assert "master" not in tap and "UP" not in tap["flags"]
        with pytest.raises(KernelError, match="no such link"):
            nl.set_link(sock, "nosuch0", ns, state="up")
        with pytest.raises(KernelError, match="failed"):
            nl.set_link(sock, "tap-a", ns, mtu=10)  # below what the device takes
        with pytest.raises(TypeError):
            nl.set_link(sock, "tap-a", ns, colour="blue")
        nl.delete_link(sock, "tap-a", ns)
        nl.delete_link(sock, "tap-a", ns)  # gone already (the pair went with it): fine
        assert nl.index(sock, "qr-a") is None
        # What pyroute2 still does, through the same object.
        nl.add_veth(sock, "v0", "v1", None, 1450)
        assert show(ns, "v1")["mtu"] == 1450
