"""What an attacker and a stock Neutron test suite tried: each case was a hole, a 500 or a divergence.

A real server per backend, plain HTTP for exact codes and bodies; every refused request must also have
changed nothing.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openstack
import pytest

from tests.api.conftest import Raw, Server, error, member_connection, start_server, uniq

INJECTION = "a.example\noption:classless-static-route,0.0.0.0/1,10.105.0.66,128.0.0.0/1,10.105.0.66"


@pytest.fixture(scope="module")
def shared(admin: openstack.connection.Connection) -> Iterator[tuple[Any, Any]]:
    """An admin's shared network with an IPv4 subnet."""
    net = admin.network.create_network(name=uniq("shared"), is_shared=True)
    sub = admin.network.create_subnet(network_id=net.id, ip_version=4, cidr="10.105.0.0/24")
    yield net, sub
    for port in admin.network.ports(network_id=net.id):
        admin.network.delete_port(port)
    admin.network.delete_network(net)


@pytest.fixture(scope="module")
def bob(server: Server, admin: openstack.connection.Connection) -> Raw:
    """A member of a project of its own, with plain HTTP."""
    conn = member_connection(server, admin, uniq("bob"))
    return Raw.of(server.url, conn)


def port_ids(raw: Raw, network_id: str) -> set[str]:
    return {p["id"] for p in raw("GET", "/v2.0/ports", params={"network_id": network_id}).json()["ports"]}


def test_dhcp_option_injection_is_refused(raw: Raw, bob: Raw, shared: tuple[Any, Any]) -> None:
    net, _ = shared
    before = port_ids(raw, net.id)
    for opt in ({"opt_name": "domain-name", "opt_value": INJECTION},
                {"opt_name": "domain-name\nrouter", "opt_value": "10.105.0.66"},
                {"opt_name": "mtu", "opt_value": "1400\r"},
                {"opt_name": "mtu", "opt_value": "1400\x00"}):
        error(bob("POST", "/v2.0/ports", json={"port": {"network_id": net.id, "extra_dhcp_opts": [opt]}}),
              400, "HTTPBadRequest")
    assert port_ids(raw, net.id) == before
    port = bob("POST", "/v2.0/ports", json={"port": {"network_id": net.id, "extra_dhcp_opts": [
        {"opt_name": "domain-name", "opt_value": "a.example"}]}}).json()["port"]
    error(bob("PUT", f"/v2.0/ports/{port['id']}", json={"port": {"extra_dhcp_opts": [
        {"opt_name": "domain-name", "opt_value": INJECTION}]}}), 400, "HTTPBadRequest")
    shown = raw("GET", f"/v2.0/ports/{port['id']}").json()["port"]
    assert shown["extra_dhcp_opts"] == [{"opt_name": "domain-name", "opt_value": "a.example", "ip_version": 4}]
    # Neutron's update semantics: keyed by name and version, null removes, the others stay.
    updated = bob("PUT", f"/v2.0/ports/{port['id']}", json={"port": {"extra_dhcp_opts": [
        {"opt_name": "mtu", "opt_value": "1400"}]}}).json()["port"]
    assert [o["opt_name"] for o in updated["extra_dhcp_opts"]] == ["domain-name", "mtu"]
    updated = bob("PUT", f"/v2.0/ports/{port['id']}", json={"port": {"extra_dhcp_opts": [
        {"opt_name": "domain-name", "opt_value": None}]}}).json()["port"]
    assert updated["extra_dhcp_opts"] == [{"opt_name": "mtu", "opt_value": "1400", "ip_version": 4}]
    assert bob("DELETE", f"/v2.0/ports/{port['id']}").status_code == 204


def test_zone_ids_and_control_characters_in_addresses_are_refused(raw: Raw, shared: tuple[Any, Any]) -> None:
    net, sub = shared
    zoned = "fe80::1%eth0\noption:router,1.2.3.4"
    v6 = {"network_id": net.id, "ip_version": 6, "cidr": "2001:db8:105::/64"}
    for extra in ({"dns_nameservers": ["fe80::1%eth0"]}, {"dns_nameservers": [zoned]},
                  {"gateway_ip": "2001:db8:105::1%eth0"},
                  {"allocation_pools": [{"start": "2001:db8:105::10%lo", "end": "2001:db8:105::20"}]},
                  {"host_routes": [{"destination": "2001:db8:9::/64", "nexthop": "fe80::1%eth0"}]},
                  {"cidr": "2001:db8:106::%eth0/64"}):
        error(raw("POST", "/v2.0/subnets", json={"subnet": {**v6, **extra}}), 400, "HTTPBadRequest")
    error(raw("PUT", f"/v2.0/subnets/{sub.id}", json={"subnet": {"dns_nameservers": ["10.0.0.1\n"]}}),
          400, "HTTPBadRequest")
    error(raw("POST", "/v2.0/ports", json={"port": {"network_id": net.id, "fixed_ips": [
        {"ip_address": "10.105.0.9%eth0"}]}}), 400, "HTTPBadRequest")
    assert not raw("GET", "/v2.0/subnets", params={"network_id": net.id, "ip_version": 6}).json()["subnets"]


