"""openstacksdk and plain HTTP against a real server: conventions, rules, errors, isolation, quotas."""

from __future__ import annotations

import datetime as dt
import ipaddress
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import openstack
import pytest
from openstack import exceptions as sdk_exc

from tests.api.conftest import Raw, Server, error, member_connection, uniq


@pytest.fixture
def net(admin: openstack.connection.Connection) -> Iterator[Any]:
    network = admin.network.create_network(name=uniq("net"))
    yield network
    for port in admin.network.ports(network_id=network.id):
        admin.network.delete_port(port)
    admin.network.delete_network(network, ignore_missing=True)


def test_discovery(raw: Raw) -> None:
    versions = raw("GET", "/").json()["versions"]
    assert versions[0]["id"] == "v2.0" and versions[0]["status"] == "CURRENT"
    collections = {r["collection"] for r in raw("GET", "/v2.0").json()["resources"]}
    assert {"networks", "subnets", "ports"} <= collections
    ext = raw("GET", "/v2.0/extensions/quotas").json()["extension"]
    assert ext["alias"] == "quotas"
    error(raw("GET", "/v2.0/extensions/nope"), 404, "HTTPNotFound")


def test_unauthenticated_is_refused(server: Server) -> None:
    import httpx
    resp = httpx.get(server.url + "/v2.0/networks")
    assert resp.status_code == 401
    resp = httpx.get(server.url + "/v2.0/networks", headers={"X-Auth-Token": "bogus"})
    assert resp.status_code == 401


def test_bulk_create_is_atomic(raw: Raw) -> None:
    names = [uniq("bulk") for _ in range(3)]
    ok = raw("POST", "/v2.0/networks", json={"networks": [{"name": n} for n in names]})
    assert ok.status_code == 201
    created = ok.json()["networks"]
    assert [n["name"] for n in created] == names
    bad = raw("POST", "/v2.0/networks", json={"networks": [{"name": uniq("b")}, {"name": 5}]})
    error(bad, 400, "HTTPBadRequest")
    listed = raw("GET", "/v2.0/networks", params={"name": names + ["nothing"]}).json()["networks"]
    assert sorted(n["name"] for n in listed) == sorted(names)  # repeated keys are OR
    for n in created:
        assert raw("DELETE", f"/v2.0/networks/{n['id']}").status_code == 204


def test_pagination_sorting_fields(admin: openstack.connection.Connection, raw: Raw) -> None:
    tag = uniq("page")
    made = [admin.network.create_network(name=f"{tag}-{i:02d}") for i in range(7)]
    for n in made:
        admin.network.set_tags(n, [tag])
    try:
        first = raw("GET", "/v2.0/networks", params={"tags": tag, "limit": 3, "sort_key": "name",
                                                     "sort_dir": "desc", "fields": ["id", "name"]}).json()
        assert [n["name"] for n in first["networks"]] == [f"{tag}-06", f"{tag}-05", f"{tag}-04"]
        assert set(first["networks"][0]) == {"id", "name"}
        nxt = next(link["href"] for link in first["networks_links"] if link["rel"] == "next")
        second = raw("GET", nxt.removeprefix(raw.url)).json()
        assert [n["name"] for n in second["networks"]] == [f"{tag}-03", f"{tag}-02", f"{tag}-01"]
        prev = next(link["href"] for link in second["networks_links"] if link["rel"] == "previous")
        back = raw("GET", prev.removeprefix(raw.url)).json()
        assert [n["name"] for n in back["networks"]] == [f"{tag}-06", f"{tag}-05", f"{tag}-04"]
        # The SDK follows the links itself.
        names = [n.name for n in admin.network.networks(tags=tag, limit=2, sort_key="name", sort_dir="asc")]
        assert names == [f"{tag}-{i:02d}" for i in range(7)]
        error(raw("GET", "/v2.0/networks", params={"sort_key": "nope"}), 400, "HTTPBadRequest")
        error(raw("GET", "/v2.0/networks", params={"limit": "x"}), 400, "HTTPBadRequest")
    finally:
        for n in made:
            admin.network.delete_network(n)


