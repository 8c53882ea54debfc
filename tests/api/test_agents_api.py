"""Agents API and DHCP scheduling against a real server (agents registered through the agent channel)."""

from __future__ import annotations

import uuid
from typing import Any

import openstack

from tests.api.conftest import Cli, Raw


def register(raw: Raw, host: str, tunnel_ip: str = "192.0.2.1") -> dict[str, str]:
    ids = {}
    for agent_type, conf in (("DHCP agent", {"dhcp_driver": "dnsmasq"}),
                             ("Linux bridge agent", {"tunneling_ip": tunnel_ip, "tunnel_types": ["vxlan"]})):
        resp = raw("POST", "/agent-api/v1/report", json={"host": host, "agent_type": agent_type,
                                                         "configurations": conf, "start_flag": True})
        assert resp.status_code == 200, resp.text
        ids[agent_type] = resp.json()["id"]
    return ids


def unregister(raw: Raw, ids: dict[str, str]) -> None:
    """Agents left alive would give DHCP ports to other tests' networks on this shared server."""
    for agent_id in ids.values():
        assert raw("DELETE", f"/v2.0/agents/{agent_id}").status_code == 204


def dhcp_ports(raw: Raw, network_id: str) -> list[dict[str, Any]]:
    return list(raw("GET", "/v2.0/ports", params={"network_id": network_id,
                                                 "device_owner": "network:dhcp"}).json()["ports"])


def test_dhcp_scheduling_and_ports(raw: Raw, admin: openstack.connection.Connection, cli: Cli) -> None:
    host = f"host-{uuid.uuid4().hex[:6]}"
    ids = register(raw, host)
    agents = {a["id"]: a for a in raw("GET", "/v2.0/agents", params={"host": host}).json()["agents"]}
    assert set(agents) == set(ids.values())
    assert all(a["alive"] and a["binary"] == "neutrino-agent" for a in agents.values())
    assert {a["Host"] for a in cli("network", "agent", "list", "--host", host)} == {host}

    net = admin.network.create_network(name=f"dhcp-{host}")
    try:
        v4 = admin.network.create_subnet(network_id=net.id, ip_version=4, cidr="10.80.0.0/24")
        hosted = raw("GET", f"/v2.0/networks/{net.id}/dhcp-agents").json()["agents"]
        assert len(hosted) == 1  # dhcp_agents_per_network = 1; other tests' agents may exist too
        dhcp_host = hosted[0]["host"]
        [port] = dhcp_ports(raw, net.id)
        assert port["binding:host_id"] == dhcp_host
        assert [f["subnet_id"] for f in port["fixed_ips"]] == [v4.id]
        # A second DHCP subnet: the same DHCP port gets an address from it too.
        v6 = admin.network.create_subnet(network_id=net.id, ip_version=6, cidr="2001:db8:80::/64",
                                         ipv6_address_mode="dhcpv6-stateful", ipv6_ra_mode="dhcpv6-stateful")
        [again] = dhcp_ports(raw, net.id)
        assert again["id"] == port["id"]
        assert sorted(f["subnet_id"] for f in again["fixed_ips"]) == sorted([v4.id, v6.id])
        # The DHCPv6 subnet goes (its DHCP address with it); then DHCP off on the last one: no DHCP
        # port, no scheduling, and ports still get their addresses.
        admin.network.delete_subnet(v6)
        assert [f["subnet_id"] for f in dhcp_ports(raw, net.id)[0]["fixed_ips"]] == [v4.id]
        admin.network.update_subnet(v4, is_dhcp_enabled=False)
        assert dhcp_ports(raw, net.id) == []
        assert raw("GET", f"/v2.0/networks/{net.id}/dhcp-agents").json()["agents"] == []
        plain = admin.network.create_port(network_id=net.id)
        assert len(plain.fixed_ips) == 1
        admin.network.delete_port(plain)
        # Admin scheduling by hand.
        admin.network.update_subnet(v4, is_dhcp_enabled=True)
        current = raw("GET", f"/v2.0/networks/{net.id}/dhcp-agents").json()["agents"][0]["id"]
        assert raw("DELETE", f"/v2.0/agents/{current}/dhcp-networks/{net.id}").status_code == 204
        assert dhcp_ports(raw, net.id) == []
        mine = ids["DHCP agent"]
        assert raw("POST", f"/v2.0/agents/{mine}/dhcp-networks", json={"network_id": net.id}).status_code == 201
        assert net.id in {n["id"] for n in raw("GET", f"/v2.0/agents/{mine}/dhcp-networks").json()["networks"]}
        assert [p["binding:host_id"] for p in dhcp_ports(raw, net.id)] == [host]
        dup = raw("POST", f"/v2.0/agents/{mine}/dhcp-networks", json={"network_id": net.id})
        assert dup.status_code == 409
        l2 = ids["Linux bridge agent"]
        assert raw("POST", f"/v2.0/agents/{l2}/dhcp-networks", json={"network_id": net.id}).status_code == 409
    finally:
        for p in admin.network.ports(network_id=net.id):
            admin.network.delete_port(p)
        admin.network.delete_network(net)
        unregister(raw, ids)


def test_binding_needs_a_live_l2_agent(raw: Raw, admin: openstack.connection.Connection) -> None:
    net = admin.network.create_network(name="bind")
    ids: dict[str, str] = {}
    try:
        nobody = raw("POST", "/v2.0/ports", json={"port": {"network_id": net.id, "binding:host_id": "no-such-host"}})
        assert nobody.json()["port"]["binding:vif_type"] == "binding_failed"
        host = f"host-{uuid.uuid4().hex[:6]}"
        ids = register(raw, host)
        ok = raw("POST", "/v2.0/ports", json={"port": {"network_id": net.id, "binding:host_id": host}}).json()["port"]
        assert ok["binding:vif_type"] == "bridge" and ok["status"] == "DOWN"
        # The agent says the port is wired: it goes ACTIVE.
        raw("POST", "/agent-api/v1/port-status", json={"host": host, "active": [ok["id"]], "down": []})
        assert raw("GET", f"/v2.0/ports/{ok['id']}").json()["port"]["status"] == "ACTIVE"
        snap = raw("GET", "/agent-api/v1/snapshot", params={"host": host}).json()
        assert ok["id"] in snap["ports"] and snap["revision"] > 0  # the codec: ports by id
    finally:
        for p in admin.network.ports(network_id=net.id):
            admin.network.delete_port(p)
        admin.network.delete_network(net)
        unregister(raw, ids)


def test_agents_are_admin_only(raw: Raw) -> None:
    resp = raw("POST", "/v2.0/agents", json={"agent": {}})
    assert resp.status_code in (400, 405)