@pytest.mark.parametrize("cidr", ["0.0.0.0/0", "224.0.0.0/24", "127.0.0.0/24", "ff05::/64"])
def test_subnets_dhcp_cannot_serve_are_refused(raw: Raw, cidr: str) -> None:
    net = raw("POST", "/v2.0/networks", json={"network": {"name": uniq("dhcp")}}).json()["network"]
    try:
        version = 6 if ":" in cidr else 4
        body = {"network_id": net["id"], "ip_version": version, "cidr": cidr}
        error(raw("POST", "/v2.0/subnets", json={"subnet": body}), 400, "InvalidInput")
        made = raw("POST", "/v2.0/subnets", json={"subnet": {**body, "enable_dhcp": False}})
        assert made.status_code == 201, made.text
        sid = made.json()["subnet"]["id"]
        error(raw("PUT", f"/v2.0/subnets/{sid}", json={"subnet": {"enable_dhcp": True}}), 400, "InvalidInput")
        assert raw("GET", f"/v2.0/subnets/{sid}").json()["subnet"]["enable_dhcp"] is False
    finally:
        raw("DELETE", f"/v2.0/networks/{net['id']}")


def test_shared_network_port_policy(raw: Raw, bob: Raw, shared: tuple[Any, Any]) -> None:
    net, sub = shared
    before = port_ids(raw, net.id)
    base = {"network_id": net.id}
    for extra, rule in (({"mac_address": "fa:16:3e:aa:bb:cc"}, "mac_address"),
                        ({"allowed_address_pairs": [{"ip_address": "10.105.0.0/24"}]}, "allowed_address_pairs"),
                        ({"port_security_enabled": False}, "port_security_enabled"),
                        ({"device_owner": "network:dhcp"}, "device_owner"),
                        ({"device_owner": "network:router_interface"}, "device_owner"),
                        ({"fixed_ips": [{"ip_address": "10.105.0.1"}]}, "fixed_ips:ip_address")):
        body = error(bob("POST", "/v2.0/ports", json={"port": {**base, **extra}}), 403, "PolicyNotAuthorized")
        assert rule in body["message"]
    # Another project's id is Neutron's 400, not a port in someone else's name.
    error(bob("POST", "/v2.0/ports", json={"port": {**base, "project_id": "someone-else"}}), 400, "HTTPBadRequest")
    assert port_ids(raw, net.id) == before
    mine = bob("POST", "/v2.0/ports", json={"port": {**base, "device_owner": "compute:nova",
                                                      "fixed_ips": [{"subnet_id": sub.id}]}})
    assert mine.status_code == 201, mine.text
    pid = mine.json()["port"]["id"]
    held = mine.json()["port"]["fixed_ips"]
    for extra in ({"allowed_address_pairs": [{"ip_address": "10.105.0.1"}]}, {"port_security_enabled": False},
                  {"device_owner": "network:router_gateway"},
                  {"fixed_ips": [*held, {"subnet_id": sub.id, "ip_address": "10.105.0.99"}]}):
        error(bob("PUT", f"/v2.0/ports/{pid}", json={"port": extra}), 403, "PolicyNotAuthorized")
    # Naming the addresses it holds (as `openstack port set --fixed-ip` does) and asking for one more is fine.
    more = bob("PUT", f"/v2.0/ports/{pid}", json={"port": {"fixed_ips": [*held, {"subnet_id": sub.id}]}})
    assert more.status_code == 200 and len(more.json()["port"]["fixed_ips"]) == 2, more.text
    shown = raw("GET", f"/v2.0/ports/{pid}").json()["port"]
    assert shown["allowed_address_pairs"] == [] and shown["port_security_enabled"] is True
    assert shown["device_owner"] == "compute:nova"
    # The network's owner (here the admin) may do all of it.
    pairs = raw("PUT", f"/v2.0/ports/{pid}", json={"port": {"allowed_address_pairs": [{"ip_address": "10.105.0.7"}]}})
    assert pairs.status_code == 200, pairs.text
    assert bob("DELETE", f"/v2.0/ports/{pid}").status_code == 204