def test_tag_subresources_and_filters(raw: Raw, net: Any) -> None:
    path = f"/v2.0/networks/{net.id}/tags"
    assert raw("PUT", path, json={"tags": ["a", "b", "c"]}).json() == {"tags": ["a", "b", "c"]}
    assert raw("PUT", f"{path}/d").status_code == 201
    assert raw("GET", f"{path}/d").status_code == 204
    error(raw("GET", f"{path}/zz"), 404, "TagNotFound")
    assert raw("DELETE", f"{path}/a").status_code == 204
    assert raw("GET", path).json() == {"tags": ["b", "c", "d"]}

    def ids(**params: Any) -> set[str]:
        return {n["id"] for n in raw("GET", "/v2.0/networks", params=params).json()["networks"]}

    assert net.id in ids(tags="b,c")
    assert net.id not in ids(tags="b,a")
    assert net.id in ids(**{"tags-any": "a,d"})
    assert net.id not in ids(**{"not-tags": "b,c"})
    assert net.id in ids(**{"not-tags": "b,a"})
    assert net.id not in ids(**{"not-tags-any": "x,d"})
    # HEAD reads like GET and never writes (not the tags, not the network itself).
    for head in (path, f"{path}/d", f"/v2.0/networks/{net.id}", "/v2.0/networks", "/v2.0/quotas/admin"):
        assert raw("HEAD", head).status_code in (200, 204), head
    assert raw("GET", path).json() == {"tags": ["b", "c", "d"]}
    assert raw("DELETE", path).status_code == 204
    assert raw("GET", path).json() == {"tags": []}


def test_if_match_revision(raw: Raw, net: Any) -> None:
    current = raw("GET", f"/v2.0/networks/{net.id}").json()["network"]["revision_number"]
    stale = raw("PUT", f"/v2.0/networks/{net.id}", json={"network": {"name": "x"}},
                headers={"If-Match": f"revision_number={current + 5}"})
    error(stale, 412, "RevisionNumberConstraintFailed")
    assert raw("GET", f"/v2.0/networks/{net.id}").json()["network"]["name"] == net.name
    ok = raw("PUT", f"/v2.0/networks/{net.id}", json={"network": {"name": "renamed"}},
             headers={"If-Match": f"revision_number={current}"})
    assert ok.status_code == 200
    assert ok.json()["network"]["revision_number"] == current + 1


