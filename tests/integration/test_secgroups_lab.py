"""Security groups end to end in the lab: the API, the agents on two hosts, lab instances.

Each test boots a few instances with ``neutrino instance create`` (as a user would) on one network shared by
the module (the IPv6 test: another, with a SLAAC subnet too) and checks from inside them what the issue
lists. Every refusal sits next to a positive control (the same traffic allowed once the one thing that
matters changes), so none passes because something else is broken:

- rules change live: a client (default group, h1) pings a server (group ``web``, h2: ICMP from members of
  default); its TCP is refused until a rule for the port is POSTed -- then it connects within 2 s -- and
  refused again once the rule is deleted; an instance without port security takes anything;
- remote_ip_prefix lets in one client's /32 and not its neighbour; a group without egress rules cannot
  ping out until an egress ICMP rule is added;
- remote_group_id: a port update putting the client into (then out of) the remote group is enforced
  within 2 s of the PUT, both ways;
- stateful: replies to an egress-only instance's connection come back, unsolicited inbound does not;
  stateless: the reply is dropped until the group has an ingress rule for it;
- allowed_address_pairs, VRRP-style: the holder of a shared address answers on it; an instance without
  the pair that takes the address does not, until the pair is added to its port;
- spoofing: another MAC or another source address never leaves the instance (a one-way UDP datagram, sent
  before a legitimate one on the same path, never arrives; with port security off the same datagram does);
- a rogue DHCP server in an instance hears DISCOVERs and answers them, yet no answer reaches anyone: a
  neighbour starting DHCP afresh is served by neutrino's dnsmasq only;
- IPv6 (a network with a SLAAC subnet): datagrams from another MAC, another address of the prefix or
  another link-local address never arrive, while the port's own global and link-local ones sent after them
  do (and, with port security off, the spoofed ones too);
- a router advertisement from an instance (default router, a prefix to autoconfigure) changes nothing on
  its peers on either host; once the sender's port security is off, the same RA gives them both;
- ``instance create --port``: an existing port's address (by DHCP) and groups are the instance's, and
  deleting the instance gives the port back unbound.

Inside each instance runs a small Python guest (GUEST) driven over stdin: a TCP server answering ``ok``, a
UDP sink (IPv4 and IPv6), TCP probes with short timeouts, UDP sends from a chosen source, a capture of DHCP
server packets, more TCP servers, router solicitations and advertisements.
One process per instance: a timed probe then measures the network, not an interpreter starting."""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from neutrino.lab.instances import SCRIPT
from tests.integration.conftest import Agent, Lab

pytestmark = pytest.mark.xdist_group(name="kernel")
PORT = 7002
CIDR = "10.64.0.0/24"
VIP, SPOOF, FIXED = "10.64.0.240", "10.64.0.241", "10.64.0.230"  # above what IPAM hands out to this module
CIDR6 = "2001:db8:64::/64"  # SLAAC, on a network of its own (with an IPv4 subnet too, as most have)
SPOOF6, SPOOF_LL = "2001:db8:64::dead", "fe80::dead"  # not EUI-64: IPAM never hands them out on a SLAAC subnet
ROGUE_PREFIX = "2001:db8:bad::"  # what an instance's router advertisement offers
ENFORCED = 2.0  # the issue: a rule or membership change is enforced on running ports within 2 s
# Timeouts of the probes that time a change (fine-grained: a dropped SYN is retried only after 1 s, an
# unanswered ping or ARP request after 1 s); a probe that waits for a refusal waits longer, so that a slow
# answer is not taken for one.
PROBE, REFUSAL = 0.1, 0.5

