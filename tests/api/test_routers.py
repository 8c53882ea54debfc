"""Routers, external gateways, interfaces, extra routes, floating IPs and L3 agent scheduling against a
real server (both backends): behaviour, error codes and bodies, quotas, policy as a member, the snapshot
of a host with an L3 agent, and the schema upgrade from the previous migration."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openstack
import pytest
from sqlalchemy import insert, inspect

from tests.api.conftest import Cli, Raw, Server, error, member_connection, uniq

NEUTRINO = str(Path(sys.executable).parent / "neutrino")


@dataclass
class External:
    network_id: str
    subnet_id: str
    cidr: str


@dataclass
class Member:
    conn: openstack.connection.Connection
    raw: Raw
    project_id: str


_counter = iter(range(1, 250))


def cidr() -> str:
    return f"10.{next(_counter)}.{os.getpid() % 200}.0/24"


@pytest.fixture(scope="module")
def external(admin: openstack.connection.Connection) -> Iterator[External]:
    net = admin.network.create_network(name=uniq("public"), is_router_external=True)
    c = f"198.51.{os.getpid() % 200}.0/24"
    sub = admin.network.create_subnet(network_id=net.id, ip_version=4, cidr=c, enable_dhcp=False)
    yield External(net.id, sub.id, c)


@pytest.fixture(scope="module")
def member(server: Server, admin: openstack.connection.Connection) -> Member:
    conn = member_connection(server, admin, uniq("l3m"))
    project_id = conn.current_project_id
    assert project_id is not None
    return Member(conn, Raw.of(server.url, conn), project_id)


def private(raw: Raw, name: str) -> tuple[str, str, str]:
    """(network id, subnet id, gateway ip) of a new private network."""
    net = raw("POST", "/v2.0/networks", json={"network": {"name": name}}).json()["network"]
    c = cidr()
    sub = raw("POST", "/v2.0/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4, "cidr": c}})
    assert sub.status_code == 201, sub.text
    return net["id"], sub.json()["subnet"]["id"], sub.json()["subnet"]["gateway_ip"]


def router(raw: Raw, **attrs: Any) -> dict[str, Any]:
    resp = raw("POST", "/v2.0/routers", json={"router": {"name": uniq("r"), **attrs}})
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()["router"]
    return body


def put(raw: Raw, router_id: str, action: str, body: dict[str, Any]) -> Any:
    return raw("PUT", f"/v2.0/routers/{router_id}/{action}", json=body)


def test_router_gateway_interfaces_and_in_use(member: Member, external: External, raw: Raw) -> None:
    m = member.raw
    r = router(m, external_gateway_info={"network_id": external.network_id})
    assert r["status"] == "ACTIVE" and r["admin_state_up"] and r["routes"] == []
    gw = r["external_gateway_info"]
    assert gw["network_id"] == external.network_id and gw["enable_snat"] is True
    [fixed] = gw["external_fixed_ips"]
    assert fixed["subnet_id"] == external.subnet_id
    net_id, sub_id, gateway_ip = private(m, "p1")
    info = put(m, r["id"], "add_router_interface", {"subnet_id": sub_id})
    assert info.status_code == 200, info.text
    body = info.json()
    assert body["id"] == r["id"] and body["subnet_id"] == sub_id and body["subnet_ids"] == [sub_id]
    assert body["network_id"] == net_id and body["project_id"] == member.project_id
    port = m("GET", f"/v2.0/ports/{body['port_id']}").json()["port"]
    assert port["device_owner"] == "network:router_interface" and port["device_id"] == r["id"]
    assert port["fixed_ips"] == [{"subnet_id": sub_id, "ip_address": gateway_ip}]
    # The gateway port is the router's, on the external network.
    gw_ports = raw("GET", "/v2.0/ports", params={"device_id": r["id"], "device_owner": "network:router_gateway"})
    [gw_port] = gw_ports.json()["ports"]
    assert gw_port["network_id"] == external.network_id and gw_port["fixed_ips"] == [fixed]
    # The same subnet again: on this router 400, on another 409 (its gateway address is taken).
    error(put(m, r["id"], "add_router_interface", {"subnet_id": sub_id}), 400, "BadRequest")
    other = router(m)
    error(put(m, other["id"], "add_router_interface", {"subnet_id": sub_id}), 409, "IpAddressAlreadyAllocated")
    # An overlapping CIDR on the same router.
    net2 = m("POST", "/v2.0/networks", json={"network": {"name": "p2"}}).json()["network"]
    c = m("GET", f"/v2.0/subnets/{sub_id}").json()["subnet"]["cidr"]
    sub2 = m("POST", "/v2.0/subnets", json={"subnet": {"network_id": net2["id"], "ip_version": 4,
                                                        "cidr": c}}).json()["subnet"]
    err = error(put(m, r["id"], "add_router_interface", {"subnet_id": sub2["id"]}), 400, "BadRequest")
    assert "overlaps" in err["message"]
    error(put(m, r["id"], "add_router_interface", {}), 400, "BadRequest")
    error(put(m, r["id"], "add_router_interface", {"subnet_id": sub_id, "port_id": body["port_id"]}),
          400, "BadRequest")
    # In use: the router, the subnet, the external network.
    error(m("DELETE", f"/v2.0/routers/{r['id']}"), 409, "RouterInUse")
    error(m("DELETE", f"/v2.0/subnets/{sub_id}"), 409, "SubnetInUse")
    error(raw("DELETE", f"/v2.0/networks/{external.network_id}"), 409, "NetworkInUse")
    error(put(m, r["id"], "remove_router_interface", {"subnet_id": sub2["id"]}), 404,
          "RouterInterfaceNotFoundForSubnet")
    error(put(m, r["id"], "remove_router_interface", {"port_id": gw_port["id"]}), 404, "RouterInterfaceNotFound")
    gone = put(m, r["id"], "remove_router_interface", {"subnet_id": sub_id})
    assert gone.status_code == 200 and gone.json()["port_id"] == body["port_id"]
    assert m("GET", f"/v2.0/ports/{body['port_id']}").status_code == 404
    # Deleting the router takes its gateway port along.
    assert m("DELETE", f"/v2.0/routers/{r['id']}").status_code == 204
    assert raw("GET", f"/v2.0/ports/{gw_port['id']}").status_code == 404
    error(m("GET", f"/v2.0/routers/{r['id']}"), 404, "RouterNotFound")
    for rid in (other["id"],):
        assert m("DELETE", f"/v2.0/routers/{rid}").status_code == 204
    for sid in (sub_id, sub2["id"]):
        assert m("DELETE", f"/v2.0/subnets/{sid}").status_code == 204


def test_interface_by_port_and_gateway_update(member: Member, external: External, raw: Raw) -> None:
    m = member.raw
    r = router(m)
    assert r["external_gateway_info"] is None
    net_id, sub_id, _ = private(m, "byport")
    port = m("POST", "/v2.0/ports", json={"port": {"network_id": net_id}}).json()["port"]
    info = put(m, r["id"], "add_router_interface", {"port_id": port["id"]})
    assert info.status_code == 200, info.text
    assert info.json()["port_id"] == port["id"] and info.json()["subnet_id"] == sub_id
    shown = m("GET", f"/v2.0/ports/{port['id']}").json()["port"]
    assert shown["device_id"] == r["id"] and shown["device_owner"] == "network:router_interface"
    second = router(m)
    error(put(m, second["id"], "add_router_interface", {"port_id": port["id"]}), 409, "PortInUse")
    assert m("DELETE", f"/v2.0/routers/{second['id']}").status_code == 204
    # Gateway set, then cleared, by update.
    up = m("PUT", f"/v2.0/routers/{r['id']}", json={"router": {"external_gateway_info": {
        "network_id": external.network_id}}})
    assert up.status_code == 200, up.text
    assert up.json()["router"]["external_gateway_info"]["network_id"] == external.network_id
    not_ext = error(m("PUT", f"/v2.0/routers/{r['id']}", json={"router": {"external_gateway_info": {
        "network_id": net_id}}}), 400, "BadRequest")
    assert "not an external network" in not_ext["message"]
    cleared = m("PUT", f"/v2.0/routers/{r['id']}", json={"router": {"external_gateway_info": {}}})
    assert cleared.json()["router"]["external_gateway_info"] is None
    assert raw("GET", "/v2.0/ports", params={"device_id": r["id"],
                                             "device_owner": "network:router_gateway"}).json()["ports"] == []
    assert put(m, r["id"], "remove_router_interface", {"port_id": port["id"]}).status_code == 200
    assert m("DELETE", f"/v2.0/routers/{r['id']}").status_code == 204


def test_extra_routes(member: Member) -> None:
    m = member.raw
    r = router(m)
    _, sub_id, gateway_ip = private(m, "routes")
    nexthop = gateway_ip.rsplit(".", 1)[0] + ".20"
    route = {"destination": "172.31.0.0/16", "nexthop": nexthop}
    error(m("PUT", f"/v2.0/routers/{r['id']}", json={"router": {"routes": [route]}}), 400, "InvalidRoutes")
    put(m, r["id"], "add_router_interface", {"subnet_id": sub_id})
    up = m("PUT", f"/v2.0/routers/{r['id']}", json={"router": {"routes": [route]}})
    assert up.status_code == 200 and up.json()["router"]["routes"] == [route]
    more = {"destination": "172.30.0.0/16", "nexthop": nexthop}
    added = put(m, r["id"], "add_extraroutes", {"router": {"routes": [more, route]}})
    assert added.status_code == 200, added.text
    assert added.json()["router"]["routes"] == [route, more]
    removed = put(m, r["id"], "remove_extraroutes", {"router": {"routes": [route]}})
    assert removed.json()["router"]["routes"] == [more]
    error(put(m, r["id"], "add_extraroutes", {"router": {"routes": [{"destination": "1.0.0.0/8",
                                                                     "nexthop": "9.9.9.9"}]}}), 400, "InvalidRoutes")
    error(put(m, r["id"], "add_extraroutes", {"routes": []}), 400, "HTTPBadRequest")
    error(put(m, r["id"], "remove_router_interface", {"subnet_id": sub_id}), 409, "RouterInterfaceInUseByRoute")
    m("PUT", f"/v2.0/routers/{r['id']}", json={"router": {"routes": []}})
    assert put(m, r["id"], "remove_router_interface", {"subnet_id": sub_id}).status_code == 200
    assert m("DELETE", f"/v2.0/routers/{r['id']}").status_code == 204


def test_extraroutes_are_atomic_under_concurrency(member: Member) -> None:
    """extraroute-atomic: concurrent add_extraroutes (and remove_extraroutes) each change the routes the
    router has when it runs, so none is lost, whatever the interleaving (PostgreSQL: READ COMMITTED)."""
    m = member.raw
    r = router(m)
    _, sub_id, gateway_ip = private(m, "atomic")
    assert put(m, r["id"], "add_router_interface", {"subnet_id": sub_id}).status_code == 200
    nexthop = gateway_ip.rsplit(".", 1)[0] + ".30"
    routes = [{"destination": f"172.20.{i}.0/24", "nexthop": nexthop} for i in range(16)]

    def change(action: str, route: dict[str, str]) -> Any:
        return put(m, r["id"], action, {"router": {"routes": [route]}})

    def key(route: dict[str, str]) -> str:
        return route["destination"]

    with ThreadPoolExecutor(len(routes)) as pool:
        added = list(pool.map(lambda route: change("add_extraroutes", route), routes))
        assert [a.status_code for a in added] == [200] * len(routes), [a.text for a in added]
        # Each answer holds its own route (and those added before it).
        assert all(route in a.json()["router"]["routes"] for a, route in zip(added, routes, strict=True))
        shown = m("GET", f"/v2.0/routers/{r['id']}").json()["router"]
        assert sorted(shown["routes"], key=key) == sorted(routes, key=key)
        assert shown["revision_number"] == r["revision_number"] + 1 + len(routes)  # +1: the interface
        removed = list(pool.map(lambda route: change("remove_extraroutes", route), routes))
        assert [x.status_code for x in removed] == [200] * len(routes), [x.text for x in removed]
        assert all(route not in x.json()["router"]["routes"] for x, route in zip(removed, routes, strict=True))
    assert m("GET", f"/v2.0/routers/{r['id']}").json()["router"]["routes"] == []
    assert put(m, r["id"], "remove_router_interface", {"subnet_id": sub_id}).status_code == 200
    assert m("DELETE", f"/v2.0/routers/{r['id']}").status_code == 204


def test_member_policy(member: Member, external: External, admin: openstack.connection.Connection) -> None:
    m = member.raw
    error(m("POST", "/v2.0/routers", json={"router": {"external_gateway_info": {
        "network_id": external.network_id, "enable_snat": False}}}), 403, "PolicyNotAuthorized")
    error(m("POST", "/v2.0/routers", json={"router": {"external_gateway_info": {  # the key given: Neutron's rule
        "network_id": external.network_id, "enable_snat": True}}}), 403, "PolicyNotAuthorized")
    error(m("POST", "/v2.0/routers", json={"router": {"external_gateway_info": {
        "network_id": external.network_id,
        "external_fixed_ips": [{"subnet_id": external.subnet_id}]}}}), 403, "PolicyNotAuthorized")
    error(m("POST", "/v2.0/networks", json={"network": {"router:external": True}}), 403, "PolicyNotAuthorized")
    error(m("POST", "/v2.0/floatingips", json={"floatingip": {
        "floating_network_id": external.network_id,
        "floating_ip_address": external.cidr.replace("0/24", "77")}}), 403, "PolicyNotAuthorized")
    # Another project's router is invisible.
    theirs = admin.network.create_router(name=uniq("admin-r"))
    error(m("GET", f"/v2.0/routers/{theirs.id}"), 404, "RouterNotFound")
    assert theirs.id not in {x["id"] for x in m("GET", "/v2.0/routers").json()["routers"]}
    admin.network.delete_router(theirs)
    # An admin may pick both.
    raw = Raw.of(m.url, admin)
    ip = external.cidr.replace("0/24", "66")
    r = router(raw, external_gateway_info={"network_id": external.network_id, "enable_snat": False,
                                           "external_fixed_ips": [{"ip_address": ip}]})
    assert r["external_gateway_info"]["enable_snat"] is False
    assert r["external_gateway_info"]["external_fixed_ips"][0]["ip_address"] == ip
    assert raw("DELETE", f"/v2.0/routers/{r['id']}").status_code == 204


def test_member_policy_on_gateway_update(member: Member, external: External, raw: Raw) -> None:
    """Updating the gateway, as on create: only admins give enable_snat or external_fixed_ips (Neutron's
    update_router:external_gateway_info:* rules, on the keys given); a refused update changes nothing."""
    m = member.raw
    r = router(m, external_gateway_info={"network_id": external.network_id})
    before = m("GET", f"/v2.0/routers/{r['id']}").json()["router"]
    [gw_port] = raw("GET", "/v2.0/ports", params={"device_id": r["id"],
                                                  "device_owner": "network:router_gateway"}).json()["ports"]
    ip = external.cidr.replace("0/24", "67")
    for info, key in (({"enable_snat": False}, "enable_snat"), ({"enable_snat": True}, "enable_snat"),
                      ({"external_fixed_ips": [{"subnet_id": external.subnet_id}]}, "external_fixed_ips"),
                      ({"external_fixed_ips": [{"ip_address": ip}]}, "external_fixed_ips"),
                      ({"enable_snat": False, "external_fixed_ips": []}, "enable_snat")):
        err = error(m("PUT", f"/v2.0/routers/{r['id']}", json={"router": {"external_gateway_info": {
            "network_id": external.network_id, **info}}}), 403, "PolicyNotAuthorized")
        assert err["message"] == f"(rule:update_router:external_gateway_info:{key}) is disallowed by policy"
        assert m("GET", f"/v2.0/routers/{r['id']}").json()["router"] == before
    assert raw("GET", "/v2.0/ports", params={"device_id": r["id"], "device_owner": "network:router_gateway"}
               ).json()["ports"] == [gw_port]
    # Along with an allowed change, the whole update is refused.
    error(m("PUT", f"/v2.0/routers/{r['id']}", json={"router": {"name": "renamed", "external_gateway_info": {
        "network_id": external.network_id, "enable_snat": False}}}), 403, "PolicyNotAuthorized")
    assert m("GET", f"/v2.0/routers/{r['id']}").json()["router"]["name"] == r["name"]
    # An admin may, and the member still manages the rest of its router.
    up = raw("PUT", f"/v2.0/routers/{r['id']}", json={"router": {"external_gateway_info": {
        "network_id": external.network_id, "enable_snat": False, "external_fixed_ips": [{"ip_address": ip}]}}})
    assert up.status_code == 200, up.text
    gw = up.json()["router"]["external_gateway_info"]
    assert gw["enable_snat"] is False and gw["external_fixed_ips"] == [{"subnet_id": external.subnet_id,
                                                                        "ip_address": ip}]
    renamed = m("PUT", f"/v2.0/routers/{r['id']}", json={"router": {"name": "mine"}})
    assert renamed.status_code == 200 and renamed.json()["router"]["external_gateway_info"] == gw
    assert m("DELETE", f"/v2.0/routers/{r['id']}").status_code == 204


def test_floating_ip_on_a_chosen_fixed_ip(member: Member, external: External) -> None:
    """A port with several fixed IPs: the floating IP maps to the fixed_ip_address asked for (on create and
    on update), which must be one of the port's, behind a router with a gateway on the external network."""
    m = member.raw
    net_id, sub_id, gateway_ip = private(m, "fipfixed")
    other = m("POST", "/v2.0/subnets", json={"subnet": {"network_id": net_id, "ip_version": 4,
                                                         "cidr": cidr()}}).json()["subnet"]  # not routed
    r = router(m, external_gateway_info={"network_id": external.network_id})
    assert put(m, r["id"], "add_router_interface", {"subnet_id": sub_id}).status_code == 200
    prefix = gateway_ip.rsplit(".", 1)[0]
    first, second = f"{prefix}.41", f"{prefix}.42"
    unrouted = other["gateway_ip"].rsplit(".", 1)[0] + ".43"
    port = m("POST", "/v2.0/ports", json={"port": {"network_id": net_id, "fixed_ips": [
        {"ip_address": first}, {"ip_address": second}, {"ip_address": unrouted}]}})
    assert port.status_code == 201, port.text
    port_id = port.json()["port"]["id"]

    def create(**attrs: Any) -> Any:
        return m("POST", "/v2.0/floatingips", json={"floatingip": {
            "floating_network_id": external.network_id, "port_id": port_id, **attrs}})

    made = create(fixed_ip_address=second)
    assert made.status_code == 201, made.text
    f = made.json()["floatingip"]
    assert f["fixed_ip_address"] == second and f["port_id"] == port_id and f["router_id"] == r["id"]
    assert m("GET", f"/v2.0/floatingips/{f['id']}").json()["floatingip"]["fixed_ip_address"] == second
    listed = m("GET", "/v2.0/floatingips", params={"fixed_ip_address": second}).json()["floatingips"]
    assert [x["id"] for x in listed] == [f["id"]]
    # Not one of the port's, none of several IPv4 addresses chosen, one on a subnet with no router.
    err = error(create(fixed_ip_address=f"{prefix}.99"), 400, "BadRequest")
    assert f"{prefix}.99" in err["message"]
    error(create(), 400, "BadRequest")
    error(create(fixed_ip_address=unrouted), 404, "ExternalGatewayForFloatingIPNotFound")
    error(create(fixed_ip_address=second), 409, "FloatingIPPortAlreadyAssociated")
    error(m("POST", "/v2.0/floatingips", json={"floatingip": {"floating_network_id": external.network_id,
                                                                "fixed_ip_address": second}}), 400, "BadRequest")
    # The port's other address gets its own floating IP; the first one moves to it, then back.
    g = create(fixed_ip_address=first)
    assert g.status_code == 201 and g.json()["floatingip"]["fixed_ip_address"] == first
    error(m("PUT", f"/v2.0/floatingips/{f['id']}", json={"floatingip": {"port_id": port_id,
                                                                          "fixed_ip_address": first}}),
          409, "FloatingIPPortAlreadyAssociated")
    assert m("DELETE", f"/v2.0/floatingips/{g.json()['floatingip']['id']}").status_code == 204
    moved = m("PUT", f"/v2.0/floatingips/{f['id']}", json={"floatingip": {"port_id": port_id,
                                                                            "fixed_ip_address": first}})
    assert moved.status_code == 200 and moved.json()["floatingip"]["fixed_ip_address"] == first
    error(m("PUT", f"/v2.0/floatingips/{f['id']}", json={"floatingip": {"port_id": port_id,
                                                                          "fixed_ip_address": f"{prefix}.99"}}),
          400, "BadRequest")
    assert m("GET", f"/v2.0/floatingips/{f['id']}").json()["floatingip"]["fixed_ip_address"] == first
    assert m("DELETE", f"/v2.0/floatingips/{f['id']}").status_code == 204
    assert m("DELETE", f"/v2.0/ports/{port_id}").status_code == 204
    assert put(m, r["id"], "remove_router_interface", {"subnet_id": sub_id}).status_code == 200
    assert m("DELETE", f"/v2.0/routers/{r['id']}").status_code == 204


