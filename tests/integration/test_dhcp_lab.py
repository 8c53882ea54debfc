"""Issue scenario end to end: ports become interfaces, instances get exactly their port's address by DHCP."""

from __future__ import annotations

import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from neutrino.lab.instances import SCRIPT
from tests.integration.conftest import Lab

# Kernel tests share one xdist worker: its end-of-session leak check then sees only its own objects.
pytestmark = pytest.mark.xdist_group(name="kernel")


def uniq(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:5]}"


def has_route(table: str, dst: str, *words: str) -> bool:
    """A line of ``ip route`` output for ``dst`` that has all ``words`` in it."""
    return any(line.split()[:1] == [dst] and all(w in line.split() for w in words) for line in table.splitlines())


def test_instances_get_their_addresses_and_ping(lab: Lab) -> None:
    h1 = lab.agents["h1"]
    net, sub = lab.network(uniq("dhcp"), "10.61.0.0/24")
    dhcp_host = lab.wait("DHCP scheduling", lambda: lab.call(
        "GET", f"/v2.0/networks/{net['id']}/dhcp-agents")["agents"])[0]["host"]
    agent = lab.agents[dhcp_host]
    lab.wait("dnsmasq", lambda: lab.dnsmasq_pid(agent, net["id"]))
    assert f"qdhcp-{net['id']}" in agent.host.nested_namespaces()
    a, b = uniq("a"), uniq("b")
    h1.neutrino("instance", "create", "--network", net["name"], a)
    h1.neutrino("instance", "create", "--network", net["name"], b, "--fixed-ip", "10.61.0.77")
    pid = lab.dnsmasq_pid(agent, net["id"])
    ip_a = lab.port(a)["fixed_ips"][0]["ip_address"]
    assert lab.port(b)["fixed_ips"][0]["ip_address"] == "10.61.0.77"
    for name, ip in ((a, ip_a), (b, "10.61.0.77")):
        shown = h1.ns(f"lab-{name}", "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout
        assert f"{ip}/24" in shown, shown
        route = h1.ns(f"lab-{name}", "ip", "route", "show", "default").stdout
        assert "via 10.61.0.1" in route, route
        mtu = h1.ns(f"lab-{name}", "cat", "/sys/class/net/eth0/mtu").stdout.strip()
        assert mtu == "1450"
        assert lab.port(name)["status"] == "ACTIVE"
    ping = h1.neutrino("instance", "exec", a, "--", "ping", "-c", "2", "-W", "1", "10.61.0.77", check=False)
    assert ping.returncode == 0, ping.stdout

    # New ports are a hosts-file change: the same dnsmasq (same PID) serves them after SIGHUP.
    assert lab.dnsmasq_pid(agent, net["id"]) == pid
    # A second subnet: served too (dnsmasq 2.90 reads ranges only at start: see compile.dhcp), and the
    # instances already there keep their addresses.
    # Its gateway lies outside it and it has a host route: the client gets both as classless routes.
    lab.call("POST", "/v2.0/subnets", 201, json={"subnet": {
        "network_id": net["id"], "cidr": "10.62.0.0/24", "ip_version": 4, "gateway_ip": "10.99.0.1",
        "host_routes": [{"destination": "172.20.0.0/16", "nexthop": "10.62.0.254"}]}})
    c = uniq("c")
    h1.neutrino("instance", "create", "--network", net["name"], c, "--fixed-ip", "10.62.0.50")
    assert "10.62.0.50/24" in h1.ns(f"lab-{c}", "ip", "-4", "-o", "addr").stdout
    routes = h1.ns(f"lab-{c}", "ip", "-4", "route").stdout
    assert has_route(routes, "default", "10.99.0.1"), routes
    assert has_route(routes, "10.99.0.1", "link"), routes
    assert has_route(routes, "172.20.0.0/16", "10.62.0.254"), routes
    assert f"{ip_a}/24" in h1.ns(f"lab-{a}", "ip", "-4", "-o", "addr").stdout

    # The port goes: its address is no longer offered (a client with that MAC gets nothing).
    mac = lab.port(b)["mac_address"]
    h1.neutrino("instance", "delete", b)
    ns = uniq("probe")
    h1.host.run(["ip", "netns", "add", ns])
    try:
        probe_port = lab.call("POST", "/v2.0/ports", 201, json={"port": {
            "network_id": net["id"], "name": "probe", "device_owner": "compute:lab",
            "binding:host_id": "h1", "fixed_ips": [{"subnet_id": sub["id"]}]}})["port"]
        lab.call("DELETE", f"/v2.0/ports/{probe_port['id']}", 204)
        tap = f"tap{probe_port['id'][:11]}"
        h1.host.run(["ip", "link", "add", tap, "type", "veth", "peer", "name", "eth0", "netns", ns])
        h1.host.run(["ip", "-n", ns, "link", "set", "eth0", "address", mac, "up"])
        br = f"brq{net['id'][:11]}"
        h1.host.run(["ip", "link", "set", tap, "master", br, "up"])
        got = h1.host.run(["ip", "netns", "exec", ns, "timeout", "6", "dhclient", "-1", "-4", "-sf", "/bin/true",
                           "-lf", "/dev/null", "-pf", f"/tmp/{ns}.pid", "eth0"], timeout=30)
        assert got.returncode != 0, "a deleted port's MAC still got a lease"
        h1.host.run(["ip", "link", "del", tap])
    finally:
        h1.host.run(["ip", "netns", "del", ns])
    for name in (a, c):
        h1.neutrino("instance", "delete", name)


def test_dhcp_disabled_means_static_and_no_dnsmasq(lab: Lab) -> None:
    h1 = lab.agents["h1"]
    net, sub = lab.network(uniq("static"), "10.63.0.0/24", dhcp=False)
    # A gateway outside the subnet: the static configuration reaches it on-link.
    lab.call("PUT", f"/v2.0/subnets/{sub['id']}", 200, json={"subnet": {"gateway_ip": "10.98.0.1"}})
    a, b = uniq("s"), uniq("t")
    h1.neutrino("instance", "create", "--network", net["id"], a)
    routes = h1.ns(f"lab-{a}", "ip", "-4", "route").stdout
    assert has_route(routes, "default", "10.98.0.1") and has_route(routes, "10.98.0.1", "link"), routes
    h1.neutrino("instance", "create", "--network", net["id"], b)
    assert lab.call("GET", f"/v2.0/networks/{net['id']}/dhcp-agents")["agents"] == []
    assert lab.call("GET", "/v2.0/ports", params={"network_id": net["id"], "device_owner": "network:dhcp"})[
        "ports"] == []
    assert all(lab.dnsmasq_pid(ag, net["id"]) is None for ag in lab.agents.values())
    ip_b = lab.port(b)["fixed_ips"][0]["ip_address"]
    assert ip_b.startswith("10.63.0.")
    lab.wait("the instance port to be wired", lambda: lab.port(b)["status"] == "ACTIVE")
    ping = h1.neutrino("instance", "exec", a, "--", "ping", "-c", "2", "-W", "1", ip_b, check=False)
    assert ping.returncode == 0, ping.stdout
    # An administratively down port carries nothing and says DOWN; back up, it works again.
    port_b = lab.port(b)["id"]
    for up in (False, True):
        lab.call("PUT", f"/v2.0/ports/{port_b}", 200, json={"port": {"admin_state_up": up}})
        lab.wait(f"port status {'ACTIVE' if up else 'DOWN'}",
                 lambda up=up: lab.port(b)["status"] == ("ACTIVE" if up else "DOWN"))
        ping = h1.neutrino("instance", "exec", a, "--", "ping", "-c", "1", "-W", "1", ip_b, check=False)
        assert (ping.returncode == 0) == up, ping.stdout
    for name in (a, b):
        h1.neutrino("instance", "delete", name)


def test_agent_restart_keeps_dnsmasq_and_traffic(lab: Lab) -> None:
    h1 = lab.agents["h1"]
    net, _ = lab.network(uniq("restart"), "10.64.0.0/24")
    a, b = uniq("r"), uniq("q")
    h1.neutrino("instance", "create", "--network", net["id"], a)
    h1.neutrino("instance", "create", "--network", net["id"], b)
    ip_b = lab.port(b)["fixed_ips"][0]["ip_address"]
    pids = {name: lab.dnsmasq_pid(ag, net["id"]) for name, ag in lab.agents.items()}
    assert any(pids.values())
    pinger = h1.host.popen(["ip", "netns", "exec", f"lab-{a}", "ping", "-i", "0.02", "-W", "1", ip_b],
                           stdout=subprocess.PIPE)
    try:
        time.sleep(0.5)
        h1.stop(kill=True)
        time.sleep(0.3)
        h1.start()
        lab.wait("the restarted agent's first pass", lambda: "pass 1 " in (h1.state_dir / "agent.log").read_text()
                 .rsplit("starting", 1)[-1])
        time.sleep(0.5)
    finally:
        pinger.send_signal(signal.SIGINT)
        out, _ = pinger.communicate(timeout=10)
    summary = next(line for line in out.decode().splitlines() if "packets transmitted" in line)
    sent, received = int(summary.split()[0]), int(summary.split()[3])
    assert sent > 40 and received == sent, summary
    assert {name: lab.dnsmasq_pid(ag, net["id"]) for name, ag in lab.agents.items()} == pids
    for name in (a, b):
        h1.neutrino("instance", "delete", name)


def test_instances_on_two_hosts_talk_over_vxlan(lab: Lab) -> None:
    h1, h2 = lab.agents["h1"], lab.agents["h2"]
    net, _ = lab.network(uniq("vx"), "10.65.0.0/24")
    a, b = uniq("x"), uniq("y")
    h1.neutrino("instance", "create", "--network", net["id"], a)
    h2.neutrino("instance", "create", "--network", net["id"], b)
    ip_b = lab.port(b)["fixed_ips"][0]["ip_address"]
    vni = lab.call("GET", f"/v2.0/networks/{net['id']}")["network"]["provider:segmentation_id"]
    assert f"vxlan-{vni}" in h1.host.run(["ip", "-o", "link"]).stdout
    ping = h1.neutrino("instance", "exec", a, "--", "ping", "-c", "3", "-W", "1", ip_b, check=False)
    assert ping.returncode == 0, ping.stdout
    h1.neutrino("instance", "delete", a)
    h2.neutrino("instance", "delete", b)
    # The last port of the network on h1 is gone (its DHCP may live on h2): no bridge left on h1 unless
    # it serves DHCP for the network.
    serving = {ag["host"] for ag in lab.call("GET", f"/v2.0/networks/{net['id']}/dhcp-agents")["agents"]}
    if "h1" not in serving:
        lab.wait("h1 to remove the bridge", lambda: f"brq{net['id'][:11]}" not in
                 h1.host.run(["ip", "-o", "link"]).stdout)


def test_cleanup_removes_this_hosts_data_path_and_a_restart_rebuilds_it(lab: Lab) -> None:
    lab.agents["h1"].neutrino("instance", "create", "--network",
                              lab.network(uniq("clean"), "10.66.0.0/24")[0]["id"], inst := uniq("k"))
    port = lab.port(inst)
    dhcp_host = lab.call("GET", f"/v2.0/networks/{port['network_id']}/dhcp-agents")["agents"][0]["host"]
    agent = lab.agents[dhcp_host]  # the DHCP host: it has the bridge, a qdhcp namespace and dnsmasq
    bridge = f"brq{port['network_id'][:11]}"

    def made() -> dict[str, object]:
        links = agent.host.run(["ip", "-o", "link"]).stdout
        return {"bridge": f" {bridge}:" in links, "vxlan": " vxlan-" in links,
                "qdhcp": any(n.startswith("qdhcp-") for n in agent.host.nested_namespaces()),
                "dnsmasq": lab.dnsmasq_pid(agent, port["network_id"]) is not None}

    assert all(made().values()), made()
    refused = agent.neutrino("cleanup", check=False)
    assert refused.returncode == 1 and "running" in refused.stderr
    agent.stop()
    try:
        agent.neutrino("cleanup")
        assert not any(made().values()), made()
        if dhcp_host == "h1":
            assert f"lab-{inst}" not in agent.host.nested_namespaces()
    finally:
        agent.start()
    # The intent was untouched: the next start builds the data path again.
    lab.wait("the data path rebuilt", lambda: all(made().values()), timeout=30)
    if dhcp_host == "h1":
        lab.call("DELETE", f"/v2.0/ports/{port['id']}", 204)
    else:
        lab.agents["h1"].neutrino("instance", "delete", inst)


def test_extra_dhcp_opts_reach_the_instance_and_other_ports_never_restart_dnsmasq(lab: Lab) -> None:
    h1 = lab.agents["h1"]
    net, _ = lab.network(uniq("opts"), "10.67.0.0/24")
    a = uniq("o")
    h1.neutrino("instance", "create", "--network", net["id"], a)
    port = lab.port(a)
    agent = lab.agents[lab.call("GET", f"/v2.0/networks/{net['id']}/dhcp-agents")["agents"][0]["host"]]

    def tagged_pid() -> int | None:
        pid = lab.dnsmasq_pid(agent, net["id"])
        return pid if pid and b"--dhcp-mac=" in Path(f"/proc/{pid}/cmdline").read_bytes() else None

    def renew_mtu() -> str:
        """Restart the instance's DHCP client (a new lease, the options of now); its eth0 MTU after."""
        d = h1.state_dir / "agent" / "instances" / a
        h1.host.run(["kill", (d / "dhclient.pid").read_text().strip()])
        h1.ns(f"lab-{a}", "dhclient", "-1", "-4", "-cf", str(d / "dhclient.conf"), "-sf", str(SCRIPT),
              "-pf", str(d / "dhclient.pid"), "-lf", str(d / "dhclient.leases"), "eth0")
        return h1.ns(f"lab-{a}", "cat", "/sys/class/net/eth0/mtu").stdout.strip()

    assert renew_mtu() == "1450"  # the network's
    opts = [{"opt_name": "mtu", "opt_value": "1400"}]
    lab.call("PUT", f"/v2.0/ports/{port['id']}", 200, json={"port": {"extra_dhcp_opts": opts}})
    pid = lab.wait("dnsmasq tagging the port", tagged_pid)  # a port gaining options: the one restart
    assert renew_mtu() == "1400"
    # Other ports coming and going, and the option's value changing, reload the same process.
    b = uniq("p")
    h1.neutrino("instance", "create", "--network", net["id"], b)
    h1.neutrino("instance", "delete", b)
    opts[0]["opt_value"] = "1380"
    lab.call("PUT", f"/v2.0/ports/{port['id']}", 200, json={"port": {"extra_dhcp_opts": opts}})
    lab.wait("the instance to be offered the new value", lambda: renew_mtu() == "1380")
    assert lab.dnsmasq_pid(agent, net["id"]) == pid
    h1.neutrino("instance", "delete", a)