def test_list_queries_that_used_to_fail(raw: Raw) -> None:
    error(raw("GET", "/v2.0/networks", params={"page_reverse": "maybe"}), 400, "HTTPBadRequest")
    error(raw("GET", "/v2.0/networks", params={"limit": "-1"}), 400, "HTTPBadRequest")
    for huge in (str(2 ** 70), "9" * 5000):
        assert raw("GET", "/v2.0/networks", params={"limit": huge}).status_code == 200
    for key in ("mtu", "revision_number"):
        error(raw("GET", "/v2.0/networks", params={key: str(2 ** 70)}), 400, "HTTPBadRequest")
    net = raw("POST", "/v2.0/networks", json={"network": {"name": uniq("since")}}).json()["network"]
    everything = raw("GET", "/v2.0/networks", params={"changed_since": "0001-01-01T00:00:00+14:00"})
    assert everything.status_code == 200 and net["id"] in {n["id"] for n in everything.json()["networks"]}
    nothing = raw("GET", "/v2.0/networks", params={"changed_since": "9999-12-31T23:59:59-14:00"})
    assert nothing.status_code == 200 and nothing.json()["networks"] == []
    error(raw("GET", "/v2.0/subnets", params={"shared": "maybe"}), 400, "HTTPBadRequest")
    raw("DELETE", f"/v2.0/networks/{net['id']}")


def test_subnets_filter_on_their_networks_sharing(raw: Raw, shared: tuple[Any, Any]) -> None:
    _, sub = shared
    private = raw("POST", "/v2.0/networks", json={"network": {"name": uniq("private")}}).json()["network"]
    try:
        mine = raw("POST", "/v2.0/subnets", json={"subnet": {"network_id": private["id"], "ip_version": 4,
                                                             "cidr": "10.106.0.0/24"}}).json()["subnet"]
        on_shared = {s["id"] for s in raw("GET", "/v2.0/subnets", params={"shared": "true"}).json()["subnets"]}
        not_shared = {s["id"] for s in raw("GET", "/v2.0/subnets", params={"shared": "false"}).json()["subnets"]}
        assert sub.id in on_shared and sub.id not in not_shared
        assert mine["id"] in not_shared and mine["id"] not in on_shared
    finally:
        raw("DELETE", f"/v2.0/networks/{private['id']}")


def walk(raw: Raw, collection: str, params: dict[str, Any]) -> list[str]:
    """Follow ``next`` links from the first page; the ids in the order seen."""
    seen: list[str] = []
    page = raw("GET", f"/v2.0/{collection}", params=params)
    for _ in range(100):
        assert page.status_code == 200, page.text
        body = page.json()
        seen += [item["id"] for item in body[collection]]
        nxt = [link["href"] for link in body.get(f"{collection}_links", []) if link["rel"] == "next"]
        if not nxt:
            return seen
        page = raw("GET", nxt[0].removeprefix(raw.url))
    raise AssertionError("paging does not end")


def test_paging_over_boolean_and_nullable_columns(raw: Raw) -> None:
    tag = uniq("keyset")
    made = []
    for i in range(5):
        net = raw("POST", "/v2.0/networks", json={"network": {"name": f"{tag}-{i}", "shared": i % 2 == 0}})
        made.append(net.json()["network"]["id"])
        raw("PUT", f"/v2.0/networks/{made[-1]}/tags", json={"tags": [tag]})
    subnets = []
    for i, nid in enumerate(made[:4]):
        body: dict[str, Any] = {"network_id": nid, "ip_version": 4, "cidr": f"10.107.{i}.0/24"}
        if i % 2:
            body["gateway_ip"] = None
        subnets.append(raw("POST", "/v2.0/subnets", json={"subnet": body}).json()["subnet"]["id"])
        raw("PUT", f"/v2.0/subnets/{subnets[-1]}/tags", json={"tags": [tag]})
    try:
        for sort_dir in ("asc", "desc"):
            nets = walk(raw, "networks", {"tags": tag, "sort_key": "shared", "sort_dir": sort_dir, "limit": 1})
            assert sorted(nets) == sorted(made) and len(nets) == len(made)
            subs = walk(raw, "subnets", {"tags": tag, "sort_key": "gateway_ip", "sort_dir": sort_dir, "limit": 1})
            assert sorted(subs) == sorted(subnets) and len(subs) == len(subnets)
        # Backwards from the last page reaches the first again.
        full = raw("GET", "/v2.0/subnets", params={"tags": tag, "sort_key": "gateway_ip"}).json()["subnets"]
        back = raw("GET", "/v2.0/subnets", params={"tags": tag, "sort_key": "gateway_ip", "limit": 2,
                                                   "marker": full[-1]["id"], "page_reverse": "True"}).json()
        assert [s["id"] for s in back["subnets"]] == [s["id"] for s in full[-3:-1]]
    finally:
        for nid in made:
            raw("DELETE", f"/v2.0/networks/{nid}")


