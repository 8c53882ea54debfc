"""IPv6 from dnsmasq: SLAAC router advertisements and stateful DHCPv6 to a real dhclient -6."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.integration.conftest import Lab

pytestmark = pytest.mark.xdist_group(name="kernel")


def test_slaac_and_stateful_dhcpv6(lab: Lab) -> None:
    h1 = lab.agents["h1"]
    tag = uuid.uuid4().hex[:5]
    results = {}
    for mode, cidr in (("slaac", "2001:db8:61::/64"), ("dhcpv6-stateful", "2001:db8:62::/64")):
        net = lab.call("POST", "/v2.0/networks", 201, json={"network": {"name": f"v6{mode[:4]}{tag}"}})["network"]
        lab.call("POST", "/v2.0/subnets", 201, json={"subnet": {
            "network_id": net["id"], "cidr": cidr, "ip_version": 6, "ipv6_ra_mode": mode,
            "ipv6_address_mode": mode}})
        name = f"{mode[:4]}{tag}"
        h1.neutrino("instance", "create", "--network", net["id"], name)
        want = lab.port(name)["fixed_ips"][0]["ip_address"]
        results[mode] = (name, want)

        def has_address(name: str = name, want: str = want) -> bool:
            shown = h1.ns(f"lab-{name}", "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global").stdout
            return f"{want}/" in shown

        try:
            lab.wait(f"{mode} address {want} on {name}", has_address, timeout=40)
        except AssertionError:  # show what the DHCP server and the client saw
            for agent in lab.agents.values():
                for log in (agent.state_dir / "agent" / "dhcp" / net["id"]).glob("dnsmasq.log"):
                    print(log.read_text()[-3000:])
            print((h1.state_dir / "agent" / "instances" / name / "dhclient.log").read_text())
            print(h1.ns(f"lab-{name}", "ip", "-6", "addr").stdout)
            raise
    # SLAAC: the port's address is the EUI-64 one, formed by the instance's kernel from our RA.
    assert ":f816:3eff:fe" in results["slaac"][1]
    # A second instance on the settled SLAAC network (its dnsmasq's first advertisements long sent): its
    # address within a second of `instance create` returning. The instance solicits an advertisement once
    # its port is wired; the kernel's own solicitation at link up went out before the agent plugged the
    # tap, and its next is 4 s later (this took 1.5-4 s before).
    net_id = lab.port(results["slaac"][0])["network_id"]
    late = f"late{tag}"
    h1.neutrino("instance", "create", "--network", net_id, late)
    results["late"] = (late, lab.port(late)["fixed_ips"][0]["ip_address"])
    created = time.monotonic()
    lab.wait(f"SLAAC address on {late}", lambda: f"{results['late'][1]}/" in h1.ns(
        f"lab-{late}", "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global").stdout, timeout=10)
    assert time.monotonic() - created < 1.5, time.monotonic() - created
    for name, _ in results.values():
        h1.neutrino("instance", "delete", name)
