"""The observation reader (plain netlink socket, own parser) sees what pyroute2's full decoding sees."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from neutrino.dataplane import netlink as nl

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="creates a namespace and links (root)")


@pytest.fixture
def namespace() -> Iterator[str]:
    ns = f"ntread{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)


def test_reader_matches_pyroute2(namespace: str) -> None:
    script = """
link set lo up
link add ul0 type veth peer name ul1
addr add 198.18.5.1/24 dev ul0
link set ul0 up
link add brqtest type bridge
link set brqtest mtu 1400 up
link add vxlan-77 type vxlan id 77 local 198.18.5.1 dev ul0 dstport 4789
link set vxlan-77 master brqtest up
link add tapa type veth peer name tapb
link set tapa master brqtest address fa:16:3e:00:00:01 up
addr add 10.9.0.5/24 dev tapb
addr add 2001:db8::5/64 dev tapb nodad
link set tapb up
link set brqtest alias neutrino:abc:agent
"""
    subprocess.run(["ip", "-n", namespace, "-batch", "-"], input=script, text=True, check=True)
    for mac, dst in (("00:00:00:00:00:00", "198.18.5.2"), ("fa:16:3e:00:00:09", "198.18.5.3")):
        subprocess.run(["bridge", "-n", namespace, "fdb", "append", mac, "dev", "vxlan-77", "dst", dst], check=True)
    # a learned-like (non-permanent) entry: not ours
    subprocess.run(["bridge", "-n", namespace, "fdb", "add", "fa:16:3e:00:00:0a", "dev", "vxlan-77", "dst",
                    "198.18.5.4", "dynamic"], check=True)
    with nl.socket(namespace) as sock, nl.reader(namespace) as reader:
        assert sorted(reader.links(), key=lambda x: x.index) == sorted(nl.links(sock), key=lambda x: x.index)
        assert sorted(reader.addresses(), key=str) == sorted(nl.addresses(sock), key=str)
        vx = next(link for link in reader.links() if link.name == "vxlan-77")
        assert (vx.kind, vx.vni, vx.local, vx.mtu) == ("vxlan", 77, "198.18.5.1", 1450)
        assert reader.fdb({vx.index}) == {vx.index: {("00:00:00:00:00:00", "198.18.5.2"),
                                                     ("fa:16:3e:00:00:09", "198.18.5.3")}}
        assert reader.fdb(set()) == {}
        assert {link.name: link.alias for link in reader.links()}["brqtest"] == "neutrino:abc:agent"
        nl.set_link(sock, "tapa", namespace, ifalias="neutrino:abc:lab")  # written by the plain-socket writer
        assert {link.name: link.alias for link in reader.links()}["tapa"] == "neutrino:abc:lab"


def test_fdb_of_many_vxlan_devices_is_one_dump_with_the_same_entries(namespace: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Past FDB_PER_DEVICE devices the reader dumps the whole FDB once and keeps the devices asked for: the
    same entries as one dump per device, learned ones and other devices' left out."""
    script = ["link add ul0 type veth peer name ul1", "addr add 198.18.6.1/24 dev ul0", "link set ul0 up"]
    for i in range(nl.FDB_PER_DEVICE + 4):
        script += [f"link add br{i} type bridge", f"link add vxlan-{i} type vxlan id {100 + i} local 198.18.6.1 "
                   "dstport 4789", f"link set vxlan-{i} master br{i} up", f"link set br{i} up"]
    subprocess.run(["ip", "-n", namespace, "-batch", "-"], input="\n".join(script) + "\n", text=True, check=True)
    fdb = [f"fdb append 00:00:00:00:00:00 dev vxlan-{i} dst 198.18.6.{10 + i}" for i in range(0, 20, 3)]
    fdb += ["fdb append fa:16:3e:00:00:01 dev vxlan-3 dst 198.18.6.99",
            "fdb add fa:16:3e:00:00:02 dev vxlan-3 dst 198.18.6.98 dynamic"]
    subprocess.run(["bridge", "-n", namespace, "-batch", "-"], input="\n".join(fdb) + "\n", text=True, check=True)
    with nl.reader(namespace) as reader:
        vx = {link.index for link in reader.links() if link.kind == "vxlan"}
        asked = vx - {min(vx)}  # one device not asked for: its entries stay out
        assert len(asked) > nl.FDB_PER_DEVICE
        whole = reader.fdb(asked)
        monkeypatch.setattr(nl, "FDB_PER_DEVICE", 1000)
        assert reader.fdb(asked) == whole  # one dump per device: the same
    names = {link.index: link.name for link in nl_links(namespace)}
    seen = {names[i]: entries for i, entries in whole.items() if entries}
    assert seen["vxlan-3"] == {("00:00:00:00:00:00", "198.18.6.13"), ("fa:16:3e:00:00:01", "198.18.6.99")}
    assert set(seen) == {f"vxlan-{i}" for i in range(0, 20, 3)} - {names[min(vx)]}


def nl_links(namespace: str) -> list[nl.LinkState]:
    with nl.reader(namespace) as reader:
        return reader.links()