def test_full_last_page_still_links_onward(raw: Raw) -> None:
    tag = uniq("lastpage")
    made = [raw("POST", "/v2.0/networks", json={"network": {"name": f"{tag}-{i}"}})
            for i in range(2)]
    ids = []
    for resp in made:
        nid = resp.json()["network"]["id"] if resp.status_code == 201 else None
        assert nid, resp.text
        ids.append(nid)
        raw("PUT", f"/v2.0/networks/{nid}/tags", json={"tags": [tag]})
    try:
        page = raw("GET", "/v2.0/networks", params={"tags": tag, "limit": 2}).json()
        assert len(page["networks"]) == 2
        nxt = [link["href"] for link in page["networks_links"] if link["rel"] == "next"]
        assert nxt, page  # as Neutron: a full page cannot know it is the last
        after = raw("GET", nxt[0].removeprefix(raw.url)).json()
        assert after["networks"] == [] and "networks_links" not in after
    finally:
        for nid in ids:
            raw("DELETE", f"/v2.0/networks/{nid}")


def test_a_thousand_fixed_ip_filters(raw: Raw, shared: tuple[Any, Any]) -> None:
    net, _ = shared
    a = raw("POST", "/v2.0/ports", json={"port": {"network_id": net.id, "fixed_ips": [
        {"ip_address": "10.105.0.201"}]}}).json()["port"]
    b = raw("POST", "/v2.0/ports", json={"port": {"network_id": net.id, "fixed_ips": [
        {"ip_address": "10.105.0.202"}]}}).json()["port"]
    try:
        wanted = [f"ip_address=10.105.{i // 250}.{i % 250}" for i in range(1000)] + ["ip_address=10.105.0.202"]
        found = raw("GET", "/v2.0/ports", params={"fixed_ips": wanted})
        assert found.status_code == 200, found.text
        assert {p["id"] for p in found.json()["ports"]} == {a["id"], b["id"]}  # repeated values OR
        both = raw("GET", "/v2.0/ports", params={"fixed_ips": ["ip_address=10.105.0.201",
                                                                f"subnet_id={a['fixed_ips'][0]['subnet_id']}"]})
        assert [p["id"] for p in both.json()["ports"]] == [a["id"]]  # different keys AND, on one address
        substr = raw("GET", "/v2.0/ports", params={"fixed_ips": "ip_address_substr=0.20", "network_id": net.id})
        assert {p["id"] for p in substr.json()["ports"]} >= {a["id"], b["id"]}
    finally:
        raw("DELETE", f"/v2.0/ports/{a['id']}")
        raw("DELETE", f"/v2.0/ports/{b['id']}")


def test_quota_values_are_bounded(raw: Raw) -> None:
    path = f"/v2.0/quotas/{uniq('proj')}"
    for value in (1e30, 2 ** 31, "x", -2, 1.5, [1], {"a": 1}, True):
        error(raw("PUT", path, json={"quota": {"network": value}}), 400, "HTTPBadRequest")
    ok = raw("PUT", path, json={"quota": {"network": 2 ** 31 - 1}})
    assert ok.status_code == 200 and ok.json()["quota"]["network"] == 2 ** 31 - 1