def test_floating_ips(member: Member, external: External, raw: Raw) -> None:
    m = member.raw
    fip = m("POST", "/v2.0/floatingips", json={"floatingip": {"floating_network_id": external.network_id}})
    assert fip.status_code == 201, fip.text
    f = fip.json()["floatingip"]
    assert f["status"] == "DOWN" and f["port_id"] is None and f["router_id"] is None
    assert f["project_id"] == member.project_id
    [held] = raw("GET", "/v2.0/ports", params={"device_id": f["id"]}).json()["ports"]
    assert held["device_owner"] == "network:floatingip" and held["network_id"] == external.network_id
    assert held["fixed_ips"][0]["ip_address"] == f["floating_ip_address"]
    # A port with no router path to the external network.
    net_id, sub_id, _ = private(m, "fip")
    port = m("POST", "/v2.0/ports", json={"port": {"network_id": net_id}}).json()["port"]
    error(m("PUT", f"/v2.0/floatingips/{f['id']}", json={"floatingip": {"port_id": port["id"]}}), 404,
          "ExternalGatewayForFloatingIPNotFound")
    r = router(m, external_gateway_info={"network_id": external.network_id})
    put(m, r["id"], "add_router_interface", {"subnet_id": sub_id})
    up = m("PUT", f"/v2.0/floatingips/{f['id']}", json={"floatingip": {"port_id": port["id"]}})
    assert up.status_code == 200, up.text
    assoc = up.json()["floatingip"]
    assert assoc["router_id"] == r["id"] and assoc["fixed_ip_address"] == port["fixed_ips"][0]["ip_address"]
    error(m("POST", "/v2.0/floatingips", json={"floatingip": {"floating_network_id": external.network_id,
                                                                "port_id": port["id"]}}), 409,
          "FloatingIPPortAlreadyAssociated")
    error(m("PUT", f"/v2.0/floatingips/{f['id']}", json={"floatingip": {"port_id": port["id"],
                                                                          "fixed_ip_address": "10.0.0.1"}}),
          400, "BadRequest")
    error(put(m, r["id"], "remove_router_interface", {"subnet_id": sub_id}), 409,
          "RouterInterfaceInUseByFloatingIP")
    error(m("PUT", f"/v2.0/routers/{r['id']}", json={"router": {"external_gateway_info": {}}}), 409,
          "RouterExternalGatewayInUseByFloatingIp")
    # Disassociate, re-associate, then the port goes: the floating IP stays, disassociated.
    off = m("PUT", f"/v2.0/floatingips/{f['id']}", json={"floatingip": {"port_id": None}}).json()["floatingip"]
    assert off["port_id"] is None and off["router_id"] is None and off["fixed_ip_address"] is None
    m("PUT", f"/v2.0/floatingips/{f['id']}", json={"floatingip": {"port_id": port["id"]}})
    assert m("DELETE", f"/v2.0/ports/{port['id']}").status_code == 204
    after = m("GET", f"/v2.0/floatingips/{f['id']}").json()["floatingip"]
    assert after["port_id"] is None and after["router_id"] is None
    # Created already associated, on a non-external network refused, an unknown network 404.
    port2 = m("POST", "/v2.0/ports", json={"port": {"network_id": net_id}}).json()["port"]
    f2 = m("POST", "/v2.0/floatingips", json={"floatingip": {"floating_network_id": external.network_id,
                                                              "port_id": port2["id"]}}).json()["floatingip"]
    assert f2["router_id"] == r["id"] and f2["floating_ip_address"] != f["floating_ip_address"]
    error(m("POST", "/v2.0/floatingips", json={"floatingip": {"floating_network_id": net_id}}), 400, "BadRequest")
    error(m("POST", "/v2.0/floatingips", json={"floatingip": {
        "floating_network_id": "00000000-0000-0000-0000-000000000000"}}), 404, "NetworkNotFound")
    listed = {x["id"] for x in m("GET", "/v2.0/floatingips").json()["floatingips"]}
    assert {f["id"], f2["id"]} <= listed
    for fid in (f["id"], f2["id"]):
        assert m("DELETE", f"/v2.0/floatingips/{fid}").status_code == 204
    assert raw("GET", "/v2.0/ports", params={"device_id": f["id"]}).json()["ports"] == []
    m("DELETE", f"/v2.0/ports/{port2['id']}")
    put(m, r["id"], "remove_router_interface", {"subnet_id": sub_id})
    assert m("DELETE", f"/v2.0/routers/{r['id']}").status_code == 204