def test_subnet_rules(raw: Raw, net: Any) -> None:
    def make(**body: Any) -> Any:
        return raw("POST", "/v2.0/subnets", json={"subnet": {"network_id": net.id, "ip_version": 4, **body}})

    sub = make(cidr="10.20.0.0/24").json()["subnet"]
    assert sub["gateway_ip"] == "10.20.0.1"
    assert sub["allocation_pools"] == [{"start": "10.20.0.2", "end": "10.20.0.254"}]
    error(make(cidr="10.20.0.128/25"), 400, "InvalidInput")                       # overlaps
    error(make(cidr="10.21.0.0/24", allocation_pools=[{"start": "10.22.0.1", "end": "10.22.0.9"}]),
          400, "InvalidInput")                                                     # pool outside cidr
    error(make(cidr="10.21.0.0/24", gateway_ip="10.21.0.5",
               allocation_pools=[{"start": "10.21.0.2", "end": "10.21.0.9"}]), 400, "InvalidInput")
    error(make(cidr="10.21.0.0/24", allocation_pools=[{"start": "10.21.0.2", "end": "10.21.0.9"},
                                                      {"start": "10.21.0.5", "end": "10.21.0.20"}]),
          400, "InvalidInput")                                                     # pools overlap
    error(make(cidr="10.21.0.0/33"), 400, "HTTPBadRequest")
    error(make(cidr="10.21.0.7/24"), 400, "HTTPBadRequest")
    error(make(cidr="2001:db8::/64"), 400, "InvalidInput")                         # wrong ip_version
    error(make(cidr="10.21.0.0/24", gateway_ip="10.21.0.0"), 400, "InvalidInput")  # the network address
    error(make(cidr="10.21.0.0/24", gateway_ip="2001:db8::1"), 400, "InvalidInput")
    nogw = make(cidr="10.23.0.0/24", gateway_ip=None).json()["subnet"]
    assert nogw["gateway_ip"] is None
    assert nogw["allocation_pools"] == [{"start": "10.23.0.1", "end": "10.23.0.254"}]
    # A gateway outside the cidr is allowed (reached on-link); the pools keep the whole range.
    outside = make(cidr="10.24.0.0/24", gateway_ip="10.99.0.1").json()["subnet"]
    assert outside["gateway_ip"] == "10.99.0.1"
    assert outside["allocation_pools"] == [{"start": "10.24.0.1", "end": "10.24.0.254"}]
    # Nothing was created by the refused requests.
    cidrs = sorted(s["cidr"] for s in raw("GET", "/v2.0/subnets", params={"network_id": net.id}).json()["subnets"])
    assert cidrs == ["10.20.0.0/24", "10.23.0.0/24", "10.24.0.0/24"]
    error(raw("PUT", f"/v2.0/subnets/{sub['id']}", json={"subnet": {"cidr": "10.30.0.0/24"}}), 400,
          "HTTPBadRequest")


def test_port_address_rules(raw: Raw, net: Any) -> None:
    # No DHCP on this subnet: a DHCP port would take one of the few addresses counted below.
    sub = raw("POST", "/v2.0/subnets", json={"subnet": {
        "network_id": net.id, "ip_version": 4, "cidr": "10.40.0.0/29", "enable_dhcp": False}}).json()["subnet"]

    def port(**body: Any) -> Any:
        return raw("POST", "/v2.0/ports", json={"port": {"network_id": net.id, **body}})

    fixed = port(fixed_ips=[{"ip_address": "10.40.0.4"}])
    assert fixed.status_code == 201
    error(port(fixed_ips=[{"ip_address": "10.40.0.4"}]), 409, "IpAddressAlreadyAllocated")
    error(port(fixed_ips=[{"subnet_id": sub["id"], "ip_address": "10.99.0.4"}]), 400, "InvalidIpForSubnet")
    mac = fixed.json()["port"]["mac_address"]
    error(port(mac_address=mac), 409, "MacAddressInUse")
    got = [port().json()["port"]["fixed_ips"][0]["ip_address"] for _ in range(4)]
    assert sorted(got, key=ipaddress.ip_address) == ["10.40.0.2", "10.40.0.3", "10.40.0.5", "10.40.0.6"]
    error(port(), 409, "IpAddressGenerationFailure")
    error(raw("DELETE", f"/v2.0/subnets/{sub['id']}"), 409, "SubnetInUse")
    error(raw("DELETE", f"/v2.0/networks/{net.id}"), 409, "NetworkInUse")
    # Update fixed_ips: move the port to a specific free address; the old one is freed.
    pid = fixed.json()["port"]["id"]
    raw("DELETE", f"/v2.0/ports/{port_id_of(raw, net.id, '10.40.0.6')}")
    moved = raw("PUT", f"/v2.0/ports/{pid}", json={"port": {"fixed_ips": [{"ip_address": "10.40.0.6"}]}})
    assert moved.json()["port"]["fixed_ips"] == [{"subnet_id": sub["id"], "ip_address": "10.40.0.6"}]
    assert port(fixed_ips=[{"ip_address": "10.40.0.4"}]).status_code == 201


