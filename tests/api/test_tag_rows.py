"""No delete path leaves tag rows behind (tags have no foreign key; every delete must take them along).

Networks, subnets, ports and the DHCP ports scheduling makes are tagged, then removed by each path that
deletes rows — port delete, subnet delete, network delete, DHCP switched off, a network taken off its
DHCP agent — and the ``tags`` table is counted directly, on both backends.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import openstack
import pytest
from sqlalchemy import func, select

from neutrino.db.engine import Database
from neutrino.db.schema import tags
from tests.api.conftest import Raw, Server


@pytest.fixture(scope="module")
def db(server: Server) -> Iterator[Database]:
    database = Database(server.env["NEUTRINO_DATABASE__URL"], pool_size=1)
    try:
        yield database
    finally:
        database.dispose()


def tag_rows(db: Database, ids: list[str]) -> int:
    with db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(tags)
                                .where(tags.c.resource_id.in_(ids))).scalar_one())


def tag(raw: Raw, collection: str, rid: str) -> None:
    resp = raw("PUT", f"/v2.0/{collection}/{rid}/tags", json={"tags": ["a", "b"]})
    assert resp.status_code == 200, resp.text


@pytest.fixture
def dhcp_agent(raw: Raw) -> Iterator[str]:
    """A live DHCP agent of its own, so the networks below get DHCP ports whatever other tests left; gone
    afterwards, so that other tests' networks get none from it."""
    resp = raw("POST", "/agent-api/v1/report", json={
        "host": f"tags-{uuid.uuid4().hex[:6]}", "agent_type": "DHCP agent",
        "configurations": {"dhcp_driver": "dnsmasq"}, "start_flag": True})
    assert resp.status_code == 200, resp.text
    agent_id = str(resp.json()["id"])
    try:
        yield agent_id
    finally:
        assert raw("DELETE", f"/v2.0/agents/{agent_id}").status_code == 204


def tagged_network(raw: Raw, admin: openstack.connection.Connection) -> tuple[str, str, str, str]:
    """network, DHCP subnet, plain port, DHCP port — all tagged."""
    net = admin.network.create_network(name=f"tags-{uuid.uuid4().hex[:6]}")
    sub = admin.network.create_subnet(network_id=net.id, ip_version=4, cidr="10.91.0.0/24")
    port = admin.network.create_port(network_id=net.id)
    dhcp = raw("GET", "/v2.0/ports", params={"network_id": net.id, "device_owner": "network:dhcp"}).json()["ports"]
    assert len(dhcp) == 1, dhcp
    for collection, rid in (("networks", net.id), ("subnets", sub.id), ("ports", port.id),
                            ("ports", dhcp[0]["id"])):
        tag(raw, collection, rid)
    return net.id, sub.id, port.id, dhcp[0]["id"]


def test_every_delete_path_takes_the_tags(raw: Raw, admin: openstack.connection.Connection, db: Database,
                                          dhcp_agent: str) -> None:
    net, sub, port, dhcp_port = tagged_network(raw, admin)
    assert tag_rows(db, [net, sub, port, dhcp_port]) == 8
    # A port, by the API.
    admin.network.delete_port(port)
    assert tag_rows(db, [port]) == 0
    # DHCP off on the last DHCP subnet: the DHCP port goes.
    admin.network.update_subnet(sub, is_dhcp_enabled=False)
    assert tag_rows(db, [dhcp_port]) == 0
    # The network taken off its DHCP agent: its DHCP port goes.
    admin.network.update_subnet(sub, is_dhcp_enabled=True)
    [again] = raw("GET", "/v2.0/ports", params={"network_id": net, "device_owner": "network:dhcp"}).json()["ports"]
    tag(raw, "ports", again["id"])
    [hosted] = raw("GET", f"/v2.0/networks/{net}/dhcp-agents").json()["agents"]
    assert raw("DELETE", f"/v2.0/agents/{hosted['id']}/dhcp-networks/{net}").status_code == 204
    assert tag_rows(db, [again["id"]]) == 0
    # A subnet, by the API (its DHCP port, back on the agent, goes with the last DHCP subnet).
    assert raw("POST", f"/v2.0/agents/{dhcp_agent}/dhcp-networks", json={"network_id": net}).status_code == 201
    [third] = raw("GET", "/v2.0/ports", params={"network_id": net, "device_owner": "network:dhcp"}).json()["ports"]
    tag(raw, "ports", third["id"])
    admin.network.delete_subnet(sub)
    assert tag_rows(db, [sub, third["id"]]) == 0
    admin.network.delete_network(net)
    assert tag_rows(db, [net]) == 0


def test_network_delete_takes_subnet_and_dhcp_port_tags(raw: Raw, admin: openstack.connection.Connection,
                                                        db: Database, dhcp_agent: str) -> None:
    net, sub, port, dhcp_port = tagged_network(raw, admin)
    admin.network.delete_port(port)
    admin.network.delete_network(net)  # with its subnet and DHCP port still on it
    assert tag_rows(db, [net, sub, port, dhcp_port]) == 0