def test_quota_check_limit_refuses_limits_below_usage(raw: Raw, bob: Raw) -> None:
    project = bob("GET", "/v2.0/quotas/tenant").json()["tenant"]["project_id"]
    made = [bob("POST", "/v2.0/networks", json={"network": {"name": uniq("q")}}).json()["network"]["id"]
            for _ in range(2)]
    try:
        path = f"/v2.0/quotas/{project}"
        error(raw("PUT", path, json={"quota": {"network": 1, "check_limit": True}}), 409, "InvalidQuotaValue")
        assert raw("GET", path).json()["quota"]["network"] != 1
        for ok in ({"network": 2, "check_limit": True}, {"network": 1, "check_limit": False}, {"network": -1}):
            assert raw("PUT", path, json={"quota": ok}).status_code == 200
        error(raw("PUT", path, json={"quota": {"check_limit": "maybe"}}), 400, "HTTPBadRequest")
    finally:
        for nid in made:
            raw("DELETE", f"/v2.0/networks/{nid}")


def test_tags_only_on_tagged_resources(raw: Raw, shared: tuple[Any, Any]) -> None:
    agents = raw("GET", "/v2.0/agents").json()["agents"]
    target = agents[0]["id"] if agents else "00000000-0000-0000-0000-000000000000"
    error(raw("PUT", f"/v2.0/agents/{target}/tags", json={"tags": ["a"]}), 404, "HTTPNotFound")
    error(raw("PUT", f"/v2.0/agents/{target}/tags/a"), 404, "HTTPNotFound")
    net, _ = shared
    error(raw("PUT", f"/v2.0/networks/{net.id}/tags", json={"tags": [f"t{i}" for i in range(51)]}),
          400, "InvalidInput")


def test_agent_channel_refuses_malformed_bodies(raw: Raw) -> None:
    reports: list[Any] = [[], True, "x", 5, {}, {"host": 5, "agent_type": "DHCP agent"},
                 {"host": "h", "agent_type": "nope"}, {"host": "h", "agent_type": "DHCP agent", "configurations": []},
                 {"host": "h", "agent_type": "DHCP agent", "start_flag": "yes"},
                 {"host": "h", "agent_type": "DHCP agent", "configurations": nested(300)}]
    for body in reports:
        error(raw("POST", "/agent-api/v1/report", json=body), 400, "HTTPBadRequest")
    statuses: list[Any] = [[], True, {"down": 5}, {"active": [1, 2]}, {"host": ["h"]}]
    for body in statuses:
        error(raw("POST", "/agent-api/v1/port-status", json=body), 400, "HTTPBadRequest")
    assert raw("POST", "/agent-api/v1/port-status", json={"host": "nowhere", "active": []}).json() == {"changed": 0}


def test_every_wait_is_bounded(raw: Raw) -> None:
    for params in ({"timeout": "nan"}, {"timeout": "inf"}, {"timeout": "-1"}, {"timeout": "1e308"},
                   {"after": str(2 ** 70)}, {"after": "x"}, {"after": "nan"}):
        started = time.monotonic()
        error(raw("GET", "/agent-api/v1/wait", params=params), 400, "HTTPBadRequest")
        assert time.monotonic() - started < 5
    assert "revision" in raw("GET", "/agent-api/v1/wait", params={"timeout": "0"}).json()


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def test_binding_profile_depth_is_bounded(raw: Raw, shared: tuple[Any, Any]) -> None:
    net, _ = shared
    before = port_ids(raw, net.id)
    error(raw("POST", "/v2.0/ports", json={"port": {"network_id": net.id, "binding:profile": nested(300)}}),
          400, "HTTPBadRequest")
    assert port_ids(raw, net.id) == before
    ok = raw("POST", "/v2.0/ports", json={"port": {"network_id": net.id, "binding:profile": nested(8)}})
    assert ok.status_code == 201, ok.text
    raw("DELETE", f"/v2.0/ports/{ok.json()['port']['id']}")


def test_request_bodies_are_capped(raw: Raw) -> None:
    big = json.dumps({"network": {"name": "x", "description": "y" * 200_000}})
    error(raw("POST", "/v2.0/networks", content=big, headers={"Content-Type": "application/json"}),
          413, "HTTPRequestEntityTooLarge")

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while it streams
        yield b'{"network": {"name": "'
        for _ in range(200):
            yield b"z" * 1000
        yield b'"}}'

    resp = httpx.post(raw.url + "/v2.0/networks", content=chunks(), timeout=30,
                      headers={"X-Auth-Token": raw.token, "Content-Type": "application/json"})
    error(resp, 413, "HTTPRequestEntityTooLarge")