def port_id_of(raw: Raw, network_id: str, ip: str) -> str:
    found = raw("GET", "/v2.0/ports", params={"network_id": network_id, "fixed_ips": f"ip_address={ip}"})
    return str(found.json()["ports"][0]["id"])


def test_ipv6_slaac_eui64(raw: Raw, net: Any) -> None:
    sub = raw("POST", "/v2.0/subnets", json={"subnet": {
        "network_id": net.id, "ip_version": 6, "cidr": "2001:db8:1::/64",
        "ipv6_ra_mode": "slaac", "ipv6_address_mode": "slaac"}}).json()["subnet"]
    p = raw("POST", "/v2.0/ports", json={"port": {"network_id": net.id, "mac_address": "fa:16:3e:11:22:33"}})
    assert p.json()["port"]["fixed_ips"] == [{"subnet_id": sub["id"], "ip_address": "2001:db8:1:0:f816:3eff:fe11:2233"}]


def test_bad_input_is_400_and_changes_nothing(raw: Raw, net: Any) -> None:
    before = raw("GET", f"/v2.0/networks/{net.id}").json()["network"]
    cases = [
        ("POST", "/v2.0/networks", b"{not json"),
        ("POST", "/v2.0/networks", {"network": {"name": "x", "bogus": 1}}),
        ("POST", "/v2.0/networks", {"network": {"admin_state_up": "maybe"}}),
        ("POST", "/v2.0/networks", {"network": {"status": "DOWN"}}),
        ("POST", "/v2.0/networks", {"nets": {}}),
        ("POST", "/v2.0/networks", []),
        ("PUT", f"/v2.0/networks/{net.id}", {"network": {"id": "x"}}),
        ("PUT", f"/v2.0/networks/{net.id}", {"network": {"mtu": 10}}),
        ("PUT", f"/v2.0/networks/{net.id}", {"network": {"mtu": 9000}}),
        ("POST", "/v2.0/ports", {"port": {"network_id": "not-a-uuid"}}),
        ("POST", "/v2.0/ports", {"port": {"network_id": net.id, "mac_address": "zz"}}),
        ("POST", "/v2.0/ports", {"port": {"network_id": net.id, "fixed_ips": "10.0.0.1"}}),
        ("POST", "/v2.0/subnets", {"subnet": {"network_id": net.id}}),
    ]
    for method, path, body in cases:
        kw = {"content": body} if isinstance(body, bytes) else {"json": body}
        resp = raw(method, path, **kw)
        assert resp.status_code == 400, (method, path, body, resp.text)
        assert resp.json()["NeutronError"]["type"] in ("HTTPBadRequest", "InvalidInput", "BadRequest")
    error(raw("GET", f"/v2.0/networks/{uuid.uuid4()}"), 404, "NetworkNotFound")
    error(raw("POST", "/v2.0/ports", json={"port": {"network_id": str(uuid.uuid4())}}), 404, "NetworkNotFound")
    error(raw("GET", "/v2.0/address-groups"), 404, "HTTPNotFound")
    after = raw("GET", f"/v2.0/networks/{net.id}").json()["network"]
    assert after == before


