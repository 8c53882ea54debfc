"""Routing end to end, the way a user does it: the stock `openstack` CLI makes an external flat network on
physnet ``public`` (the lab's public segment, with the ``upstream`` namespace at 172.24.4.1), a router with
a gateway on it and two private subnets; lab instances on two hosts get their addresses and the default
route by DHCP and then:

- ping each other across the subnets (east-west, through the router's qr- devices);
- reach the upstream from the router's gateway address (SNAT), or from their own address with enable_snat
  off (the upstream routes the private subnet back);
- are reached by the upstream through a floating IP (the upstream keeps its own address: 1:1 NAT), and
  send from it; other instances reach one by its floating IP too, also from its own subnet (hairpin);
  disassociated, it is gone;
- keep a TCP connection through SNAT while the router's agent restarts (its first pass changes nothing);
- lose east-west when an interface is removed; the router deleted, its namespace goes.

The router's IPv6 gateway gets its default route, and the router answers on it.

IPv6 through a router: instances on two SLAAC subnets (ipv6_ra_mode and ipv6_address_mode slaac) attached to
one router take the addresses their ports announce (EUI-64, from the router's advertisements) and the
router's link-local address as their default route, and ping each other across it.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from neutrino.hosts import PUBLIC_PHYSNET, PUBLIC_V4, PUBLIC_V6
from tests.api.conftest import Cli
from tests.integration.conftest import Agent, Lab
from tests.integration.test_dhcp_lab import uniq

pytestmark = pytest.mark.xdist_group(name="kernel")

PY = sys.executable
UPSTREAM = str(PUBLIC_V4.ip)

# Answers every connection with the peer's address, then echoes lines: who the other side saw, and a
# connection whose survival can be checked.
PEER_SERVER = r"""
import socket, sys, threading
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(64)
def serve(c, a):
    with c:
        c.sendall((a[0] + "\n").encode())
        for line in c.makefile("rb"):
            c.sendall(line)
while True:
    c, a = s.accept()
    threading.Thread(target=serve, args=(c, a), daemon=True).start()
"""
# Connects, prints the address the server saw, then for each stdin line prints its echo.
PEER_CLIENT = r"""
import socket, sys
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))
r = c.makefile("r")
print(r.readline().strip(), flush=True)
for line in sys.stdin:
    c.sendall(line.encode())
    print(r.readline().strip(), flush=True)
"""
PORT = 7001
# Sends a router solicitation on eth0 and prints each router advertisement's source, router lifetime and
# autonomous prefixes, until one from argv[1] announces argv[2] (or argv[3] seconds pass).
RA_PROBE = r"""
import socket, struct, sys, time
ifindex = socket.if_nametoindex("eth0")
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
s.sendto(bytes([133, 0, 0, 0, 0, 0, 0, 0]), ("ff02::2", 0, 0, ifindex))
s.settimeout(0.1)
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    try:
        data, peer = s.recvfrom(2048)
    except TimeoutError:
        continue
    if data[0] != 134:
        continue
    prefixes, i = [], 16
    while i + 32 <= len(data) and data[i + 1]:
        if data[i] == 3 and data[i + 3] & 0x40:
            prefixes.append(f"{socket.inet_ntop(socket.AF_INET6, data[i + 16:i + 32])}/{data[i + 2]}")
        i += data[i + 1] * 8
    source = peer[0].split("%")[0]
    print(source, struct.unpack("!H", data[6:8])[0], *prefixes, flush=True)
    if source == sys.argv[1] and sys.argv[2] in prefixes:
        break
