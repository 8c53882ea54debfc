"""Agents that stop reporting lose their routers and DHCP to live agents (services/liveness.py), on both
backends. The test plays two hosts' agents through the real agent channel (heartbeats by hand), with
agent_down_seconds = 3: host A hosts a router (with an interface) and a network's DHCP; A goes silent; the
agents API shows it dead, and the router (its ports with it) and the DHCP move to host B, whose snapshot
now carries them. A coming back gets nothing back: its snapshot no longer has the router.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api.conftest import Raw, Server, backend_server, uniq

DOWN = 3.0


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = backend_server(request, request.param, tmp_path_factory.mktemp(f"liveness-{request.param}"),
                         {"NEUTRINO_AGENT__AGENT_DOWN_SECONDS": str(DOWN)})
    try:
        yield srv
    finally:
        srv.stop()


def beat(raw: Raw, *hosts: str) -> None:
    for host in hosts:
        for kind in ("L3 agent", "DHCP agent"):
            resp = raw("POST", "/agent-api/v1/report", json={"host": host, "agent_type": kind, "configurations": {}})
            assert resp.status_code == 200, resp.text


def ok(resp: Any, status: int = 200) -> Any:
    assert resp.status_code == status, resp.text
    return resp.json() if resp.content else None


def test_routers_and_dhcp_move_off_a_dead_agent(server: Server, tmp_path: Path) -> None:
    from tests.integration.conftest import admin_token

    raw = Raw(server.url, admin_token(server))
    a, b = "a-" + uniq("h"), "b-" + uniq("h")   # a sorts first: equal load puts the work on it
    beat(raw, a, b)
    ext = ok(raw("POST", "/v2.0/networks", json={"network": {"name": uniq("ext"), "router:external": True}}), 201)
    ok(raw("POST", "/v2.0/subnets", json={"subnet": {"network_id": ext["network"]["id"], "cidr": "203.0.113.0/24",
                                                     "ip_version": 4, "enable_dhcp": False}}), 201)
    net = ok(raw("POST", "/v2.0/networks", json={"network": {"name": uniq("n")}}), 201)["network"]
    sub = ok(raw("POST", "/v2.0/subnets", json={"subnet": {"network_id": net["id"], "cidr": "10.5.0.0/24",
                                                           "ip_version": 4}}), 201)["subnet"]
    router = ok(raw("POST", "/v2.0/routers", json={"router": {
        "name": uniq("r"), "external_gateway_info": {"network_id": ext["network"]["id"]}}}), 201)["router"]
    iface = ok(raw("PUT", f"/v2.0/routers/{router['id']}/add_router_interface", json={"subnet_id": sub["id"]}))

    def l3_host() -> str:
        return str(ok(raw("GET", f"/v2.0/routers/{router['id']}/l3-agents"))["agents"][0]["host"])

    def dhcp_hosts() -> list[str]:
        return [x["host"] for x in ok(raw("GET", f"/v2.0/networks/{net['id']}/dhcp-agents"))["agents"]]

    def dhcp_port_hosts() -> list[str]:
        found = ok(raw("GET", "/v2.0/ports", params={"network_id": net["id"], "device_owner": "network:dhcp"}))
        return [p["binding:host_id"] for p in found["ports"]]

    assert l3_host() == a and dhcp_hosts() == [a] and dhcp_port_hosts() == [a]
    assert router["id"] in ok(raw("GET", "/agent-api/v1/snapshot", params={"host": a}))["routers"]

    # A goes silent; B keeps reporting.
    deadline = time.monotonic() + 20
    while l3_host() != b or dhcp_hosts() != [b]:
        assert time.monotonic() < deadline, (l3_host(), dhcp_hosts())
        beat(raw, b)
        time.sleep(0.3)
    agents = ok(raw("GET", "/v2.0/agents"))["agents"]
    assert {x["alive"] for x in agents if x["host"] == a} == {False}
    assert {x["alive"] for x in agents if x["host"] == b} == {True}
    assert ok(raw("GET", f"/v2.0/ports/{iface['port_id']}"))["port"]["binding:host_id"] == b
    assert dhcp_port_hosts() == [b]
    snap_b = ok(raw("GET", "/agent-api/v1/snapshot", params={"host": b}))
    assert router["id"] in snap_b["routers"] and net["id"] in snap_b["dhcp_networks"]

    # A comes back: nothing moves back; its snapshot no longer has the router or the network's DHCP.
    beat(raw, a, b)
    snap_a = ok(raw("GET", "/agent-api/v1/snapshot", params={"host": a}))
    assert router["id"] not in snap_a["routers"] and net["id"] not in snap_a["dhcp_networks"]
    time.sleep(1.5)
    assert l3_host() == b and dhcp_hosts() == [b]