def test_quotas(server: Server, admin: openstack.connection.Connection, external: External) -> None:
    mem = member_connection(server, admin, uniq("l3q"))
    m = Raw.of(server.url, mem)
    raw = Raw.of(server.url, admin)
    pid = mem.current_project_id
    resp = raw("PUT", f"/v2.0/quotas/{pid}", json={"quota": {"router": 1, "floatingip": 1}})
    assert resp.status_code == 200, resp.text
    r = router(m)
    error(m("POST", "/v2.0/routers", json={"router": {}}), 409, "OverQuota")
    f = m("POST", "/v2.0/floatingips", json={"floatingip": {"floating_network_id": external.network_id}})
    assert f.status_code == 201
    error(m("POST", "/v2.0/floatingips", json={"floatingip": {"floating_network_id": external.network_id}}),
          409, "OverQuota")
    details = raw("GET", f"/v2.0/quotas/{pid}/details").json()["quota"]
    assert details["router"]["used"] == 1 and details["floatingip"]["used"] == 1
    m("DELETE", f"/v2.0/floatingips/{f.json()['floatingip']['id']}")
    m("DELETE", f"/v2.0/routers/{r['id']}")


def test_extensions_advertised(raw: Raw) -> None:
    aliases = {e["alias"] for e in raw("GET", "/v2.0/extensions").json()["extensions"]}
    assert {"router", "ext-gw-mode", "extraroute", "extraroute-atomic", "l3_agent_scheduler"} <= aliases