GUEST = textwrap.dedent(f'''
    import socket, struct, sys, threading
    seen, servers = set(), set()

    def background(fn, *args):
        threading.Thread(target=fn, args=args, daemon=True).start()

    def serve(port):  # a TCP server answering "ok" on port (listening when this returns)
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", int(port)))
        s.listen(64)
        background(accept, s)
        return True

    def accept(s):
        while True:
            c, _ = s.accept()
            c.sendall(b"ok")
            c.close()

    def udp_sink(family, addr):
        s = socket.socket(family, socket.SOCK_DGRAM)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind((addr, {PORT}))
        while True:
            seen.add(s.recv(64).decode())

    def dhcp_servers(s):  # the source of every IPv4 UDP packet from port 67 reaching eth0
        while True:
            p = s.recv(2048)
            ihl = (p[0] & 15) * 4
            if p[9] == 17 and p[ihl:ihl + 2] == (67).to_bytes(2, "big"):
                servers.add(socket.inet_ntoa(p[12:16]))

    def tcp(addr, timeout, port={PORT}):
        try:
            with socket.create_connection((addr, int(port)), timeout=float(timeout)) as c:
                return c.recv(2) == b"ok"
        except OSError:
            return False

    def sockaddr(addr, port):  # a scoped IPv6 address as fe80::1%eth0
        ip, _, dev = addr.partition("%")
        return (ip, port, 0, socket.if_nametoindex(dev)) if dev else (ip, port)

    def udp(src, dst, token):
        try:
            with socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.bind(sockaddr(src, 0))
                s.sendto(token.encode(), sockaddr(dst, {PORT}))
            return True
        except OSError:
            return False

    def sniff():
        s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
        s.bind(("eth0", 0x0800))
        background(dhcp_servers, s)
        return True

    def nd(message, group):  # a neighbour discovery message from eth0 (its link-local address) to a group
        idx = socket.if_nametoindex("eth0")
        with socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6) as s:  # the kernel sums
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)  # RFC 4861: 255 or ignored
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_IF, idx)
            s.sendto(message, (group, 0, 0, idx))
        return True

    def ra(prefix):  # a router advertisement: a default router for 30 min, prefix/64 on-link and autonomous
        head = struct.pack("!BBHBBHII", 134, 0, 0, 64, 0, 1800, 0, 0)
        pio = struct.pack("!BBBBIII", 3, 4, 64, 0xC0, 86400, 14400, 0) + socket.inet_pton(socket.AF_INET6, prefix)
        return nd(head + pio, "ff02::1")

    def rs():  # a router solicitation (what the kernel sends at link up, then every 4 s)
        return nd(struct.pack("!BBHI", 133, 0, 0, 0), "ff02::2")

    serve({PORT})
    background(udp_sink, socket.AF_INET, "0.0.0.0")
    background(udp_sink, socket.AF_INET6, "::")
    print("ready", flush=True)
    while line := sys.stdin.readline():
        cmd, *args = line.split()
        if cmd == "seen":
            print(int(args[0] in seen), flush=True)
        elif cmd == "servers":
            print(",".join(sorted(servers)) or "-", flush=True)
        else:
            print(int({{"tcp": tcp, "udp": udp, "sniff": sniff, "serve": serve, "ra": ra,
                          "rs": rs}}[cmd](*args)), flush=True)
''')


def uniq(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:5]}"


