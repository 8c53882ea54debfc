"""Security groups on a real kernel, through the agent's real pipeline on hand-built Snapshots (no API).

One VXLAN network (IPv4 + IPv6) with seven instances, each a namespace whose ``eth0`` (the port's MAC) is
the peer of a veth standing in for the hypervisor's tap; static addresses. The groups:

- client (stateful; A and G): egress TCP 22, 5000, 8080 and ICMP/ICMPv6 only; no ingress rule at all;
- server (stateful; B): ingress TCP 22 from anywhere, ICMP from members of client, TCP 8080 from C's /32,
  ICMPv6 from anywhere; egress anything (v4, v6);
- raw (stateless; D): ingress TCP 5000; its egress rule (TCP) comes later, live;
- vip (stateful; E and F, which share 10.80.0.100 as an allowed address pair): ingress ICMP, egress all.

C has port security disabled. What a user would see is checked: connections allowed and refused by rules in
both directions, remote prefix and remote group (a member added and removed live, by set elements only),
replies of allowed connections coming back to A (no ingress rule) while unsolicited inbound to A is dropped,
the stateless group needing its return rule, the shared address answering from E then from F, G's spoofed
source address and MAC dropped, G's rogue DHCP server reaching A only while G's port security is off, a
restarted pipeline making no change (the tables' rule handles unchanged), and cleanup leaving no table.

The "host" is a throwaway namespace: the pipeline runs in a child process inside it, the way
test_router_plane.py does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.integration.conftest import PREFIXES

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, links, nft)")
ROOT = Path(__file__).resolve().parents[2]
INSTANCES = "abcdefg"

SCRIPT = textwrap.dedent('''
    import dataclasses, ipaddress, json, subprocess, sys, time
    from pathlib import Path
    from neutrino.agent.loop import AgentSettings
    from neutrino.agent.pipeline import Pipeline, cleanup
    from neutrino.intent.model import (AddressPair, Direction, FixedIp, HostName, HostSpec, NetworkId,
                                       NetworkSpec, NetworkType, PortId, PortSpec, SecurityGroupId,
                                       SecurityGroupRuleSpec, SecurityGroupSpec, Snapshot, SubnetId, SubnetSpec)

    tmp, tag, prefix = sys.argv[1:4]
    ip, net = ipaddress.ip_address, ipaddress.ip_network
    def uid(n):
        return f"{tag}{n:02d}0000-0000-0000-0000-000000000000"[:36]
    N, S4, S6 = NetworkId(uid(1)), SubnetId(uid(2)), SubnetId(uid(3))
    CLIENT, SERVER, RAW, VIP = (SecurityGroupId(uid(n)) for n in (4, 5, 6, 7))
    H = HostName("h1")
    names = "abcdefg"
    P = {n: PortId(uid(10 + i)) for i, n in enumerate(names)}
    V4 = {n: f"10.80.0.{11 + i}" for i, n in enumerate(names)}
    V6 = {n: f"2001:db8:80::{11 + i}" for i, n in enumerate(names)}
    MAC = {n: f"fa:16:3e:80:00:{11 + i:02x}" for i, n in enumerate(names)}
    NS = {n: f"{prefix}{n}" for n in names}
    VIP_ADDR = "10.80.0.100"

    def rule(i, d, e, **kw):
        return SecurityGroupRuleSpec(f"r{i:02d}", Direction(d), e, **kw)

    def snapshot(member_c=False, raw_egress=False, g_secured=True):
        def port(n, groups=(), secured=True, pairs=()):
            return PortSpec(P[n], N, MAC[n], (FixedIp(S4, ip(V4[n])), FixedIp(S6, ip(V6[n]))), "compute:lab",
                            f"vm-{n}", H, port_security_enabled=secured, security_groups=groups,
                            allowed_address_pairs=pairs)
        members = [net(V4["a"]), net(V6["a"]), net(V4["g"])] + ([net(V4["c"])] if member_c else [])
        groups = {
            CLIENT: SecurityGroupSpec(CLIENT, True, (
                rule(1, "egress", 4, protocol=6, port_min=22, port_max=22),
                rule(2, "egress", 4, protocol=6, port_min=5000, port_max=5000),
                rule(3, "egress", 4, protocol=6, port_min=8080, port_max=8080),
                rule(4, "egress", 4, protocol=1), rule(5, "egress", 6, protocol=58)),
                tuple(sorted(members, key=lambda m: (m.version, int(m.network_address))))),
            SERVER: SecurityGroupSpec(SERVER, True, (
                rule(6, "ingress", 4, protocol=6, port_min=22, port_max=22),
                rule(7, "ingress", 4, protocol=1, remote_group_id=CLIENT),
                rule(8, "ingress", 4, protocol=6, port_min=8080, port_max=8080, remote_ip_prefix=net(V4["c"])),
                rule(9, "ingress", 6, protocol=58), rule(10, "egress", 4), rule(11, "egress", 6))),
            RAW: SecurityGroupSpec(RAW, False, (rule(12, "ingress", 4, protocol=6, port_min=5000, port_max=5000),)
                                   + ((rule(13, "egress", 4, protocol=6),) if raw_egress else ())),
            VIP: SecurityGroupSpec(VIP, True, (rule(14, "ingress", 4, protocol=1), rule(15, "egress", 4))),
        }
        ports = {P["a"]: port("a", (CLIENT,)), P["b"]: port("b", (SERVER,)), P["c"]: port("c", secured=False),
                 P["d"]: port("d", (RAW,)),
                 P["e"]: port("e", (VIP,), pairs=((AddressPair(net(VIP_ADDR + "/32"), MAC["e"])),)),
                 P["f"]: port("f", (VIP,), pairs=((AddressPair(net(VIP_ADDR + "/32"), MAC["f"])),)),
                 P["g"]: port("g", (CLIENT,), secured=g_secured)}
        return Snapshot(revision=1, networks={N: NetworkSpec(N, NetworkType.VXLAN, 801, None, 1450)},
                        subnets={S4: SubnetSpec(S4, N, net("10.80.0.0/24"), None, False),
                                 S6: SubnetSpec(S6, N, net("2001:db8:80::/64"), None, False)},
                        ports=ports, hosts={H: HostSpec(H, ip("198.18.0.1"))}, security_groups=groups)

    def sh(*argv, check=True):
        return subprocess.run(argv, capture_output=True, text=True, check=check)

    def inside(n, *argv, check=False):
        return sh("ip", "netns", "exec", NS[n], *argv, check=check)

    for n in names:
        sh("ip", "link", "add", f"tap{P[n][:11]}", "type", "veth", "peer", "name", "eth0", "address", MAC[n],
           "netns", NS[n])
        sh("ip", "link", "set", f"tap{P[n][:11]}", "up")
        for cmd in (("addr", "add", V4[n] + "/24", "dev", "eth0"),
                    ("-6", "addr", "add", V6[n] + "/64", "dev", "eth0", "nodad"), ("link", "set", "eth0", "up")):
            sh("ip", "-n", NS[n], *cmd)
    SERVE = ("import socket, sys, threading\\n"
             "def serve(port):\\n"
             "    s = socket.socket(socket.AF_INET6); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\\n"
             "    s.bind(('::', port)); s.listen(16)\\n"
             "    while True:\\n"
             "        c, _ = s.accept(); c.sendall(b'ok'); c.close()\\n"
             "for p in (22, 23, 5000, 8080, 9000):\\n"
             "    threading.Thread(target=serve, args=(p,), daemon=True).start()\\n"
             "print('ready', flush=True); sys.stdin.read()\\n")
    servers = [subprocess.Popen(["ip", "netns", "exec", NS[n], sys.executable, "-c", SERVE], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True) for n in names]
    for s in servers:
        s.stdout.readline()

    def tcp(src, dst, port, tries=3):
        """A connection from instance ``src`` to ``dst`` (an instance name or an address) gets the server's
        greeting (``tries`` attempts; one where refusal is what is checked)."""
        addr = V4.get(dst, dst)
        code = (f"import socket; s = socket.create_connection(({addr!r}, {port}), timeout=1); "
                "assert s.recv(2) == b'ok'")
        return any(inside(src, sys.executable, "-c", code).returncode == 0 for _ in range(tries))

    def ping(src, dst, tries=3, six=False, source=None):
        addr = (V6 if six else V4).get(dst, dst)
        argv = ["ping", "-c", "1", "-W", "1"] + (["-I", source] if source else []) + [addr]
        return any(inside(src, *argv).returncode == 0 for _ in range(tries))

    def handles():
        """Every chain and rule of the inet table with its handle: unchanged = nothing was replaced."""
        out = sh("nft", "-a", "list", "table", "inet", f"neutrino-{tag}").stdout
        return [line.strip() for line in out.splitlines() if "# handle" in line and "elements" not in line]

    def dhcp_offer():
        got = inside("a", "busybox", "udhcpc", "-i", "eth0", "-n", "-q", "-f", "-t", "3", "-T", "1", "-s", "/bin/true")
        return "obtained" in got.stdout + got.stderr or "lease of" in got.stdout + got.stderr

    settings = AgentSettings(host="h1", tunnel_ip="198.18.0.1", interface_mappings={},
                             state_dir=Path(tmp) / "agent", owner=tag, run_dir=Path(tmp) / "run")
    out = {}
    rogue = None
    try:
        pipe = Pipeline(settings)
        first = pipe.reconcile(snapshot())
        out["first_errors"] = list(first.errors)
        out["wired"] = sorted(first.wired)
        out["ports"] = P
        out["bridge_table"] = sh("nft", "list", "table", "bridge", f"neutrino-{tag}").stdout
        out["sysctl"] = sh("sysctl", "-n", "net.bridge.bridge-nf-call-iptables").stdout.strip()
        ping("a", "b"); ping("c", "a", tries=1)  # neighbours learnt

        out["a_b_22"] = tcp("a", "b", 22)                      # A's egress and B's ingress allow it
        out["a_b_23"] = tcp("a", "b", 23, tries=1)             # B's ingress has no rule for 23
        out["a_b_ping"] = ping("a", "b")                       # remote group: A is a member of client
        out["c_b_ping"] = ping("c", "b", tries=1)              # C is not
        out["c_b_8080"] = tcp("c", "b", 8080)                  # remote_ip_prefix: C's /32
        out["g_b_8080"] = tcp("g", "b", 8080, tries=1)         # G's egress allows it, B's ingress not from G
        out["a_c_22"] = tcp("a", "c", 22)                      # egress allowed to an unfiltered port
        out["a_c_9000"] = tcp("a", "c", 9000, tries=1)         # egress: A's groups do not open 9000
        out["b_a_22"] = tcp("b", "a", 22, tries=1)             # unsolicited inbound to A: no ingress rule
        out["b_c_9000"] = tcp("b", "c", 9000)                  # C has no port security: nothing filters it
        out["a_b_ping6"] = ping("a", "b", six=True)            # ICMPv6 rule, neighbour discovery through

        before = handles()
        member = pipe.reconcile(snapshot(member_c=True))
        out["member_changes"], out["member_errors"] = member.changes, list(member.errors)
        out["member_handles_kept"] = handles() == before
        out["c_b_ping_member"] = ping("c", "b")
        pipe.reconcile(snapshot())
        out["c_b_ping_removed"] = ping("c", "b", tries=1)

        out["a_d_5000_stateless"] = tcp("a", "d", 5000, tries=1)  # D's reply needs an egress rule
        added = pipe.reconcile(snapshot(raw_egress=True))
        out["raw_changes"], out["raw_errors"] = added.changes, list(added.errors)
        out["a_d_5000_with_rule"] = tcp("a", "d", 5000)

        # VRRP-style: the shared address on E, then moved to F.
        inside("e", "ip", "addr", "add", VIP_ADDR + "/24", "dev", "eth0", check=True)
        out["vip_on_e"] = ping("a", VIP_ADDR)
        inside("e", "ip", "addr", "del", VIP_ADDR + "/24", "dev", "eth0", check=True)
        inside("f", "ip", "addr", "add", VIP_ADDR + "/24", "dev", "eth0", check=True)
        inside("a", "ip", "neigh", "flush", "dev", "eth0")
        out["vip_on_f"] = ping("a", VIP_ADDR)

        # G spoofs: another source address (not its own, not a pair), then another MAC.
        out["g_c_own"] = ping("g", "c")
        inside("g", "ip", "addr", "add", "10.80.0.77/24", "dev", "eth0", check=True)
        out["g_c_spoofed_ip"] = ping("g", "c", tries=1, source="10.80.0.77")
        inside("g", "ip", "addr", "del", "10.80.0.77/24", "dev", "eth0", check=True)
        inside("g", "ip", "link", "set", "eth0", "address", "fa:16:3e:80:00:77", check=True)
        inside("c", "ip", "neigh", "flush", "dev", "eth0")
        out["g_c_spoofed_mac"] = ping("g", "c", tries=1)
        inside("g", "ip", "link", "set", "eth0", "address", MAC["g"], check=True)

        # A rogue DHCP server in G: A hears it only while G's port security is off.
        rogue = subprocess.Popen(["ip", "netns", "exec", NS["g"], "dnsmasq", "--no-daemon", "--conf-file=/dev/null",
                                  "--port=0", "--interface=eth0", "--bind-interfaces", "--user=root",
                                  "--dhcp-range=10.80.0.150,10.80.0.160", "--dhcp-authoritative",
                                  f"--dhcp-leasefile={tmp}/rogue.leases", f"--pid-file={tmp}/rogue.pid"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pipe.reconcile(snapshot(raw_egress=True, g_secured=False))
        out["rogue_unfiltered"] = dhcp_offer()
        pipe.reconcile(snapshot(raw_egress=True))
        out["rogue_filtered"] = dhcp_offer()

        # A restarted agent: nothing to do, not even a transaction (same handles).
        before = handles()
        bridge_before = sh("nft", "-a", "list", "table", "bridge", f"neutrino-{tag}").stdout
        again = Pipeline(settings).reconcile(snapshot(raw_egress=True))
        out["restart_changes"], out["restart_errors"] = again.changes, list(again.errors)
        out["restart_wired"] = sorted(again.wired)
        out["restart_kept"] = handles() == before and bridge_before == sh(
            "nft", "-a", "list", "table", "bridge", f"neutrino-{tag}").stdout
    finally:
        if rogue is not None:
            rogue.kill()
            rogue.wait()
        for s in servers:
            s.kill()
            s.wait()
        report = cleanup(settings)
        out["cleanup_errors"] = list(report.errors)
        out["tables_left"] = [line for line in sh("nft", "list", "tables").stdout.splitlines() if tag in line]
    print(json.dumps(out))
''')


def test_security_groups_on_a_real_kernel(tmp_path: Path) -> None:
    tag = f"s{os.getpid() % 100000:05d}"[:6]
    prefix = f"ntsg{os.getpid()}"
    PREFIXES.append(prefix)
    made = []
    try:
        for ns in [prefix + "h", *(prefix + n for n in INSTANCES)]:
            subprocess.run(["ip", "netns", "add", ns], check=True)
            made.append(ns)
            subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"}
        done = subprocess.run(["ip", "netns", "exec", prefix + "h", sys.executable, "-c", SCRIPT, str(tmp_path), tag,
                               prefix], capture_output=True, text=True, env=env, timeout=240, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        out = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
    ports = out["ports"]
    assert out["first_errors"] == [], out
    assert out["wired"] == sorted(ports.values()), out  # every port ACTIVE: filter (or none, for C) in place
    assert f"tap{ports['c'][:11]}" not in out["bridge_table"] and f"tap{ports['a'][:11]}" in out["bridge_table"]
    assert out["sysctl"] == "1"
    assert out["a_b_22"] and not out["a_b_23"], out
    assert out["a_b_ping"] and not out["c_b_ping"], out
    assert out["c_b_8080"] and not out["g_b_8080"], out
    assert out["a_c_22"] and not out["a_c_9000"], out
    assert not out["b_a_22"], out
    assert out["b_c_9000"], out
    assert out["a_b_ping6"], out
    assert out["member_changes"] == 1 and out["member_errors"] == [] and out["member_handles_kept"], out
    assert out["c_b_ping_member"] and not out["c_b_ping_removed"], out
    assert not out["a_d_5000_stateless"] and out["a_d_5000_with_rule"], out
    assert out["raw_changes"] == 1 and out["raw_errors"] == [], out
    assert out["vip_on_e"] and out["vip_on_f"], out
    assert out["g_c_own"] and not out["g_c_spoofed_ip"] and not out["g_c_spoofed_mac"], out
    assert out["rogue_unfiltered"] and not out["rogue_filtered"], out
    assert out["restart_changes"] == 0 and out["restart_errors"] == [] and out["restart_kept"], out
    assert out["restart_wired"] == sorted(ports.values()), out
    assert out["cleanup_errors"] == [] and out["tables_left"] == [], out