def test_l3_scheduling_and_snapshot(raw: Raw, external: External, member: Member) -> None:
    host = uniq("l3host")
    resp = raw("POST", "/agent-api/v1/report", json={"host": host, "agent_type": "L3 agent",
                                                     "configurations": {}, "start_flag": True})
    assert resp.status_code == 200, resp.text
    agent_id = resp.json()["id"]
    m = member.raw
    try:
        r = router(m, external_gateway_info={"network_id": external.network_id})
        [hosting] = raw("GET", f"/v2.0/routers/{r['id']}/l3-agents").json()["agents"]
        if hosting["id"] != agent_id:  # another test's live L3 agent was less loaded
            assert raw("DELETE", f"/v2.0/agents/{hosting['id']}/l3-routers/{r['id']}").status_code == 204
            assert raw("POST", f"/v2.0/agents/{agent_id}/l3-routers",
                       json={"router_id": r["id"]}).status_code == 201
        error(raw("DELETE", f"/v2.0/agents/{agent_id}/l3-routers/{external.network_id}"), 404,
              "RouterNotHostedByL3Agent")
        # (it may host other tests' routers too: a new L3 agent takes every unscheduled one)
        assert r["id"] in [x["id"] for x in raw("GET", f"/v2.0/agents/{agent_id}/l3-routers").json()["routers"]]
        error(m("GET", f"/v2.0/agents/{agent_id}/l3-routers"), 403, "PolicyNotAuthorized")
        net_id, sub_id, gateway_ip = private(m, "snap")
        iface = put(m, r["id"], "add_router_interface", {"subnet_id": sub_id}).json()
        nexthop = gateway_ip.rsplit(".", 1)[0] + ".9"
        put(m, r["id"], "add_extraroutes", {"router": {"routes": [{"destination": "172.29.0.0/16",
                                                                    "nexthop": nexthop}]}})
        port = m("POST", "/v2.0/ports", json={"port": {"network_id": net_id}}).json()["port"]
        f = m("POST", "/v2.0/floatingips", json={"floatingip": {"floating_network_id": external.network_id,
                                                                 "port_id": port["id"]}}).json()["floatingip"]
        snap = raw("GET", "/agent-api/v1/snapshot", params={"host": host}).json()
        spec = snap["routers"][r["id"]]
        assert spec["enable_snat"] is True and spec["admin_state_up"] is True
        assert spec["routes"] == [{"destination": "172.29.0.0/16", "nexthop": nexthop}]
        assert spec["floating_ips"] == [{"id": f["id"], "floating_ip": f["floating_ip_address"],
                                         "fixed_ip": port["fixed_ips"][0]["ip_address"], "port_id": port["id"]}]
        owners = {p["device_owner"] for p in snap["ports"].values() if p["device_id"] == r["id"]}
        assert owners == {"network:router_interface", "network:router_gateway"}
        # The router's ports are bound where its L3 agent runs: that agent wires them, reports them ACTIVE,
        # and the other hosts send the router's networks' traffic there.
        assert {p["host"] for p in snap["ports"].values() if p["device_id"] == r["id"]} == {host}
        shown = raw("GET", f"/v2.0/ports/{iface['port_id']}").json()["port"]
        assert shown["binding:host_id"] == host and shown["status"] == "DOWN"
        raw("POST", "/agent-api/v1/port-status", json={"host": host, "active": [iface["port_id"]]})
        assert raw("GET", f"/v2.0/ports/{iface['port_id']}").json()["port"]["status"] == "ACTIVE"
        # The floating IP goes ACTIVE when the router's agent says its NAT is in place; no other host can.
        assert m("GET", f"/v2.0/floatingips/{f['id']}").json()["floatingip"]["status"] == "DOWN"
        raw("POST", "/agent-api/v1/port-status", json={"host": "elsewhere", "active_floating_ips": [f["id"]]})
        assert m("GET", f"/v2.0/floatingips/{f['id']}").json()["floatingip"]["status"] == "DOWN"
        got = raw("POST", "/agent-api/v1/port-status", json={"host": host, "active_floating_ips": [f["id"]]})
        assert got.json() == {"changed": 1}
        assert m("GET", f"/v2.0/floatingips/{f['id']}").json()["floatingip"]["status"] == "ACTIVE"
        # The interface is bound here, so its network is this host's and so are that network's ports.
        assert iface["port_id"] in snap["ports"] and port["id"] in snap["ports"]
        assert {net_id, external.network_id} <= set(snap["networks"])
        assert {sub_id, external.subnet_id} <= set(snap["subnets"])
        # An unscheduled router is scheduled when an L3 agent registers.
        raw("DELETE", f"/v2.0/agents/{agent_id}/l3-routers/{r['id']}")
        assert raw("GET", f"/v2.0/routers/{r['id']}/l3-agents").json()["agents"] == []
        assert raw("GET", f"/v2.0/ports/{iface['port_id']}").json()["port"]["binding:host_id"] == ""
        assert r["id"] not in raw("GET", "/agent-api/v1/snapshot", params={"host": host}).json()["routers"]
        raw("POST", "/agent-api/v1/report", json={"host": host, "agent_type": "L3 agent", "configurations": {},
                                                  "start_flag": True})
        assert len(raw("GET", f"/v2.0/routers/{r['id']}/l3-agents").json()["agents"]) == 1
        m("DELETE", f"/v2.0/floatingips/{f['id']}")
        m("DELETE", f"/v2.0/ports/{port['id']}")
        m("PUT", f"/v2.0/routers/{r['id']}", json={"router": {"routes": []}})
        put(m, r["id"], "remove_router_interface", {"subnet_id": sub_id})
        assert m("DELETE", f"/v2.0/routers/{r['id']}").status_code == 204
    finally:
        assert raw("DELETE", f"/v2.0/agents/{agent_id}").status_code == 204