class Guest:
    """The guest process of one instance."""

    def __init__(self, agent: Agent, namespace: str) -> None:
        self.proc = agent.host.popen(["ip", "netns", "exec", namespace, sys.executable, "-I", "-c", GUEST],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._line() == "ready"

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode().strip()
        assert line, f"the guest died (exit status {self.proc.poll()})"
        return line

    def ask(self, *words: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write((" ".join(words) + "\n").encode())
        self.proc.stdin.flush()
        return self._line()

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@dataclass
class Vm:
    agent: Agent
    name: str
    port: dict[str, Any]
    guest: Guest

    @property
    def ip(self) -> str:
        return str(self.port["fixed_ips"][0]["ip_address"])

    @property
    def mac(self) -> str:
        return str(self.port["mac_address"])

    def sh(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return self.agent.ns(f"lab-{self.name}", *argv)

    def do(self, *argv: str) -> None:
        done = self.sh(*argv)
        assert done.returncode == 0, f"{' '.join(argv)} in {self.name}: {done.stderr}"

    def pings(self, addr: str, *opts: str, wait: float = 1.0) -> bool:
        return self.sh("ping", "-c", "1", "-W", str(wait), *opts, addr).returncode == 0

    def connects(self, addr: str, timeout: float = 1.0, port: int = PORT) -> bool:
        """A TCP connection to the guest server at ``addr`` that gets its ``ok``."""
        return self.guest.ask("tcp", addr, str(timeout), str(port)) == "1"

    def send(self, src: str, dst: str, token: str) -> None:
        """One UDP datagram to the guest sink at ``dst``, from ``src`` (an address on eth0)."""
        assert self.guest.ask("udp", src, dst, token) == "1"

    def seen(self, token: str) -> bool:
        return self.guest.ask("seen", token) == "1"

    def neighbour(self, addr: str) -> str:
        return self.sh("ip", "neigh", "show", addr, "dev", "eth0").stdout


@dataclass
class Scene:
    """What a test makes: groups and instances on the module's network, undone at its end (guests, then
    instances, in reverse order; the groups last, when no port is in them any more)."""

    lab: Lab
    net: dict[str, Any]
    undo: contextlib.ExitStack
    last: contextlib.ExitStack

    def group(self, stateful: bool = True) -> dict[str, Any]:
        """A new group: Neutron's initial rules for it, egress anywhere (IPv4, IPv6). Deleted at the end (the
        module's tests together need more groups than the project's quota)."""
        body = {"name": uniq("sg"), "stateful": stateful}
        group = dict(self.lab.call("POST", "/v2.0/security-groups", 201, json={"security_group": body})[
            "security_group"])
        self.last.callback(self.lab.call, "DELETE", f"/v2.0/security-groups/{group['id']}", 204)
        return group

    def default(self) -> dict[str, Any]:
        return dict(self.lab.call("GET", "/v2.0/security-groups", params={
            "name": "default", "project_id": self.net["project_id"]})["security_groups"][0])

    def rule(self, group: dict[str, Any], direction: str = "ingress", **attrs: Any) -> dict[str, Any]:
        body = {"security_group_id": group["id"], "direction": direction, "ethertype": "IPv4", **attrs}
        return dict(self.lab.call("POST", "/v2.0/security-group-rules", 201, json={"security_group_rule": body})[
            "security_group_rule"])

    def tcp_rule(self, group: dict[str, Any], **attrs: Any) -> dict[str, Any]:
        return self.rule(group, protocol="tcp", port_range_min=PORT, port_range_max=PORT, **attrs)

    def update(self, vm: Vm, **attrs: Any) -> dict[str, Any]:
        vm.port = dict(self.lab.call("PUT", f"/v2.0/ports/{vm.port['id']}", 200, json={"port": attrs})["port"])
        return vm.port

    def boot(self, host: str, prefix: str, *opts: str) -> Vm:
        """An instance on ``host`` (h1, h2), with its guest; ``opts`` as for ``neutrino instance create``."""
        agent, name = self.lab.agents[host], uniq(prefix)
        self.undo.callback(agent.neutrino, "instance", "delete", name, check=False)
        agent.neutrino("instance", "create", "--network", self.net["id"], *opts, name)
        guest = Guest(agent, f"lab-{name}")
        self.undo.callback(guest.close)
        return Vm(agent, name, self.lab.port(name), guest)

    def free(self, addr: str) -> str:
        assert not self.lab.call("GET", "/v2.0/ports", params={"fixed_ips": f"ip_address={addr}"})["ports"]
        return addr

    def within(self, what: str, check: Callable[[], bool], since: float | None = None,
               bound: float | None = ENFORCED) -> float:
        """Seconds from ``since`` (default: now) until ``check()`` holds, polled (printed; at most ``bound``).
        A miss says when each try ended, to tell a slow change from a slow probe."""
        start = time.monotonic() if since is None else since
        tries: list[float] = []

        def timed() -> bool:
            ok = check()
            tries.append(time.monotonic() - start)
            return ok

        self.lab.wait(what, timed, timeout=ENFORCED + 10)
        took = tries[-1]
        print(f"\n[secgroups-lab] {what}: {took:.2f} s", end="")
        assert bound is None or took <= bound, \
            f"{what}: {took:.2f} s, over {bound} s (tries ended at {', '.join(f'{t:.2f}' for t in tries)} s)"
        return took


@pytest.fixture(scope="module")
def net(lab: Lab) -> dict[str, Any]:
    return dict(lab.network(uniq("sgl"), CIDR)[0])


@pytest.fixture
def scene(lab: Lab, net: dict[str, Any]) -> Iterator[Scene]:
    with contextlib.ExitStack() as last, contextlib.ExitStack() as undo:
        yield Scene(lab, net, undo, last)


def test_groups_filter_instances_across_hosts_and_rules_change_live(lab: Lab, scene: Scene) -> None:
    default = scene.default()
    web = scene.group()
    scene.rule(web, protocol="icmp", remote_group_id=default["id"])
    client = scene.boot("h1", "c")
    server = scene.boot("h2", "s", "--security-group", web["id"])
    open_ = scene.boot("h2", "o", "--no-port-security")
    assert client.port["security_groups"] == [default["id"]]
    assert server.port["security_groups"] == [web["id"]] and open_.port["port_security_enabled"] is False
    lab.wait("the client to ping the server (remote group: default)", lambda: client.pings(server.ip), timeout=20)
    lab.wait("the open instance to answer", lambda: client.connects(open_.ip), timeout=20)
    assert not client.connects(server.ip)  # web has no rule for the port
    start = time.monotonic()
    rule = scene.tcp_rule(web)
    scene.within("POSTed rule -> the client connects", lambda: client.connects(server.ip, PROBE), since=start)
    lab.call("DELETE", f"/v2.0/security-group-rules/{rule['id']}", 204)
    lab.wait("the deleted rule to keep the client out", lambda: not client.connects(server.ip), timeout=10)
    assert client.pings(server.ip)  # the other rule still holds


def test_remote_ip_prefix_admits_one_client_and_no_egress_rule_means_no_ping_out(lab: Lab, scene: Scene) -> None:
    srv = scene.group()
    near, other = scene.boot("h1", "c"), scene.boot("h1", "c")
    scene.tcp_rule(srv, remote_ip_prefix=f"{near.ip}/32")
    scene.rule(srv, protocol="icmp")  # from anywhere
    server = scene.boot("h2", "s", "--security-group", srv["id"])
    lab.wait("both clients to ping the server", lambda: near.pings(server.ip) and other.pings(server.ip), timeout=20)
    lab.wait("the client named by the prefix to connect", lambda: near.connects(server.ip), timeout=10)
    assert not other.connects(server.ip)  # same network, same group, another address
    # A group whose egress rules are gone: nothing leaves, not even a ping; an egress ICMP rule lets it out.
    mute = scene.group()
    for r in mute["security_group_rules"]:
        lab.call("DELETE", f"/v2.0/security-group-rules/{r['id']}", 204)
    scene.update(other, security_groups=[mute["id"]])
    lab.wait("the client without egress rules to stop pinging", lambda: not other.pings(server.ip), timeout=10)
    assert not other.pings(server.ip)
    scene.rule(mute, "egress", protocol="icmp")
    scene.within("egress ICMP rule -> the ping goes out (and its reply comes back)",
                 lambda: other.pings(server.ip, wait=2 * PROBE))
    assert near.connects(server.ip) and not other.connects(server.ip)  # TCP: still no egress rule


def test_remote_group_membership_changes_live(lab: Lab, scene: Scene) -> None:
    members = scene.group()  # G: whoever is in it may connect to the server
    srv = scene.group()
    scene.tcp_rule(srv, remote_group_id=members["id"])
    server = scene.boot("h2", "s", "--security-group", srv["id"])
    client = scene.boot("h1", "c")  # in default only
    default = client.port["security_groups"]
    assert not client.connects(server.ip)
    scene.update(client, security_groups=[*default, members["id"]])
    scene.within("PUT into the remote group -> the client connects", lambda: client.connects(server.ip, PROBE))
    scene.update(client, security_groups=default)
    scene.within("PUT out of the remote group -> the client is refused",
                 lambda: not client.connects(server.ip, REFUSAL))
    assert not client.connects(server.ip)  # and stays refused (a full-length try)


def test_stateful_replies_pass_and_a_stateless_group_needs_its_return_rule(lab: Lab, scene: Scene) -> None:
    srv = scene.group()
    scene.tcp_rule(srv)  # from anywhere
    egress_only = scene.group()
    stateless = scene.group(stateful=False)  # egress anywhere too, and no conntrack
    server = scene.boot("h2", "s", "--security-group", srv["id"])
    out = scene.boot("h1", "x", "--security-group", egress_only["id"])
    raw = scene.boot("h1", "y", "--security-group", stateless["id"])
    lab.wait("the egress-only instance's connection to get its replies", lambda: out.connects(server.ip), timeout=10)
    assert not server.connects(out.ip)  # unsolicited inbound: no ingress rule
    # The stateless instance's SYN leaves and is accepted; the SYN-ACK has no rule into it. The one rule
    # added next concerns only packets towards it: the replies.
    assert not raw.connects(server.ip)
    scene.rule(stateless, protocol="tcp", remote_ip_prefix=f"{server.ip}/32")
    scene.within("return rule -> the stateless instance's connection completes",
                 lambda: raw.connects(server.ip, PROBE))
    scene.tcp_rule(egress_only)
    scene.within("ingress rule -> the egress-only instance takes connections", lambda: server.connects(out.ip, PROBE))


def test_allowed_address_pair_moves_like_vrrp_and_is_not_for_others(lab: Lab, scene: Scene) -> None:
    vip = scene.free(VIP)
    first, second, client = scene.boot("h1", "a"), scene.boot("h2", "b"), scene.boot("h1", "c")
    scene.update(first, allowed_address_pairs=[{"ip_address": vip}])

    def reaches_vip(wait: float = 1.0) -> bool:
        client.sh("ip", "neigh", "flush", "to", vip, "dev", "eth0")  # no answer remembered from before
        return client.pings(vip, wait=wait)

    first.do("ip", "addr", "add", f"{vip}/24", "dev", "eth0")
    lab.wait("the pair's holder to answer on the shared address", reaches_vip, timeout=10)
    assert first.mac in client.neighbour(vip)
    # The address moves to an instance without the pair: neither its ARP replies nor (with the neighbour
    # entry set by hand) its echo replies from the shared address leave it.
    first.do("ip", "addr", "del", f"{vip}/24", "dev", "eth0")
    second.do("ip", "addr", "add", f"{vip}/24", "dev", "eth0")
    assert not reaches_vip()
    client.do("ip", "neigh", "replace", vip, "lladdr", second.mac, "dev", "eth0", "nud", "permanent")
    assert not client.pings(vip)
    client.do("ip", "neigh", "del", vip, "dev", "eth0")
    # Its port gets the pair too (both now share it, as VRRP peers do): it answers.
    scene.update(second, allowed_address_pairs=[{"ip_address": vip}])
    scene.within("pair added -> the new holder answers on the shared address", lambda: reaches_vip(2 * PROBE),
                 bound=None)  # a port change, not a rule or membership change: timed, not held to 2 s
    assert second.mac in client.neighbour(vip)


def test_spoofed_mac_or_source_address_never_leaves_an_instance(lab: Lab, scene: Scene) -> None:
    spoof = scene.free(SPOOF)
    vm = scene.boot("h1", "x")
    target = scene.boot("h2", "y", "--no-port-security")  # takes anything: only vm's own filter can drop

    def pin_target() -> None:
        """The target's MAC, set by hand: the spoofed ARP requests being dropped too must not be what stops
        the datagram."""
        vm.do("ip", "neigh", "replace", target.ip, "lladdr", target.mac, "dev", "eth0", "nud", "permanent")

    def arrives(src: str, token: str) -> None:
        vm.send(src, target.ip, token)
        lab.wait(f"datagram {token} to arrive", lambda: target.seen(token), timeout=10)

    lab.wait("the instance to ping the target", lambda: vm.pings(target.ip), timeout=20)
    arrives(vm.ip, "own-0")
    # Another MAC (a MAC change flushes the neighbour table, so the target's entry is pinned after it).
    vm.do("ip", "link", "set", "eth0", "address", "02:64:00:00:00:99")
    pin_target()
    assert not vm.pings(target.ip)
    vm.send(vm.ip, target.ip, "mac-spoofed")
    vm.do("ip", "link", "set", "eth0", "address", vm.mac)  # restored
    arrives(vm.ip, "own-1")  # sent after the spoofed one, on the same path
    assert not target.seen("mac-spoofed")
    assert vm.pings(target.ip)
    # A source address that is not its own (nor a pair of its port).
    vm.do("ip", "addr", "add", f"{spoof}/32", "dev", "eth0")
    pin_target()
    assert not vm.pings(target.ip, "-I", spoof)
    vm.send(spoof, target.ip, "ip-spoofed")
    arrives(vm.ip, "own-2")
    assert not target.seen("ip-spoofed")
    assert vm.pings(target.ip)
    # What stopped them was the port's security: without it, the same datagrams arrive.
    scene.update(vm, port_security_enabled=False, security_groups=[])
    def open_and_spoofed() -> bool:
        vm.send(spoof, target.ip, "ip-open")
        return target.seen("ip-open")

    lab.wait("a spoofed source to arrive without port security", open_and_spoofed, timeout=10)
    vm.do("ip", "link", "set", "eth0", "address", "02:64:00:00:00:99")
    pin_target()
    vm.send(vm.ip, target.ip, "mac-open")
    lab.wait("spoofed MAC to arrive without port security", lambda: target.seen("mac-open"), timeout=5)
    vm.do("ip", "link", "set", "eth0", "address", vm.mac)


def test_a_rogue_dhcp_server_reaches_nobody(lab: Lab, scene: Scene, tmp_path: Path) -> None:
    hears = scene.group()
    scene.rule(hears, protocol="udp", port_range_min=67, port_range_max=67)  # DISCOVERs reach it
    rogue_vm = scene.boot("h1", "r", "--security-group", hears["id"])
    victim = scene.boot("h1", "v")
    ours = {f["ip_address"] for p in lab.call("GET", "/v2.0/ports", params={
        "network_id": scene.net["id"], "device_owner": "network:dhcp"})["ports"] for f in p["fixed_ips"]}
    assert ours
    log, leases = tmp_path / "rogue.log", tmp_path / "rogue.leases"
    base = CIDR.rsplit(".", 1)[0]
    rogue = rogue_vm.agent.host.popen([
        "ip", "netns", "exec", f"lab-{rogue_vm.name}", "dnsmasq", "--keep-in-foreground", "--conf-file=/dev/null",
        "--port=0", "--interface=eth0", "--bind-interfaces", "--user=root", "--pid-file=",
        f"--dhcp-range={base}.200,{base}.210,1h", "--dhcp-authoritative", "--log-dhcp",
        f"--log-facility={log}", f"--dhcp-leasefile={leases}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    scene.undo.callback(rogue.wait)
    scene.undo.callback(rogue.kill)
    lab.wait("the rogue to listen", lambda: log.exists() and "DHCP, IP range" in log.read_text(), timeout=10)
    # The victim starts DHCP afresh (no lease to ask for again: a DISCOVER, which both servers answer),
    # capturing every DHCP server packet that reaches it.
    assert victim.guest.ask("sniff") == "1"
    d = victim.agent.state_dir / "agent" / "instances" / victim.name
    victim.agent.host.run(["kill", (d / "dhclient.pid").read_text().strip()])
    (d / "dhclient.leases").unlink(missing_ok=True)
    victim.do("ip", "-4", "addr", "flush", "dev", "eth0", "scope", "global")
    victim.do("dhclient", "-1", "-4", "-cf", str(d / "dhclient.conf"), "-sf", str(SCRIPT),
              "-pf", str(d / "dhclient.pid"), "-lf", str(d / "dhclient.leases"), "eth0")
    lease = (d / "dhclient.leases").read_text()
    assert f"fixed-address {victim.ip};" in lease, lease
    assert any(f"dhcp-server-identifier {ip};" in lease for ip in ours), lease
    assert f"{victim.ip}/24" in victim.sh("ip", "-4", "addr", "show", "dev", "eth0").stdout
    # The rogue did hear the victim and made it an offer (it would have been taken, first come first served)...
    lab.wait("the rogue's offer to the victim", lambda: any(
        "DHCPOFFER" in line and victim.mac in line for line in log.read_text().splitlines()), timeout=10)
    # ... which never reached the victim: what reached it came from neutrino's DHCP ports only, and the
    # rogue handed out nothing.
    heard = set(victim.guest.ask("servers").split(","))
    assert heard and heard <= ours, (heard, ours)
    assert "DHCPACK" not in log.read_text() and (not leases.exists() or not leases.read_text().strip())


# -- IPv6: anti-spoofing, router advertisements ---------------------------------------------------------------


@pytest.fixture(scope="module")
def net6(lab: Lab) -> dict[str, Any]:
    net, _ = lab.network(uniq("sg6"), "10.65.0.0/24")
    lab.call("POST", "/v2.0/subnets", 201, json={"subnet": {
        "network_id": net["id"], "cidr": CIDR6, "ip_version": 6, "ipv6_ra_mode": "slaac",
        "ipv6_address_mode": "slaac"}})
    return dict(net)


def slaac(lab: Lab, vm: Vm) -> str:
    """The instance's global IPv6 address (its port's), once its kernel has formed it from dnsmasq's RA."""
    addr = str(next(f["ip_address"] for f in vm.port["fixed_ips"] if ":" in f["ip_address"]))
    start = last = time.monotonic()
    # The kernel's solicitation at link up went out before the agent plugged the tap, and its next is 4 s
    # later: the instance solicits again (once a second) to hear dnsmasq's RA now.
    assert vm.guest.ask("rs") == "1"

    def formed() -> bool:
        nonlocal last
        if f"inet6 {addr}/64" in vm.sh("ip", "-6", "addr", "show", "dev", "eth0").stdout:
            return True
        if time.monotonic() - last > 1:
            assert vm.guest.ask("rs") == "1"
            last = time.monotonic()
        return False

    lab.wait(f"SLAAC address {addr} on {vm.name}", formed, timeout=30)
    print(f"\n[secgroups-lab] SLAAC address on {vm.name}: {time.monotonic() - start:.2f} s", end="")
    return addr


def link_local(vm: Vm) -> str:
    """The link-local address the instance's kernel gave eth0, scoped (fe80::…%eth0)."""
    shown = vm.sh("ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "link").stdout.split()
    return shown[shown.index("inet6") + 1].split("/")[0] + "%eth0"


def test_ipv6_spoofed_mac_or_source_address_never_leaves_an_instance(lab: Lab, scene: Scene,
                                                                      net6: dict[str, Any]) -> None:
    v6 = Scene(lab, net6, scene.undo, scene.last)
    v6.free(SPOOF6)
    vm = v6.boot("h1", "x")
    target = v6.boot("h2", "y", "--no-port-security")  # takes anything: only vm's own filter can drop
    mine, theirs = slaac(lab, vm), slaac(lab, target)
    mine_ll, theirs_ll = link_local(vm), link_local(target)
    tokens = itertools.count()

    def pin_target() -> None:
        """The target's MAC, set by hand (a MAC change flushes the neighbour table, and spoofed neighbour
        solicitations being dropped too must not be what stops the datagram)."""
        for addr in (theirs, theirs_ll.split("%")[0]):
            vm.do("ip", "-6", "neigh", "replace", addr, "lladdr", target.mac, "dev", "eth0", "nud", "permanent")

    def arrives(src: str, dst: str, token: str) -> None:
        vm.send(src, dst, token)
        lab.wait(f"datagram {token} to arrive", lambda: target.seen(token), timeout=10)

    def own(n: int) -> None:
        """Legitimate datagrams from the port's own addresses, sent after a spoofed one on the same path."""
        arrives(mine, theirs, f"own-{n}")
        arrives(mine_ll, theirs_ll, f"own-ll-{n}")

    # Positive controls: ping6 (global and link-local) and datagrams from the port's own addresses.
    lab.wait("the instance to ping6 the target", lambda: vm.pings(theirs) and vm.pings(theirs_ll), timeout=20)
    own(0)
    # Another MAC, with the port's own global address.
    vm.do("ip", "link", "set", "eth0", "address", "02:64:00:00:00:99")
    pin_target()
    assert not vm.pings(theirs)
    vm.send(mine, theirs, "mac-spoofed")
    vm.do("ip", "link", "set", "eth0", "address", vm.mac)  # restored
    own(1)
    assert not target.seen("mac-spoofed")
    # Another address from the subnet's prefix, and another link-local address.
    vm.do("ip", "-6", "addr", "add", f"{SPOOF6}/128", "dev", "eth0", "nodad")
    vm.do("ip", "-6", "addr", "add", f"{SPOOF_LL}/64", "dev", "eth0", "nodad")
    pin_target()
    assert not vm.pings(theirs, "-I", SPOOF6)
    vm.send(SPOOF6, theirs, "ip-spoofed")
    vm.send(f"{SPOOF_LL}%eth0", theirs_ll, "ll-spoofed")
    own(2)
    assert not target.seen("ip-spoofed") and not target.seen("ll-spoofed")
    assert vm.pings(theirs, "-I", mine)  # (the kernel would pick the spoofed address: just as good a match)
    # What stopped them was the port's security: without it, the same datagrams arrive.
    v6.update(vm, port_security_enabled=False, security_groups=[])

    def open_and_spoofed() -> bool:
        n = next(tokens)
        vm.send(SPOOF6, theirs, f"ip-open-{n}")
        vm.send(f"{SPOOF_LL}%eth0", theirs_ll, f"ll-open-{n}")
        return target.seen(f"ip-open-{n}") and target.seen(f"ll-open-{n}")

    lab.wait("spoofed sources to arrive without port security", open_and_spoofed, timeout=10)
    vm.do("ip", "link", "set", "eth0", "address", "02:64:00:00:00:99")
    pin_target()
    vm.send(mine, theirs, "mac-open")
    lab.wait("spoofed MAC to arrive without port security", lambda: target.seen("mac-open"), timeout=5)
    vm.do("ip", "link", "set", "eth0", "address", vm.mac)


def test_router_advertisements_from_an_instance_reach_nobody(lab: Lab, scene: Scene) -> None:
    sender = scene.boot("h1", "r")  # the default group: egress anywhere
    # Its peers take echo requests (not only from members of a group: the sender pings from its link-local
    # address) and no other ICMPv6 but what Neutron always lets in (RAs among it).
    pinged = scene.group()
    scene.rule(pinged, ethertype="IPv6", protocol="ipv6-icmp", port_range_min=128)
    peers = [scene.boot("h1", "p", "--security-group", pinged["id"]),
             scene.boot("h2", "p", "--security-group", pinged["id"])]
    router, lls = link_local(sender).split("%")[0], [link_local(p) for p in peers]

    def took(peer: Vm) -> tuple[bool, bool]:
        """Whether the peer took the sender for its default router, and an address in the advertised prefix."""
        routes = peer.sh("ip", "-6", "route", "show", "default").stdout
        addrs = peer.sh("ip", "-6", "addr", "show", "dev", "eth0").stdout
        return f"via {router} " in routes, f"inet6 {ROGUE_PREFIX.rstrip(':')}:" in addrs

    lab.wait("the sender to ping6 its peers", lambda: all(sender.pings(ll) for ll in lls), timeout=20)
    for _ in range(3):
        assert sender.guest.ask("ra", ROGUE_PREFIX) == "1"
        for ll in lls:  # sent after the RA on the same path: the peer has handled the RA, had it come
            assert sender.pings(ll)
    assert [took(p) for p in peers] == [(False, False)] * len(peers)
    # Without port security the same sender's RA reaches them: they take the route and form the address.
    scene.update(sender, port_security_enabled=False, security_groups=[])

    def advertised() -> bool:
        assert sender.guest.ask("ra", ROGUE_PREFIX) == "1"
        return all(took(p) == (True, True) for p in peers)

    lab.wait("the unfiltered sender's RA to give its peers a default route and an address", advertised, timeout=10)


def test_instance_on_an_existing_port_keeps_its_address_and_groups_and_gives_the_port_back(
        lab: Lab, scene: Scene) -> None:
    web = scene.group()
    scene.tcp_rule(web)  # from anywhere: PORT, not PORT + 1
    body = {"network_id": scene.net["id"], "name": uniq("port"), "fixed_ips": [{"ip_address": scene.free(FIXED)}],
            "security_groups": [web["id"]]}
    port = lab.call("POST", "/v2.0/ports", 201, json={"port": body})["port"]
    scene.undo.callback(lab.call, "DELETE", f"/v2.0/ports/{port['id']}")
    assert port["binding:host_id"] == "" and port["device_id"] == ""
    agent, name = lab.agents["h2"], uniq("e")
    scene.undo.callback(agent.neutrino, "instance", "delete", name, check=False)
    agent.neutrino("instance", "create", "--port", port["id"], name)
    guest = Guest(agent, f"lab-{name}")
    scene.undo.callback(guest.close)
    vm = Vm(agent, name, lab.call("GET", f"/v2.0/ports/{port['id']}", 200)["port"], guest)
    assert (vm.port["binding:host_id"], vm.port["device_owner"]) == ("h2", "compute:lab") and vm.port["device_id"]
    assert vm.port["fixed_ips"] == port["fixed_ips"] and vm.port["security_groups"] == [web["id"]]
    assert vm.mac == port["mac_address"]
    # Its address came from DHCP (the lease names it), and it is the only one on eth0.
    lease = (agent.state_dir / "agent" / "instances" / name / "dhclient.leases").read_text()
    assert f"fixed-address {FIXED};" in lease, lease
    shown = vm.sh("ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout.split()
    assert [shown[i + 1] for i, w in enumerate(shown) if w == "inet"] == [f"{FIXED}/24"], shown
    # Its group filters it: PORT is open, PORT + 1 (served too) is not, until the group has a rule for it.
    assert guest.ask("serve", str(PORT + 1)) == "1"
    client = scene.boot("h1", "c")
    lab.wait("the client to connect to the port's instance", lambda: client.connects(FIXED), timeout=10)
    assert not client.connects(FIXED, port=PORT + 1)
    scene.rule(web, protocol="tcp", port_range_min=PORT + 1, port_range_max=PORT + 1)
    scene.within("rule for PORT + 1 -> the client connects to it", lambda: client.connects(FIXED, PROBE, PORT + 1))
    # Deleting the instance gives the port back, unbound, as it was.
    agent.neutrino("instance", "delete", name)
    back = lab.call("GET", f"/v2.0/ports/{port['id']}", 200)["port"]
    assert (back["binding:host_id"], back["device_id"], back["device_owner"]) == ("", "", "")
    assert back["fixed_ips"] == port["fixed_ips"] and back["security_groups"] == [web["id"]]
    assert back["mac_address"] == port["mac_address"]
    assert f"lab-{name}" not in agent.host.run(["ip", "netns", "list"]).stdout