"""


@dataclass
class Routed:
    lab: Lab
    router: dict[str, Any]
    l3: Agent                     # the agent hosting the router
    ext: dict[str, Any]
    subnets: dict[str, dict[str, Any]]
    vms: dict[str, tuple[Agent, str, str]]  # name -> (its host's agent, instance name, address)

    @property
    def namespace(self) -> str:
        return f"qrouter-{self.router['id']}"

    def gateway_ip(self) -> str:
        info = self.lab.call("GET", f"/v2.0/routers/{self.router['id']}")["router"]["external_gateway_info"]
        return str(next(f["ip_address"] for f in info["external_fixed_ips"] if ":" not in f["ip_address"]))

    def seen_from(self, vm: str, target: str, timeout: float = 2.0) -> str | None:
        """Connect from an instance to ``target``'s peer server: the source address it saw, or None."""
        agent, name, _ = self.vms[vm]
        done = agent.ns(f"lab-{name}", PY, "-c", PEER_CLIENT, target, str(PORT), str(timeout))
        return done.stdout.strip() or None if done.returncode == 0 else None

    def upstream_sees(self, target: str, timeout: float = 2.0) -> str | None:
        """Connect from the upstream to ``target``: the source address the server there saw, or None."""
        done = self.lab.underlay.upstream_run([PY, "-c", PEER_CLIENT, target, str(PORT), str(timeout)],
                                              stdin=subprocess.DEVNULL, timeout=30)
        return done.stdout.strip() or None if done.returncode == 0 else None

    def ping(self, vm: str, target: str) -> bool:
        agent, name, _ = self.vms[vm]
        return agent.ns(f"lab-{name}", "ping", "-c", "1", "-W", "1", target).returncode == 0


@pytest.fixture(scope="module")
def routed(lab: Lab) -> Iterator[Routed]:
    cli = Cli(lab.server)
    # The stock way, as the issue and Neutron's docs have it.
    ext = cli("network", "create", "--external", "--provider-network-type", "flat",
              "--provider-physical-network", PUBLIC_PHYSNET, uniq("public"))
    cli("subnet", "create", "--network", ext["id"], "--subnet-range", str(PUBLIC_V4.network), "--no-dhcp",
        "--gateway", UPSTREAM, "--allocation-pool", "start=172.24.4.100,end=172.24.4.200", uniq("public-v4"))
    cli("subnet", "create", "--network", ext["id"], "--ip-version", "6", "--subnet-range",
        str(PUBLIC_V6.network), "--no-dhcp", "--gateway", str(PUBLIC_V6.ip), uniq("public-v6"))
    subnets = {}
    for key, cidr in (("a", "10.81.0.0/24"), ("b", "10.82.0.0/24")):
        subnets[key] = lab.network(uniq(f"priv{key}"), cidr)[1]
    router = cli("router", "create", "--external-gateway", ext["id"], uniq("r"))
    for sub in subnets.values():
        cli("router", "add", "subnet", router["id"], sub["id"], fmt=False)
    host = lab.wait("L3 scheduling", lambda: lab.call("GET", f"/v2.0/routers/{router['id']}/l3-agents")["agents"])
    # The instances get their project's default group (ingress only from its members): open ICMP and the
    # echo port from anywhere, as a user does to reach instances through floating IPs.
    default = lab.call("GET", "/v2.0/security-groups",
                       params={"name": "default", "project_id": router["project_id"]})["security_groups"][0]
    for rule in (("--protocol", "icmp"), ("--protocol", "tcp", "--dst-port", str(PORT))):
        cli("security", "group", "rule", "create", "--ingress", *rule, default["id"])
    l3 = lab.agents[host[0]["host"]]
    servers: list[subprocess.Popen[bytes]] = [
        lab.underlay.upstream_popen([PY, "-c", PEER_SERVER, str(PORT)])]
    vms = {}
    try:
        # c shares a's subnet, on the other host.
        for key, agent in (("a", lab.agents["h1"]), ("b", lab.agents["h2"]), ("c", lab.agents["h2"])):
            name = uniq(f"vm{key}")
            net_id = subnets["b" if key == "b" else "a"]["network_id"]
            agent.neutrino("instance", "create", "--network", net_id, name)
            vms[key] = (agent, name, lab.port(name)["fixed_ips"][0]["ip_address"])
            servers.append(agent.host.popen(["ip", "netns", "exec", f"lab-{name}", PY, "-c", PEER_SERVER,
                                             str(PORT)]))
        r = Routed(lab, router, l3, ext, subnets, vms)
        lab.wait("the router's ports to be up", lambda: all(
            p["status"] == "ACTIVE" for p in lab.call("GET", "/v2.0/ports", params={"device_id": router["id"]})
            ["ports"]), timeout=30)
        yield r
    finally:
        for proc in servers:
            proc.kill()
            proc.wait()
        for agent, name, _ in vms.values():
            agent.neutrino("instance", "delete", name, check=False)