def test_ipv6_needs_a_1280_mtu(raw: Raw) -> None:
    error(raw("POST", "/v2.0/networks", json={"network": {"name": "tiny", "mtu": 67}}), 400, "HTTPBadRequest")
    small = raw("POST", "/v2.0/networks", json={"network": {"name": uniq("small"), "mtu": 1200}}).json()["network"]
    big = raw("POST", "/v2.0/networks", json={"network": {"name": uniq("big")}}).json()["network"]
    try:
        error(raw("POST", "/v2.0/subnets", json={"subnet": {"network_id": small["id"], "ip_version": 6,
                                                            "cidr": "2001:db8:108::/64"}}),
              409, "NetworkMTUSubnetConflict")
        assert raw("POST", "/v2.0/subnets", json={"subnet": {"network_id": small["id"], "ip_version": 4,
                                                             "cidr": "10.108.0.0/24"}}).status_code == 201
        assert raw("POST", "/v2.0/subnets", json={"subnet": {"network_id": big["id"], "ip_version": 6,
                                                             "cidr": "2001:db8:109::/64"}}).status_code == 201
        error(raw("PUT", f"/v2.0/networks/{big['id']}", json={"network": {"mtu": 1279}}),
              409, "NetworkMTUSubnetConflict")
        error(raw("PUT", f"/v2.0/networks/{big['id']}", json={"network": {"mtu": 50}}), 400, "HTTPBadRequest")
        assert raw("GET", f"/v2.0/networks/{big['id']}").json()["network"]["mtu"] > 1280
    finally:
        raw("DELETE", f"/v2.0/networks/{small['id']}")
        raw("DELETE", f"/v2.0/networks/{big['id']}")


def test_external_networks_are_visible_to_every_project(raw: Raw, bob: Raw) -> None:
    ext = raw("POST", "/v2.0/networks", json={"network": {"name": uniq("public"), "router:external": True}})
    ext_id = ext.json()["network"]["id"]
    try:
        assert ext_id in {n["id"] for n in bob("GET", "/v2.0/networks").json()["networks"]}
        assert bob("GET", f"/v2.0/networks/{ext_id}").json()["network"]["router:external"] is True
        listed = bob("GET", "/v2.0/networks", params={"router:external": "true"}).json()["networks"]
        assert ext_id in {n["id"] for n in listed}
        # Visible is not pluggable: routers reach it through their gateway.
        error(bob("POST", "/v2.0/ports", json={"port": {"network_id": ext_id}}), 403, "HTTPForbidden")
        error(bob("PUT", f"/v2.0/networks/{ext_id}", json={"network": {"name": "mine"}}), 403,
              "PolicyNotAuthorized")
    finally:
        raw("DELETE", f"/v2.0/networks/{ext_id}")


def test_port_update_adds_an_address_on_a_named_subnet(raw: Raw, shared: tuple[Any, Any]) -> None:
    net, sub = shared
    port = raw("POST", "/v2.0/ports", json={"port": {"network_id": net.id}}).json()["port"]
    try:
        [current] = port["fixed_ips"]
        updated = raw("PUT", f"/v2.0/ports/{port['id']}", json={"port": {"fixed_ips": [
            current, {"subnet_id": sub.id}]}})
        assert updated.status_code == 200, updated.text
        ips = updated.json()["port"]["fixed_ips"]
        assert len(ips) == 2 and ips[0] == current and ips[1]["subnet_id"] == sub.id
        assert ips[1]["ip_address"] != current["ip_address"]
        # Naming only the subnet keeps one of the port's addresses on it (not a new one).
        kept = raw("PUT", f"/v2.0/ports/{port['id']}", json={"port": {"fixed_ips": [{"subnet_id": sub.id}]}})
        assert [f["ip_address"] for f in kept.json()["port"]["fixed_ips"]] == [current["ip_address"]]
    finally:
        raw("DELETE", f"/v2.0/ports/{port['id']}")


def test_a_reader_lists_agents(server: Server, admin: openstack.connection.Connection, raw: Raw) -> None:
    reader = member_connection(server, admin, uniq("reader"), role="reader")
    as_reader = Raw.of(server.url, reader)
    listed = as_reader("GET", "/v2.0/agents")
    assert listed.status_code == 200 and listed.json() == {"agents": []}
    agents = raw("GET", "/v2.0/agents").json()["agents"]
    if agents:
        error(as_reader("GET", f"/v2.0/agents/{agents[0]['id']}"), 404, "AgentNotFound")


