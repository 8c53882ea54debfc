"""The agent heals itself: faults injected behind its back inside a throwaway host are repaired within 5 s.

Each test breaks one thing the way an operator's mistake or a crash would (kill -9, ``ip link del``) and
polls, from the moment just before the fault, for what a user would see working again: DHCP answering, instances
pinging each other, the port's status. Nothing here waits a fixed time.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from neutrino.lab.instances import SCRIPT
from tests.integration.conftest import Agent, Lab

pytestmark = pytest.mark.xdist_group(name="kernel")

REPAIR = 5.0  # seconds from the fault to the user seeing it work again


def uniq(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:5]}"


def repaired(what: str, check: Callable[[], Any], since: float, limit: float = REPAIR) -> float:
    """Poll ``check`` until it holds; the seconds since ``since`` (the fault), which must be under ``limit``."""
    while not check():
        assert time.monotonic() - since < limit, f"{what}: not repaired {limit:.0f} s after the fault"
        time.sleep(0.02)
    took = time.monotonic() - since
    assert took < limit, f"{what}: repaired only after {took:.1f} s"
    return took


@contextmanager
def instances(agent: Agent, network_id: str, *names: str) -> Iterator[None]:
    try:
        for name in names:
            agent.neutrino("instance", "create", "--network", network_id, name)
        yield
    finally:
        for name in names:
            agent.neutrino("instance", "delete", name, check=False)


def links(agent: Agent, *args: str) -> str:
    return agent.host.run(["ip", "-o", "link", "show", *args]).stdout


def pings(agent: Agent, name: str, ip: str) -> bool:
    return agent.ns(f"lab-{name}", "ping", "-c", "1", "-W", "1", ip).returncode == 0


def dhcp_renews(agent: Agent, name: str, ip: str) -> bool:
    """The instance drops its address and asks DHCP again (one try of dhclient): True when it is back."""
    d = agent.state_dir / "agent" / "instances" / name
    pid_file = d / "dhclient.pid"
    if pid_file.exists():
        agent.host.run(["kill", pid_file.read_text().strip()])
        pid_file.unlink()
    agent.ns(f"lab-{name}", "ip", "-4", "addr", "flush", "dev", "eth0")
    agent.ns(f"lab-{name}", "timeout", "4", "dhclient", "-1", "-4", "-cf", str(d / "dhclient.conf"), "-sf",
             str(SCRIPT), "-pf", str(pid_file), "-lf", str(d / "dhclient.leases"), "eth0")
    return f"{ip}/" in agent.ns(f"lab-{name}", "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout


def dhcp_agent(lab: Lab, network_id: str) -> Agent:
    host = lab.wait("DHCP scheduling", lambda: lab.call("GET", f"/v2.0/networks/{network_id}/dhcp-agents")[
        "agents"])[0]["host"]
    agent = lab.agents[host]
    lab.wait("dnsmasq", lambda: lab.dnsmasq_pid(agent, network_id))
    return agent


def test_killed_dnsmasq_is_started_again_and_serves(lab: Lab) -> None:
    h1 = lab.agents["h1"]
    net, _ = lab.network(uniq("heal"), "10.71.0.0/24")
    a = uniq("d")
    with instances(h1, net["id"], a):
        ip = lab.port(a)["fixed_ips"][0]["ip_address"]
        server = dhcp_agent(lab, net["id"])
        old = lab.dnsmasq_pid(server, net["id"])
        assert old is not None
        fault = time.monotonic()
        os.kill(old, signal.SIGKILL)
        repaired("a new dnsmasq for the network", lambda: lab.dnsmasq_pid(server, net["id"]) not in (None, old), fault)
        repaired("the instance's DHCP renewal", lambda: dhcp_renews(h1, a, ip), fault)
        log = (server.state_dir / "agent.log").read_text()
        assert f"dnsmasq for network {net['id']} is gone" in log


def test_deleted_bridge_is_rebuilt_with_its_ports(lab: Lab) -> None:
    h1 = lab.agents["h1"]
    net, _ = lab.network(uniq("heal"), "10.72.0.0/24")
    a, b = uniq("e"), uniq("f")
    bridge = f"brq{net['id'][:11]}"
    with instances(h1, net["id"], a, b):
        ip_b = lab.port(b)["fixed_ips"][0]["ip_address"]
        assert pings(h1, a, ip_b)
        ports = {line.split(":")[1].strip().split("@")[0] for line in links(h1, "master", bridge).splitlines()}
        assert {f"tap{lab.port(n)['id'][:11]}" for n in (a, b)} <= ports and any(p.startswith("vxlan-") for p in ports)
        fault = time.monotonic()  # before the command: its run time counts too
        assert h1.host.run(["ip", "link", "del", bridge]).returncode == 0
        repaired("the instances pinging each other", lambda: pings(h1, a, ip_b), fault)
        now = {line.split(":")[1].strip().split("@")[0] for line in links(h1, "master", bridge).splitlines()}
        assert now == ports, f"bridge {bridge} was rebuilt with {now}, had {ports}"


def test_deleted_dhcp_tap_is_made_again_and_serves(lab: Lab) -> None:
    """The DHCP port's veth is the agent's own: it makes the pair again, addresses and all."""
    h1 = lab.agents["h1"]
    net, _ = lab.network(uniq("heal"), "10.73.0.0/24")
    a = uniq("g")
    with instances(h1, net["id"], a):
        ip = lab.port(a)["fixed_ips"][0]["ip_address"]
        server = dhcp_agent(lab, net["id"])
        dhcp_port = lab.call("GET", "/v2.0/ports", params={"network_id": net["id"], "device_owner": "network:dhcp"})[
            "ports"][0]
        tap = f"tap{dhcp_port['id'][:11]}"
        fault = time.monotonic()  # before the command: its run time counts too
        assert server.host.run(["ip", "link", "del", tap]).returncode == 0
        repaired("the DHCP port's tap", lambda: f"master brq{net['id'][:11]}" in links(server, tap), fault)
        repaired("the instance's DHCP renewal", lambda: dhcp_renews(h1, a, ip), fault)


def test_deleted_instance_tap_is_down_then_plugged_again_when_it_returns(lab: Lab) -> None:
    """An instance's tap is its hypervisor's (here: ``neutrino instance``), not the agent's: deleting it
    takes the instance's NIC with it, and the agent cannot make a VM's NIC. Repaired means: the port says
    DOWN at once, and when the device comes back (as a hypervisor re-plugs a VM) the agent wires it into
    the network again and says ACTIVE, and the instance is reachable again."""
    h1 = lab.agents["h1"]
    net, _ = lab.network(uniq("heal"), "10.74.0.0/24")
    a, b = uniq("h"), uniq("i")
    bridge = f"brq{net['id'][:11]}"
    with instances(h1, net["id"], a, b):
        port = lab.port(b)
        ip_b = port["fixed_ips"][0]["ip_address"]
        tap = f"tap{port['id'][:11]}"
        assert port["status"] == "ACTIVE" and pings(h1, a, ip_b)
        fault = time.monotonic()  # before the command: its run time counts too
        assert h1.host.run(["ip", "link", "del", tap]).returncode == 0
        repaired("the port reported DOWN", lambda: lab.port(b)["status"] == "DOWN", fault)

        # The hypervisor plugs the instance's NIC again: a fresh veth pair, the port's MAC inside.
        back = time.monotonic()
        for argv in (["ip", "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", f"lab-{b}"],
                     ["ip", "-n", f"lab-{b}", "link", "set", "eth0", "address", port["mac_address"], "up"],
                     ["ip", "link", "set", tap, "up"]):
            assert h1.host.run(argv).returncode == 0, argv
        repaired("the tap plugged into the bridge", lambda: f"master {bridge}" in links(h1, tap), back)
        repaired("the port reported ACTIVE", lambda: lab.port(b)["status"] == "ACTIVE", back)
        repaired("the instance's DHCP address", lambda: dhcp_renews(h1, b, ip_b), back)
        repaired("the instances pinging each other", lambda: pings(h1, a, ip_b), back)


def test_deleted_dhcp_namespace_and_lost_address_are_repaired_by_the_periodic_pass(lab: Lab) -> None:
    """Changes inside a qdhcp namespace (or of the namespace itself) send no event the agent listens to:
    the periodic pass (agent.resync_seconds, 2 s) repairs them."""
    h1 = lab.agents["h1"]
    net, _ = lab.network(uniq("heal"), "10.75.0.0/24")
    a = uniq("j")
    with instances(h1, net["id"], a):
        ip = lab.port(a)["fixed_ips"][0]["ip_address"]
        server = dhcp_agent(lab, net["id"])
        dhcp_port = lab.call("GET", "/v2.0/ports", params={"network_id": net["id"], "device_owner": "network:dhcp"})[
            "ports"][0]
        ns, dev = f"qdhcp-{net['id']}", f"ns-{dhcp_port['id'][:11]}"
        dhcp_ip = dhcp_port["fixed_ips"][0]["ip_address"]

        def has_address() -> bool:
            return f"{dhcp_ip}/24" in server.ns(ns, "ip", "-4", "-o", "addr", "show", "dev", dev).stdout

        fault = time.monotonic()  # before the command: its run time counts too
        assert server.ns(ns, "ip", "addr", "flush", "dev", dev).returncode == 0
        repaired("the DHCP port's address", has_address, fault)
        repaired("the instance's DHCP renewal", lambda: dhcp_renews(h1, a, ip), fault)

        old = lab.dnsmasq_pid(server, net["id"])
        fault = time.monotonic()  # before the command: its run time counts too
        assert server.host.run(["ip", "netns", "del", ns]).returncode == 0  # dnsmasq keeps the old one alive
        repaired("the qdhcp namespace and a new dnsmasq in it", lambda: ns in server.host.nested_namespaces() and
                 has_address() and lab.dnsmasq_pid(server, net["id"]) not in (None, old), fault)
        repaired("the instance's DHCP renewal", lambda: dhcp_renews(h1, a, ip), fault)


def test_dnsmasq_files_made_unreachable_are_reachable_again(lab: Lab) -> None:
    """dnsmasq reads its files after dropping root. They live in a directory neutrino made and owns
    (/run/neutrino/<owner>/dnsmasq/<network>, 0755; ``<state>/agent/dhcp`` points there), so the mode of
    the state directory does not matter (pytest sets its base temp directory to 0700). When one of
    neutrino's own directories loses its x bit, a reload fails and dnsmasq answers nobody; the next pass
    makes it searchable again and has dnsmasq reread its files."""
    h1 = lab.agents["h1"]
    net, _ = lab.network(uniq("heal"), "10.76.0.0/24")
    a = uniq("k")
    with instances(h1, net["id"], a):
        ip = lab.port(a)["fixed_ips"][0]["ip_address"]
        server = dhcp_agent(lab, net["id"])
        pid = lab.dnsmasq_pid(server, net["id"])
        assert pid is not None
        (server.state_dir / "agent").chmod(0o700)  # not neutrino's concern any more: dnsmasq still reads
        own_dir = (server.state_dir / "agent" / "dhcp").resolve()
        assert own_dir.is_relative_to("/run/neutrino")
        log = own_dir / net["id"] / "dnsmasq.log"
        fault = time.monotonic()
        own_dir.chmod(0o700)
        os.kill(pid, signal.SIGHUP)
        lab.wait("dnsmasq failing to read", lambda: "Permission denied" in log.read_text(), timeout=REPAIR)
        repaired("the instance's DHCP renewal", lambda: dhcp_renews(h1, a, ip), fault)
        assert own_dir.stat().st_mode & 0o777 == 0o755
        assert lab.dnsmasq_pid(server, net["id"]) == pid  # reloaded, not restarted