def test_instances_route_across_subnets(routed: Routed) -> None:
    for key, other in (("a", "b"), ("b", "a")):
        agent, name, _ = routed.vms[key]
        default = agent.ns(f"lab-{name}", "ip", "route", "show", "default").stdout
        assert f"via {routed.subnets[key]['gateway_ip']}" in default, default  # from DHCP
        target = routed.vms[other][2]
        assert routed.lab.wait("a ping across the router", lambda k=key, t=target: routed.ping(k, t))
    # A connection across keeps its addresses: routing, no NAT between internal subnets.
    assert routed.seen_from("a", routed.vms["b"][2]) == routed.vms["a"][2]


def test_snat_to_the_gateway_address_and_without_snat(routed: Routed) -> None:
    lab, gw = routed.lab, routed.gateway_ip()
    assert lab.wait("SNAT to the upstream", lambda: routed.seen_from("a", UPSTREAM)) == gw
    assert routed.seen_from("b", UPSTREAM) == gw
    # The router's own IPv6 gateway and default route.
    routes6 = routed.l3.ns(routed.namespace, "ip", "-6", "route", "show", "default").stdout
    assert f"via {PUBLIC_V6.ip}" in routes6, routes6
    assert routed.l3.ns(routed.namespace, "ping", "-6", "-c", "1", "-W", "2", str(PUBLIC_V6.ip)).returncode == 0

    # enable_snat off (admin): the upstream sees the instance itself, and routes the subnet back.
    rid, ext = routed.router["id"], routed.ext["id"]
    cidr = routed.subnets["a"]["cidr"]
    lab.underlay.upstream_run(["ip", "route", "add", cidr, "via", gw], check=True)
    try:
        lab.call("PUT", f"/v2.0/routers/{rid}", 200, json={"router": {"external_gateway_info": {
            "network_id": ext, "enable_snat": False}}})
        assert lab.wait("no SNAT", lambda: routed.seen_from("a", UPSTREAM) == routed.vms["a"][2])
    finally:
        lab.call("PUT", f"/v2.0/routers/{rid}", 200, json={"router": {"external_gateway_info": {
            "network_id": ext, "enable_snat": True}}})
        lab.underlay.upstream_run(["ip", "route", "del", cidr])
    assert lab.wait("SNAT again", lambda: routed.seen_from("a", UPSTREAM) == routed.gateway_ip())


def test_floating_ip_both_ways_hairpin_and_disassociate(routed: Routed) -> None:
    lab = routed.lab
    port = lab.port(routed.vms["a"][1])
    fip = lab.call("POST", "/v2.0/floatingips", 201, json={"floatingip": {
        "floating_network_id": routed.ext["id"], "port_id": port["id"]}})["floatingip"]
    address = fip["floating_ip_address"]
    assert fip["fixed_ip_address"] == routed.vms["a"][2]
    try:
        # The upstream reaches the instance by it and keeps its own address (1:1, no masquerade).
        assert lab.wait("the floating IP from the upstream", lambda: routed.upstream_sees(address)) == UPSTREAM
        assert lab.wait("status ACTIVE", lambda: lab.call(
            "GET", f"/v2.0/floatingips/{fip['id']}")["floatingip"]["status"] == "ACTIVE")
        # The instance's own traffic leaves from its floating IP; the other one's still from the gateway.
        assert routed.seen_from("a", UPSTREAM) == address
        assert routed.seen_from("b", UPSTREAM) == routed.gateway_ip()
        # Hairpin: instances reach it by its floating IP, from another subnet and from its own (where the
        # answer would go straight back, not through the router, were the router not masquerading it).
        assert lab.wait("hairpin", lambda: routed.seen_from("b", address)) is not None
        assert routed.seen_from("c", address) is not None
    finally:
        lab.call("PUT", f"/v2.0/floatingips/{fip['id']}", 200, json={"floatingip": {"port_id": None}})
    assert lab.wait("disassociated: unreachable", lambda: routed.upstream_sees(address, timeout=1) is None)
    assert lab.wait("back to the gateway address", lambda: routed.seen_from("a", UPSTREAM) == routed.gateway_ip())
    assert lab.wait("status DOWN", lambda: lab.call(
        "GET", f"/v2.0/floatingips/{fip['id']}")["floatingip"]["status"] == "DOWN")
    lab.call("DELETE", f"/v2.0/floatingips/{fip['id']}", 204)


