"""A router on a real kernel, through the agent's real pipeline on a hand-built Snapshot (no API): two
internal VXLAN subnets and an external flat network whose physnet is one end of a veth, the other end in an
"upstream" namespace at the external gateway address. Two instance namespaces (veths standing in for the
taps, static addresses, default route via the router): they ping across subnets; an instance's UDP to the
upstream arrives from the gateway address (SNAT); the upstream reaches an instance by its floating IP and
that instance's own traffic leaves from it; the extra route is in place; a restarted pipeline makes 0
changes, sets no nft table again and leaves conntrack alone; a floating IP disassociated is unreachable;
with enable_snat False the upstream sees the instance's own address; an interface removed stops east-west;
cleanup removes the qrouter namespace and its table. The floating IP is announced by gratuitous ARP, and an
IPv6 SLAAC subnet gets router advertisements.

The "host" is itself a throwaway namespace: the pipeline runs in a child process inside it (bridges and
VXLAN devices stay there), the way test_planes_kernel.py runs its planes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import PREFIXES

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, links, nft)")
ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent('''
    import dataclasses, ipaddress, json, subprocess, sys, time
    from pathlib import Path
    from neutrino.agent.loop import AgentSettings
    from neutrino.agent.pipeline import Pipeline, cleanup
    from neutrino.intent.model import (FixedIp, FloatingIpId, FloatingIpSpec, HostName, HostRoute, HostSpec,
                                       Ipv6Mode, NetworkId, NetworkSpec, NetworkType, PortId, PortSpec, RouterId,
                                       RouterSpec, Snapshot, SubnetId, SubnetSpec)

    tmp, tag, rid, i1, i2, up = sys.argv[1:7]
    ip, net = ipaddress.ip_address, ipaddress.ip_network
    def uid(n):
        return f"{tag}{n:02d}0000-0000-0000-0000-000000000000"[:36]
    NA, NB, NX = NetworkId(uid(1)), NetworkId(uid(2)), NetworkId(uid(3))
    SA, SB, SX, SA6 = SubnetId(uid(4)), SubnetId(uid(5)), SubnetId(uid(6)), SubnetId(uid(12))
    QA, QB, QG, P1, P2 = (PortId(uid(n)) for n in (7, 8, 9, 10, 11))
    R = RouterId(rid)
    H = HostName("h1")

    def rport(pid, nw, sub, mac, addr, owner):
        return PortSpec(pid, nw, mac, (FixedIp(sub, ip(addr)),), owner, R, H)

    def inst(pid, nw, sub, mac, addr):
        return PortSpec(pid, nw, mac, (FixedIp(sub, ip(addr)),), "compute:lab", "vm", H)

    def snapshot(fip=True, snat=True, qb=True):
        return Snapshot(
            revision=1,
            networks={NA: NetworkSpec(NA, NetworkType.VXLAN, 701, None, 1450),
                      NB: NetworkSpec(NB, NetworkType.VXLAN, 702, None, 1450),
                      NX: NetworkSpec(NX, NetworkType.FLAT, None, "public", 1500)},
            subnets={SA: SubnetSpec(SA, NA, net("10.71.0.0/24"), ip("10.71.0.1"), False),
                     SB: SubnetSpec(SB, NB, net("10.72.0.0/24"), ip("10.72.0.1"), False),
                     SX: SubnetSpec(SX, NX, net("203.0.113.0/24"), ip("203.0.113.1"), False),
                     SA6: SubnetSpec(SA6, NA, net("2001:db8:71::/64"), ip("2001:db8:71::1"), False,
                                     ipv6_ra_mode=Ipv6Mode.SLAAC, ipv6_address_mode=Ipv6Mode.SLAAC)},
            ports={QA: dataclasses.replace(
                       rport(QA, NA, SA, "fa:16:3e:71:00:01", "10.71.0.1", "network:router_interface"),
                       fixed_ips=(FixedIp(SA, ip("10.71.0.1")), FixedIp(SA6, ip("2001:db8:71::1")))),
                   QB: rport(QB, NB, SB, "fa:16:3e:72:00:01", "10.72.0.1", "network:router_interface"),
                   QG: rport(QG, NX, SX, "fa:16:3e:73:00:01", "203.0.113.10", "network:router_gateway"),
                   P1: inst(P1, NA, SA, "fa:16:3e:71:00:05", "10.71.0.5"),
                   P2: inst(P2, NB, SB, "fa:16:3e:72:00:05", "10.72.0.5")},
            hosts={H: HostSpec(H, ip("198.18.0.1"))},
            routers={R: RouterSpec(R, enable_snat=snat, routes=(HostRoute(net("192.168.77.0/24"), ip("10.72.0.254")),),
                                   floating_ips=(FloatingIpSpec(FloatingIpId("f1"), ip("203.0.113.20"),
                                                                ip("10.71.0.5"), P1),) if fip else ())})

    def sh(*argv, check=True):
        return subprocess.run(argv, capture_output=True, text=True, check=check)

    # Instances: a veth per port, its host end named as the hypervisor's tap, its other end in the instance.
    for ns, port, addr, gw in ((i1, P1, "10.71.0.5/24", "10.71.0.1"), (i2, P2, "10.72.0.5/24", "10.72.0.1")):
        sh("ip", "link", "add", f"tap{port[:11]}", "type", "veth", "peer", "name", "eth0", "netns", ns)
        sh("ip", "link", "set", f"tap{port[:11]}", "up")
        for cmd in (("addr", "add", addr, "dev", "eth0"), ("link", "set", "eth0", "up"),
                    ("route", "add", "default", "via", gw)):
            sh("ip", "-n", ns, *cmd)

    settings = AgentSettings(host="h1", tunnel_ip="198.18.0.1", interface_mappings={"public": "ext0"},
                             state_dir=Path(tmp) / "agent", owner=tag, run_dir=Path(tmp) / "run")
    out = {}
    qr = f"qrouter-{rid}"
    try:
        first = Pipeline(settings).reconcile(snapshot())
        out["first_errors"] = list(first.errors)
        out["wired"] = sorted(first.wired)
        # Right after the pass: the qr- devices' link-local addresses are usable at once (no DAD in our
        # namespaces), so the RA daemon's first advertisements come from them.
        out["link_local"] = sh("ip", "-6", "-n", qr, "-o", "addr", "show", "scope", "link").stdout
        # Before any traffic: the upstream (arp_accept) learnt the floating IP from the router's announcement.
        out["announced"] = sh("ip", "-n", up, "neigh", "show", "203.0.113.20").stdout

        def ping(ns, dst, tries=3):
            """Reachable within ``tries`` pings (one, where unreachability is what is checked)."""
            return any(sh("ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "2", dst, check=False).returncode == 0
                       for _ in range(tries))

        def udp_from(ns, dst):
            """What the upstream's echo saw as the sender's address (three tries)."""
            for _ in range(3):
                seen = udp_once(ns, dst)
                if seen:
                    return seen
            return ""

        def udp_once(ns, dst):
            server = subprocess.Popen(["ip", "netns", "exec", up, sys.executable, "-c",
                                       "import socket\\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\\n"
                                       "s.bind(('203.0.113.1',7777));s.settimeout(5)\\n"
                                       "d,a=s.recvfrom(100);s.sendto(a[0].encode(),a)"])
            try:
                for _ in range(20):
                    if ":7777" in sh("ip", "netns", "exec", up, "ss", "-uln", check=False).stdout:
                        break
                    subprocess.run(["sleep", "0.1"])
                got = sh("ip", "netns", "exec", ns, sys.executable, "-c",
                         "import socket\\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(3)\\n"
                         f"s.sendto(b'x',('{dst}',7777));print(s.recvfrom(100)[0].decode())", check=False)
                return got.stdout.strip()
            finally:
                server.kill()
                server.wait()

        ping(i1, "10.71.0.1"); ping(i2, "10.72.0.1")  # ARP warm-up
        out["east_west"] = ping(i1, "10.72.0.5") and ping(i2, "10.71.0.5")
        out["snat_source"] = udp_from(i2, "203.0.113.1")
        out["fip_source"] = udp_from(i1, "203.0.113.1")
        out["fip_inbound"] = ping(up, "203.0.113.20")
        deadline = time.monotonic() + 10  # SLAAC from the router's advertisements: an address and a default route
        while time.monotonic() < deadline:
            out["ra_route"] = sh("ip", "-6", "-n", i1, "route", "show", "default").stdout
            out["ra_addr"] = sh("ip", "-6", "-n", i1, "addr", "show", "dev", "eth0", "scope", "global").stdout
            if "fe80::" in out["ra_route"] and "2001:db8:71:" in out["ra_addr"]:
                break
            time.sleep(0.2)
        out["routes"] = sh("ip", "-n", qr, "route", "show", "proto", "78").stdout
        out["forwarding"] = sh("ip", "netns", "exec", qr, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip()
        out["table"] = sh("ip", "netns", "exec", qr, "nft", "list", "table", "ip", f"neutrino-{tag}").stdout
        ct_before = sh("ip", "netns", "exec", qr, "conntrack", "-L", check=False).stdout
        handle = sh("ip", "netns", "exec", qr, "nft", "-a", "list", "table", "ip", f"neutrino-{tag}").stdout
        again = Pipeline(settings).reconcile(snapshot())  # a restarted agent
        out["restart_changes"], out["restart_errors"] = again.changes, list(again.errors)
        ct_after = sh("ip", "netns", "exec", qr, "conntrack", "-L", check=False).stdout
        # The same connections (their addresses, ports, ids, marks), whatever their timers read meanwhile.
        def flows(listing: str) -> set[tuple[str, ...]]:
            return {tuple(t for t in line.split() if "=" in t) for line in listing.splitlines() if "=" in line}
        out["conntrack_kept"] = bool(flows(ct_before)) and flows(ct_before) == flows(ct_after)
        out["table_kept"] = "# handle" in handle and handle == sh(
            "ip", "netns", "exec", qr, "nft", "-a", "list", "table", "ip", f"neutrino-{tag}").stdout
        pipe = Pipeline(settings)
        pipe.reconcile(snapshot())
        out["disassociate_changes"] = pipe.reconcile(snapshot(fip=False)).changes
        out["fip_after_disassociate"] = ping(up, "203.0.113.20", tries=1)
        # enable_snat False: the upstream (with a route back through the gateway) sees the instance itself.
        sh("ip", "-n", up, "route", "add", "10.72.0.0/24", "via", "203.0.113.10")
        out["nosnat_changes"] = pipe.reconcile(snapshot(fip=False, snat=False)).changes
        out["nosnat_source"] = udp_from(i2, "203.0.113.1")
        # The interface on subnet B removed: east-west stops.
        pipe.reconcile(dataclasses.replace(snapshot(fip=False, snat=False), ports={
            k: v for k, v in snapshot().ports.items() if k != QB}))
        out["east_west_after_removal"] = ping(i1, "10.72.0.5", tries=1)
    finally:
        report = cleanup(settings)
        out["cleanup_errors"] = list(report.errors)
        out["namespace_left"] = qr in sh("ip", "netns", "list").stdout
    print(json.dumps(out))
''')


def test_router_on_a_real_kernel(tmp_path: Path) -> None:
    tag = f"c{os.getpid() % 100000:05d}"[:6]
    host, up, i1, i2 = (f"ntl3{w}{os.getpid()}" for w in ("h", "u", "a", "b"))
    rid = str(uuid.uuid4())
    PREFIXES.append(f"qrouter-{rid}")
    made = []
    try:
        for ns in (host, up, i1, i2):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            made.append(ns)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        # The physnet: ext0 in the host, its peer in the upstream at the external gateway address.
        subprocess.run(["ip", "-n", host, "link", "add", "ext0", "type", "veth", "peer", "name", "eth0", "netns",
                        up], check=True)
        for ns, cmd in ((host, ("link", "set", "ext0", "up")), (up, ("addr", "add", "203.0.113.1/24", "dev", "eth0")),
                        (up, ("link", "set", "eth0", "up"))):
            subprocess.run(["ip", "-n", ns, *cmd], check=True)
        subprocess.run(["ip", "netns", "exec", up, "sysctl", "-qw", "net.ipv4.conf.eth0.arp_accept=1"], check=True)
        env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"}
        done = subprocess.run(["ip", "netns", "exec", host, sys.executable, "-c", SCRIPT, str(tmp_path), tag, rid,
                               i1, i2, up], capture_output=True, text=True, env=env, timeout=120, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        out = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        subprocess.run(["ip", "netns", "del", f"qrouter-{rid}"], check=False, capture_output=True)
    assert out["first_errors"] == [], out
    assert len(out["wired"]) == 5  # three router ports (links + nft ready) and two instances
    assert out["east_west"], out
    assert "fa:16:3e:73:00:01" in out["announced"], out  # gratuitous ARP from qg- for the floating IP
    assert out["snat_source"] == "203.0.113.10", out          # the gateway address
    assert out["fip_source"] == "203.0.113.20", out           # the floating IP, not the gateway's
    assert out["fip_inbound"], out
    assert "192.168.77.0/24 via 10.72.0.254" in out["routes"] and "default via 203.0.113.1" in out["routes"]
    assert "via fe80::" in out["ra_route"] and "2001:db8:71:" in out["ra_addr"], out  # router advertisements
    assert out["link_local"].count(" qr-") == 2 and "tentative" not in out["link_local"], out["link_local"]
    assert out["forwarding"] == "1"
    assert "dnat to 10.71.0.5" in out["table"] and "snat to 203.0.113.10" in out["table"]
    assert out["restart_changes"] == 0 and out["restart_errors"] == [], out
    assert out["conntrack_kept"], out
    assert out["table_kept"], out  # not even set again: the same table (handle) as before the restart
    assert out["disassociate_changes"] > 0 and not out["fip_after_disassociate"], out
    assert out["nosnat_changes"] == 1 and out["nosnat_source"] == "10.72.0.5", out  # one nft transaction
    assert not out["east_west_after_removal"], out
    assert out["cleanup_errors"] == [] and not out["namespace_left"], out