def test_project_isolation_and_admin_only(server: Server, admin: openstack.connection.Connection,
                                          raw: Raw) -> None:
    alice = member_connection(server, admin, uniq("alice"))
    bob = member_connection(server, admin, uniq("bob"))
    mine = alice.network.create_network(name=uniq("alice-net"))
    shared = admin.network.create_network(name=uniq("shared"), is_shared=True)
    try:
        assert mine.project_id == alice.current_project_id
        seen_by_bob = {n.id for n in bob.network.networks()}
        assert mine.id not in seen_by_bob and shared.id in seen_by_bob
        with pytest.raises(sdk_exc.NotFoundException):
            bob.network.get_network(mine.id)
        with pytest.raises(sdk_exc.NotFoundException):
            bob.network.update_network(mine.id, name="stolen")
        with pytest.raises(sdk_exc.ForbiddenException):
            bob.network.create_network(name="x", is_shared=True)
        with pytest.raises(sdk_exc.ForbiddenException):
            bob.network.create_network(name="x", provider_network_type="flat", provider_physical_network="p")
        with pytest.raises(sdk_exc.ForbiddenException):
            bob.network.update_network(shared.id, name="mine-now")
        # A member may put a port on a shared network, but sees no binding details.
        sub = admin.network.create_subnet(network_id=shared.id, ip_version=4, cidr="10.77.0.0/24")
        port = bob.network.create_port(network_id=shared.id)
        bob_raw = Raw.of(server.url, bob)
        shown = bob_raw("GET", f"/v2.0/ports/{port.id}").json()["port"]
        assert "binding:host_id" not in shown and "provider:network_type" not in \
            bob_raw("GET", f"/v2.0/networks/{shared.id}").json()["network"]
        assert port.id not in {p.id for p in alice.network.ports()}
        error(bob_raw("PUT", f"/v2.0/ports/{port.id}", json={"port": {"binding:host_id": "h"}}), 403,
              "PolicyNotAuthorized")
        error(bob_raw("POST", "/v2.0/networks", json={"network": {"project_id": alice.current_project_id}}),
              400, "HTTPBadRequest")
        bob.network.delete_port(port)
        admin.network.delete_subnet(sub)
    finally:
        admin.network.delete_network(mine)
        admin.network.delete_network(shared)


def test_reader_cannot_write(server: Server, admin: openstack.connection.Connection) -> None:
    reader = member_connection(server, admin, uniq("reader"), role="reader")
    assert isinstance(list(reader.network.networks()), list)
    with pytest.raises(sdk_exc.ForbiddenException):
        reader.network.create_network(name="nope")


def test_quotas_enforced(server: Server, admin: openstack.connection.Connection, raw: Raw) -> None:
    carol = member_connection(server, admin, uniq("carol"))
    pid = carol.current_project_id
    defaults = raw("GET", f"/v2.0/quotas/{pid}/default").json()["quota"]
    assert defaults["network"] == -1  # this suite's server runs with unlimited defaults
    put = raw("PUT", f"/v2.0/quotas/{pid}", json={"quota": {"network": 2, "port": 1}})
    assert put.json()["quota"]["network"] == 2
    error(raw("PUT", f"/v2.0/quotas/{pid}", json={"quota": {"network": "lots"}}), 400, "HTTPBadRequest")
    carol_raw = Raw.of(server.url, carol)
    error(carol_raw("PUT", f"/v2.0/quotas/{pid}", json={"quota": {"network": 50}}), 403, "PolicyNotAuthorized")
    nets = [carol.network.create_network(name=uniq("q")) for _ in range(2)]
    error(carol_raw("POST", "/v2.0/networks", json={"network": {"name": "third"}}), 409, "OverQuota")
    details = carol_raw("GET", f"/v2.0/quotas/{pid}/details").json()["quota"]
    assert details["network"] == {"limit": 2, "used": 2, "reserved": 0}
    assert pid in {q["project_id"] for q in raw("GET", "/v2.0/quotas").json()["quotas"]}
    for n in nets:
        carol.network.delete_network(n)
    assert raw("DELETE", f"/v2.0/quotas/{pid}").status_code == 204
    assert raw("GET", f"/v2.0/quotas/{pid}").json()["quota"]["network"] == -1