def test_vlan_networks_get_a_segment_from_the_ranges(tmp_path: Path) -> None:
    srv = start_server(tmp_path, f"sqlite:///{tmp_path / 'n.db'}", "sqlite",
                       {"NEUTRINO_NETWORK__VLAN_RANGES": "physnet1:100:101,physnet2"})
    try:
        conn = openstack.connection.Connection(auth={
            "auth_url": f"{srv.url}/identity/v3", "username": "admin", "password": "secret",
            "project_name": "admin", "user_domain_name": "Default", "project_domain_name": "Default"},
            region_name="RegionOne", identity_api_version="3")
        raw = Raw.of(srv.url, conn)

        def vlan(**extra: Any) -> httpx.Response:
            return raw("POST", "/v2.0/networks", json={"network": {
                "name": uniq("vlan"), "provider:network_type": "vlan", **extra}})

        first = vlan(**{"provider:physical_network": "physnet1"}).json()["network"]
        assert (first["provider:physical_network"], first["provider:segmentation_id"]) == ("physnet1", 100)
        second = vlan().json()["network"]
        assert (second["provider:physical_network"], second["provider:segmentation_id"]) == ("physnet1", 101)
        error(vlan(), 409, "NoNetworkAvailable")
        error(vlan(**{"provider:physical_network": "physnet2"}), 400, "InvalidInput")
        given = vlan(**{"provider:physical_network": "physnet2", "provider:segmentation_id": 7})
        assert given.status_code == 201, given.text
        assert raw("DELETE", f"/v2.0/networks/{first['id']}").status_code == 204
        assert vlan().json()["network"]["provider:segmentation_id"] == 100  # freed ids come back
    finally:
        srv.stop()


def test_nul_characters_are_refused_not_stored(raw: Raw) -> None:
    """PostgreSQL cannot store NUL in text: refused as bad input on every backend, never a 500."""
    error(raw("POST", "/v2.0/networks", json={"network": {"name": "a\x00b"}}), 400, "HTTPBadRequest")
    error(raw("GET", "/v2.0/networks", params={"name": "a\x00b"}), 400, "HTTPBadRequest")
    assert raw("GET", "/v2.0/networks/a%00b").status_code in (400, 404)


def test_timestamp_filters_take_times(raw: Raw) -> None:
    """created_at & co. compare as times on every backend (PostgreSQL refused text against a timestamp)."""
    net = raw("POST", "/v2.0/networks", json={"network": {"name": uniq("ts")}}).json()["network"]
    try:
        found = raw("GET", "/v2.0/networks", params={"created_at": net["created_at"]}).json()["networks"]
        assert net["id"] in {n["id"] for n in found}
        for bad in ("", "1", "yesterday", "2026-13-01T00:00:00"):
            error(raw("GET", "/v2.0/networks", params={"updated_at": bad}), 400, "HTTPBadRequest")
            error(raw("GET", "/v2.0/agents", params={"heartbeat_timestamp": bad}), 400, "HTTPBadRequest")
    finally:
        raw("DELETE", f"/v2.0/networks/{net['id']}")


def test_sigterm_does_not_wait_for_agents_long_polls(tmp_path: Path) -> None:
    """A remote agent is always in a long poll (up to 55 s): stopping the server answers it at once, with
    503 ServiceUnavailable (the agent asks its next server)."""
    srv = start_server(tmp_path, f"sqlite:///{tmp_path / 'n.db'}", "sqlite")
    try:
        token = httpx.post(f"{srv.url}/identity/v3/auth/tokens", json={"auth": {"identity": {
            "methods": ["password"], "password": {"user": {"name": "admin", "domain": {"name": "Default"},
                                                           "password": "secret"}}},
            "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}}).headers["X-Subject-Token"]
        answers: list[httpx.Response] = []
        poll = threading.Thread(target=lambda: answers.append(httpx.get(
            f"{srv.url}/agent-api/v1/wait", params={"after": 10 ** 9, "timeout": 50},
            headers={"X-Auth-Token": token}, timeout=60)))
        poll.start()
        time.sleep(0.5)  # the poll is in
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        srv.proc.wait(15)
        assert time.monotonic() - started < 5
        poll.join(10)
        assert [r.status_code for r in answers] == [503]
        assert answers[0].json()["NeutronError"]["type"] == "ServiceUnavailable"
    finally:
        srv.stop()