def test_extra_routes_are_kernel_routes(routed: Routed) -> None:
    lab, rid = routed.lab, routed.router["id"]
    nexthop = routed.vms["b"][2]
    lab.call("PUT", f"/v2.0/routers/{rid}/add_extraroutes", 200, json={"router": {"routes": [
        {"destination": "192.168.77.0/24", "nexthop": nexthop}]}})

    def route() -> str:
        return routed.l3.ns(routed.namespace, "ip", "route", "show", "192.168.77.0/24").stdout

    assert lab.wait("the extra route", lambda: f"via {nexthop}" in route())
    lab.call("PUT", f"/v2.0/routers/{rid}/remove_extraroutes", 200, json={"router": {"routes": [
        {"destination": "192.168.77.0/24", "nexthop": nexthop}]}})
    assert lab.wait("the extra route removed", lambda: route().strip() == "")


def test_tcp_through_snat_survives_an_agent_restart(routed: Routed) -> None:
    agent, name, _ = routed.vms["a"]
    client = agent.host.popen(["ip", "netns", "exec", f"lab-{name}", PY, "-c", PEER_CLIENT, UPSTREAM, str(PORT),
                               "20"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert client.stdin is not None and client.stdout is not None
    try:
        assert client.stdout.readline().strip().decode() == routed.gateway_ip()

        def echo(text: str) -> str:
            assert client.stdin is not None and client.stdout is not None
            client.stdin.write(f"{text}\n".encode())
            client.stdin.flush()
            return client.stdout.readline().strip().decode()

        assert echo("before") == "before"
        log = routed.l3.state_dir / "agent.log"
        starts = log.read_text().count("pass 1 at revision")
        routed.l3.stop()
        routed.l3.start()
        first = routed.lab.wait("the restarted agent's first pass", lambda: re.findall(
            r"pass 1 at revision \d+: (\d+) changes", log.read_text())[starts:], timeout=30)
        assert first[0] == "0", first  # the same ruleset: nothing re-applied, conntrack untouched
        time.sleep(0.5)
        assert echo("after") == "after"
    finally:
        client.kill()
        client.wait()


def test_interface_removed_then_router_deleted(routed: Routed) -> None:
    lab, rid = routed.lab, routed.router["id"]
    assert routed.ping("a", routed.vms["b"][2])
    lab.call("PUT", f"/v2.0/routers/{rid}/remove_router_interface", 200,
             json={"subnet_id": routed.subnets["b"]["id"]})
    assert lab.wait("east-west stopped", lambda: not routed.ping("a", routed.vms["b"][2]))
    resp = lab.api.delete(f"/v2.0/routers/{rid}")
    assert resp.status_code == 409 and resp.json()["NeutronError"]["type"] == "RouterInUse", resp.text
    lab.call("PUT", f"/v2.0/routers/{rid}/remove_router_interface", 200,
             json={"subnet_id": routed.subnets["a"]["id"]})
    lab.call("DELETE", f"/v2.0/routers/{rid}", 204)
    assert lab.wait("the router namespace gone",
                    lambda: routed.namespace not in routed.l3.host.nested_namespaces(), timeout=20)
    assert routed.seen_from("a", UPSTREAM, timeout=1) is None
    # The external network has no gateway left on it: it can go.
    lab.call("DELETE", f"/v2.0/networks/{routed.ext['id']}", 204)


def eui64(cidr: str, mac: str) -> str:
    """The SLAAC address a host with ``mac`` forms on the /64 ``cidr`` (RFC 4291 appendix A)."""
    octets = bytearray(int(x, 16) for x in mac.split(":"))
    octets[0] ^= 0x02  # the universal/local bit, inverted
    iid = int.from_bytes(bytes(octets[:3]) + b"\xff\xfe" + bytes(octets[3:]), "big")
    return str(ipaddress.IPv6Network(cidr).network_address + iid)


def test_slaac_instances_route_across_a_router(lab: Lab) -> None:
    subnets: dict[str, dict[str, Any]] = {}
    for key, cidr in (("a", "2001:db8:83::/64"), ("b", "2001:db8:84::/64")):
        net = lab.call("POST", "/v2.0/networks", 201, json={"network": {"name": uniq(f"v6{key}")}})["network"]
        subnets[key] = lab.call("POST", "/v2.0/subnets", 201, json={"subnet": {
            "network_id": net["id"], "cidr": cidr, "ip_version": 6, "ipv6_ra_mode": "slaac",
            "ipv6_address_mode": "slaac"}})["subnet"]
    rid = lab.call("POST", "/v2.0/routers", 201, json={"router": {"name": uniq("r6")}})["router"]["id"]
    ifaces = {key: lab.call("PUT", f"/v2.0/routers/{rid}/add_router_interface", 200,
                            json={"subnet_id": sub["id"]}) for key, sub in subnets.items()}
    vms: dict[str, tuple[Agent, str]] = {}
    try:
        [hosting] = lab.wait("L3 scheduling", lambda: lab.call("GET", f"/v2.0/routers/{rid}/l3-agents")["agents"])
        l3 = lab.agents[hosting["host"]]
        for key, agent in (("a", lab.agents["h1"]), ("b", lab.agents["h2"])):  # across hosts, too
            name = uniq(f"v6{key}")
            agent.neutrino("instance", "create", "--network", subnets[key]["network_id"], name)
            vms[key] = (agent, name)
        addresses = {}
        for key, (agent, name) in vms.items():
            port = lab.port(name)
            [fixed] = port["fixed_ips"]
            want = fixed["ip_address"]
            assert want == eui64(subnets[key]["cidr"], port["mac_address"])  # what the port announces: SLAAC
            addresses[key] = want
            # The router's qr- link-local address: the default router its advertisements name (never
            # tentative: no DAD in our namespaces, else the RA daemon would answer from the global address
            # meanwhile, which hosts ignore, RFC 4861 6.1.2). The router's own advertisement (not only the
            # DHCP server's, whose router lifetime is 0) names it as a default router and its prefix as
            # autonomous.
            qr = f"qr-{ifaces[key]['port_id'][:11]}"

            def link_local(qr: str = qr) -> str | None:
                shown = l3.ns(f"qrouter-{rid}", "ip", "-6", "-o", "addr", "show", "dev", qr, "scope", "link").stdout
                return None if "tentative" in shown or " inet6 " not in shown else \
                    shown.split(" inet6 ", 1)[1].split("/", 1)[0]

            router_ll = lab.wait(f"{qr}'s link-local address", link_local)
            probe = agent.ns(f"lab-{name}", PY, "-c", RA_PROBE, router_ll, subnets[key]["cidr"], "5").stdout
            heard = [line.split() for line in probe.splitlines() if line.startswith(f"{router_ll} ")]
            assert heard and int(heard[-1][1]) > 0 and subnets[key]["cidr"] in heard[-1][2:], probe

            def slaac(agent: Agent = agent, name: str = name, want: str = want, router_ll: str = router_ll) -> bool:
                got = agent.ns(f"lab-{name}", "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global")
                default = agent.ns(f"lab-{name}", "ip", "-6", "route", "show", "default").stdout
                return f" {want}/64 " in got.stdout and f"via {router_ll} dev eth0 proto ra" in default

            try:
                lab.wait(f"{name}'s SLAAC address {want} and default route via {router_ll}", slaac, timeout=60)
            except AssertionError:  # what the instance and the router have
                print(agent.ns(f"lab-{name}", "ip", "-6", "addr").stdout,
                      agent.ns(f"lab-{name}", "ip", "-6", "route").stdout,
                      l3.ns(f"qrouter-{rid}", "ip", "-6", "addr").stdout)
                raise
        for key, other in (("a", "b"), ("b", "a")):
            agent, name = vms[key]
            assert lab.wait(f"ping6 {key} -> {other} across the router", lambda a=agent, n=name, t=addresses[other]:
                            a.ns(f"lab-{n}", "ping", "-6", "-c", "1", "-W", "1", t).returncode == 0, timeout=20)
    finally:
        for agent, name in vms.values():
            agent.neutrino("instance", "delete", name, check=False)
        for sub in subnets.values():
            lab.call("PUT", f"/v2.0/routers/{rid}/remove_router_interface", json={"subnet_id": sub["id"]})
        lab.call("DELETE", f"/v2.0/routers/{rid}")
        for sub in subnets.values():
            lab.call("DELETE", f"/v2.0/networks/{sub['network_id']}")