def test_concurrent_port_creates_never_duplicate(raw: Raw, net: Any) -> None:
    """32 clients at once on a /27 (29 free addresses): 29 succeed with distinct IPs and MACs, 3 get 409."""
    raw("POST", "/v2.0/subnets", json={"subnet": {"network_id": net.id, "ip_version": 4,
                                                   "cidr": "10.50.0.0/27", "enable_dhcp": False}})

    def one(_: int) -> Any:
        return raw("POST", "/v2.0/ports", json={"port": {"network_id": net.id}})

    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(one, range(32)))
    ok = [r.json()["port"] for r in results if r.status_code == 201]
    refused = [r for r in results if r.status_code != 201]
    assert len(ok) == 29
    assert all(r.status_code == 409 and r.json()["NeutronError"]["type"] == "IpAddressGenerationFailure"
               for r in refused)
    ips = [p["fixed_ips"][0]["ip_address"] for p in ok]
    assert len(set(ips)) == 29 and len({p["mac_address"] for p in ok}) == 29
    listed = raw("GET", "/v2.0/ports", params={"network_id": net.id}).json()["ports"]
    assert sorted(p["fixed_ips"][0]["ip_address"] for p in listed) == sorted(ips)


def test_ip_availability(raw: Raw, net: Any) -> None:
    raw("POST", "/v2.0/subnets", json={"subnet": {"network_id": net.id, "ip_version": 4,
                                                   "cidr": "10.60.0.0/28", "enable_dhcp": False}})
    raw("POST", "/v2.0/ports", json={"port": {"network_id": net.id}})
    avail = raw("GET", f"/v2.0/network-ip-availabilities/{net.id}").json()["network_ip_availability"]
    assert avail["total_ips"] == 13 and avail["used_ips"] == 1


def test_changed_since_filter(raw: Raw) -> None:
    made = raw("POST", "/v2.0/networks", json={"network": {"name": "since"}}).json()["network"]
    stamp = dt.datetime.fromisoformat(made["updated_at"])

    def names(since: str) -> set[str]:
        resp = raw("GET", "/v2.0/networks", params={"changed_since": since, "name": "since"})
        assert resp.status_code == 200, resp.text
        return {n["id"] for n in resp.json()["networks"]}

    assert made["id"] in names(made["updated_at"])
    assert made["id"] in names((stamp - dt.timedelta(hours=1)).isoformat())
    assert made["id"] not in names((stamp + dt.timedelta(seconds=1)).isoformat())
    # The same instant in another zone is the same filter.
    assert made["id"] in names(stamp.astimezone(dt.timezone(dt.timedelta(hours=2))).isoformat())
    error(raw("GET", "/v2.0/networks", params={"changed_since": "yesterday"}), 400, "HTTPBadRequest")
    raw("DELETE", f"/v2.0/networks/{made['id']}")


def test_an_update_that_changes_nothing_is_no_new_revision(raw: Raw) -> None:
    net = raw("POST", "/v2.0/networks", json={"network": {"name": "same"}}).json()["network"]
    sub = raw("POST", "/v2.0/subnets", json={"subnet": {"network_id": net["id"], "cidr": "10.40.0.0/24",
                                                        "ip_version": 4, "name": "s"}}).json()["subnet"]
    port = raw("POST", "/v2.0/ports", json={"port": {"network_id": net["id"], "name": "p"}}).json()["port"]
    for kind, item, same, other in (
            ("networks", net, {"name": "same", "admin_state_up": True}, {"name": "other"}),
            ("subnets", sub, {"name": "s", "dns_nameservers": []}, {"dns_nameservers": ["10.40.0.53"]}),
            ("ports", port, {"name": "p", "fixed_ips": port["fixed_ips"]}, {"name": "q"})):
        path, key = f"/v2.0/{kind}/{item['id']}", kind[:-1]
        before = raw("GET", path).json()[key]
        after = raw("PUT", path, json={key: same}).json()[key]
        assert (after["revision_number"], after["updated_at"]) == (before["revision_number"], before["updated_at"])
        assert raw("PUT", path, json={key: other}).json()[key]["revision_number"] == before["revision_number"] + 1
    raw("DELETE", f"/v2.0/ports/{port['id']}")
    raw("DELETE", f"/v2.0/networks/{net['id']}")