def test_cli(cli: Cli, member: Member, external: External) -> None:
    name = uniq("clir")
    net = cli("network", "create", uniq("clin"))
    sub = cli("subnet", "create", "--network", net["id"], "--subnet-range", cidr(), uniq("clis"))
    r = cli("router", "create", name)
    assert r["status"] == "ACTIVE"
    cli("router", "set", "--external-gateway", external.network_id, name, fmt=False)
    cli("router", "add", "subnet", name, sub["id"], fmt=False)
    shown = cli("router", "show", name)
    assert shown["external_gateway_info"]["network_id"] == external.network_id
    fip = cli("floating", "ip", "create", external.network_id)
    assert fip["floating_network_id"] == external.network_id and fip["status"] == "DOWN"
    cli("floating", "ip", "delete", fip["id"], fmt=False)
    cli("router", "remove", "subnet", name, sub["id"], fmt=False)
    cli("router", "delete", name, fmt=False)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrade_from_previous_schema(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    from neutrino.db.engine import Database
    from neutrino.db.migrate import upgrade
    from neutrino.db.schema import networks
    from neutrino.services import standard

    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        url = request.getfixturevalue("postgres").new_database()
    db = Database(url)
    try:
        upgrade(db, "0001")
        assert "routers" not in inspect(db.engine).get_table_names()
        with db.engine.begin() as conn:
            conn.execute(insert(networks).values(**standard.stamp_new({
                "id": "n1", "project_id": "p", "name": "old", "description": "", "admin_state_up": True,
                "status": "ACTIVE", "shared": False, "router_external": True, "mtu": 1500,
                "network_type": "vxlan", "physical_network": "", "segmentation_id": 5,
                "port_security_enabled": True, "dns_domain": "", "availability_zone_hints": []})))
    finally:
        db.dispose()
    done = subprocess.run([NEUTRINO, "--state-dir", str(tmp_path), "db", "upgrade"], capture_output=True, text=True,
                          env=dict(os.environ, NEUTRINO_DATABASE__URL=url), timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    db = Database(url)
    try:
        names = set(inspect(db.engine).get_table_names())
        assert {"routers", "router_bindings", "floatingips"} <= names
        with db.read() as conn:
            assert conn.execute(networks.select()).one().name == "old"
    finally:
        db.dispose()


def test_sdk_and_router_owned_ports(admin: openstack.connection.Connection, external: External,
                                    raw: Raw) -> None:
    net = admin.network.create_network(name=uniq("sdk"))
    sub = admin.network.create_subnet(network_id=net.id, ip_version=4, cidr=cidr())
    r = admin.network.create_router(name=uniq("sdkr"), external_gateway_info={"network_id": external.network_id})
    assert r.status == "ACTIVE" and r.external_gateway_info["network_id"] == external.network_id
    info = admin.network.add_interface_to_router(r, subnet=sub.id)
    assert info["subnet_id"] == sub.id
    assert r.id in {x.id for x in admin.network.routers(name=r.name)}
    fip = admin.network.create_ip(floating_network_id=external.network_id)
    assert fip.status == "DOWN"
    # Router and floating IP ports are not deleted through the ports API while their device exists.
    error(raw("DELETE", f"/v2.0/ports/{info['port_id']}"), 409, "L3PortInUse")
    [fip_port] = raw("GET", "/v2.0/ports", params={"device_id": fip.id}).json()["ports"]
    error(raw("DELETE", f"/v2.0/ports/{fip_port['id']}"), 409, "L3PortInUse")
    # An external network with gateways stays external.
    error(raw("PUT", f"/v2.0/networks/{external.network_id}", json={"network": {"router:external": False}}),
          409, "ExternalNetworkInUse")
    # An update that changes nothing is no update.
    before = admin.network.get_router(r.id).revision_number
    same = raw("PUT", f"/v2.0/routers/{r.id}", json={"router": {
        "external_gateway_info": {"network_id": external.network_id}, "name": r.name}})
    assert same.status_code == 200 and same.json()["router"]["revision_number"] == before
    upd = admin.network.update_router(r, name="renamed", routes=[])
    assert upd.name == "renamed" and upd.revision_number == before + 1
    admin.network.delete_ip(fip)
    admin.network.remove_interface_from_router(r, subnet=sub.id)
    admin.network.delete_router(r)
    admin.network.delete_network(net)


def test_admin_picks_the_floating_ip_address(raw: Raw, external: External) -> None:
    ip = external.cidr.replace("0/24", "88")
    made = raw("POST", "/v2.0/floatingips", json={"floatingip": {"floating_network_id": external.network_id,
                                                                 "floating_ip_address": ip}})
    assert made.status_code == 201, made.text
    f = made.json()["floatingip"]
    assert f["floating_ip_address"] == ip
    error(raw("POST", "/v2.0/floatingips", json={"floatingip": {"floating_network_id": external.network_id,
                                                                "floating_ip_address": ip}}),
          409, "IpAddressAlreadyAllocated")
    assert raw("DELETE", f"/v2.0/floatingips/{f['id']}").status_code == 204
    again = raw("POST", "/v2.0/floatingips", json={"floatingip": {"floating_network_id": external.network_id,
                                                                  "floating_ip_address": ip}})
    assert again.status_code == 201
    assert raw("DELETE", f"/v2.0/floatingips/{again.json()['floatingip']['id']}").status_code == 204
