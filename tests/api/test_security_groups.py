"""Security groups, rules and port security against a real server (both backends): Neutron's behaviour and
error bodies over raw HTTP, the stock CLI and openstacksdk, policy between projects, quotas, the default
group made once under concurrent first requests, the host snapshot (groups, rules, members, address
pairs), the feed entries a change leaves, the cost of a big snapshot, and the upgrade of existing ports."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openstack
import pytest
from sqlalchemy import event, func, insert, select, text

from neutrino.db.engine import Database
from neutrino.db.schema import changes
from neutrino.intent import codec
from neutrino.intent.model import SecurityGroupId
from neutrino.sync.snapshot import Memo, build
from tests.api.conftest import Cli, Raw, Server, error, member_connection, uniq

NEUTRINO = str(Path(sys.executable).parent / "neutrino")
ANY = "00000000-0000-4000-8000-000000000000"


@dataclass
class Member:
    conn: openstack.connection.Connection
    raw: Raw
    project_id: str


def new_member(server: Server, admin: openstack.connection.Connection, prefix: str) -> Member:
    conn = member_connection(server, admin, uniq(prefix))
    project_id = conn.current_project_id
    assert project_id is not None
    return Member(conn, Raw.of(server.url, conn), project_id)


@pytest.fixture(scope="module")
def alice(server: Server, admin: openstack.connection.Connection) -> Member:
    return new_member(server, admin, "sga")


@pytest.fixture(scope="module")
def bob(server: Server, admin: openstack.connection.Connection) -> Member:
    return new_member(server, admin, "sgb")


@pytest.fixture(scope="module")
def db(server: Server) -> Iterator[Database]:
    database = Database(server.env["NEUTRINO_DATABASE__URL"], pool_size=2)
    try:
        yield database
    finally:
        database.dispose()


_counter = iter(range(1, 250))


def network(raw: Raw, v6: bool = False) -> tuple[str, str]:
    """(network id, subnet id) of a new network with a DHCP-less subnet."""
    net = raw("POST", "/v2.0/networks", json={"network": {"name": uniq("sgnet")}}).json()["network"]
    n = next(_counter)
    cidr = f"fd00:{os.getpid() % 9999:x}:{n:x}::/64" if v6 else f"10.{100 + n % 150}.{os.getpid() % 250}.0/24"
    sub = raw("POST", "/v2.0/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 6 if v6 else 4,
                                                         "cidr": cidr, "enable_dhcp": False}})
    assert sub.status_code == 201, sub.text
    return net["id"], sub.json()["subnet"]["id"]


def group(raw: Raw, **attrs: Any) -> dict[str, Any]:
    resp = raw("POST", "/v2.0/security-groups", json={"security_group": {"name": uniq("sg"), **attrs}})
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()["security_group"]
    return body


def rule(raw: Raw, group_id: str, **attrs: Any) -> Any:
    body = {"security_group_id": group_id, "direction": "ingress", **attrs}
    return raw("POST", "/v2.0/security-group-rules", json={"security_group_rule": body})


def port(raw: Raw, network_id: str, **attrs: Any) -> dict[str, Any]:
    resp = raw("POST", "/v2.0/ports", json={"port": {"network_id": network_id, **attrs}})
    assert resp.status_code == 201, resp.text
    body: dict[str, Any] = resp.json()["port"]
    return body


def defaults(raw: Raw) -> list[dict[str, Any]]:
    return [g for g in raw("GET", "/v2.0/security-groups", params={"name": "default"}).json()["security_groups"]]


def shape(rules: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted((r["direction"], r["ethertype"], r["protocol"], r["remote_group_id"] is not None,
                   r["remote_ip_prefix"]) for r in rules)


# -- groups ---------------------------------------------------------------------------------------------
def test_default_group_made_on_first_list_with_neutrons_rules(server: Server, admin: Any) -> None:
    m = new_member(server, admin, "sgd")
    [default] = defaults(m.raw)
    assert default["project_id"] == m.project_id and default["stateful"] is True
    assert shape(default["security_group_rules"]) == [
        ("egress", "IPv4", None, False, None), ("egress", "IPv6", None, False, None),
        ("ingress", "IPv4", None, True, None), ("ingress", "IPv6", None, True, None)]
    assert {r["remote_group_id"] for r in default["security_group_rules"]} == {default["id"], None}
    assert [g["id"] for g in defaults(m.raw)] == [default["id"]]  # listed again: still one
    # Members may describe it but neither rename nor delete it; no other group may be called "default".
    error(m.raw("PUT", f"/v2.0/security-groups/{default['id']}", json={"security_group": {"name": "x"}}),
          409, "SecurityGroupCannotUpdateDefault")
    up = m.raw("PUT", f"/v2.0/security-groups/{default['id']}", json={"security_group": {"description": "mine"}})
    assert up.status_code == 200 and up.json()["security_group"]["revision_number"] == 1
    error(m.raw("DELETE", f"/v2.0/security-groups/{default['id']}"), 409, "SecurityGroupCannotRemoveDefault")
    error(m.raw("POST", "/v2.0/security-groups", json={"security_group": {"name": "default"}}), 409,
          "SecurityGroupDefaultAlreadyExists")
    other = group(m.raw)
    error(m.raw("PUT", f"/v2.0/security-groups/{other['id']}", json={"security_group": {"name": "default"}}),
          409, "SecurityGroupDefaultAlreadyExists")
    # A new group allows egress only.
    assert shape(other["security_group_rules"]) == [("egress", "IPv4", None, False, None),
                                                    ("egress", "IPv6", None, False, None)]
    # Listing rules is a first need too (for a project that has none yet).
    fresh = new_member(server, admin, "sgr")
    listed = fresh.raw("GET", "/v2.0/security-group-rules").json()["security_group_rules"]
    assert len(listed) == 4 and len(defaults(fresh.raw)) == 1
    # An admin may remove a default group; the next need makes a new one.
    raw = Raw.of(server.url, admin)
    assert raw("DELETE", f"/v2.0/security-groups/{default['id']}").status_code == 204
    [again] = defaults(m.raw)
    assert again["id"] != default["id"]


def test_concurrent_first_requests_make_one_default_group(server: Server, admin: Any) -> None:
    """16 first requests of a new project at once, half of them port creates: one default group, every new
    port in it (on PostgreSQL the losers of the race retry; on SQLite writers queue)."""
    m = new_member(server, admin, "sgc")
    net_id, _ = network(m.raw)  # a network is no need of a group: none exists yet

    def first(i: int) -> Any:
        if i % 2:
            return m.raw("POST", "/v2.0/ports", json={"port": {"network_id": net_id}})
        return m.raw("GET", "/v2.0/security-groups")

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(first, range(16)))
    assert all(a.status_code in (200, 201) for a in answers), [a.text for a in answers if a.status_code >= 300]
    listed = Raw.of(server.url, admin)("GET", "/v2.0/security-groups", params={"project_id": m.project_id}).json()
    [default] = listed["security_groups"]
    assert default["name"] == "default"
    made = [a.json()["port"] for a in answers if a.status_code == 201]
    assert len(made) == 8 and all(p["security_groups"] == [default["id"]] for p in made)
    for a in answers:
        if a.status_code == 200:
            assert [g["id"] for g in a.json()["security_groups"]] == [default["id"]]


def test_group_crud_tags_filters_and_stateful(alice: Member) -> None:
    m = alice.raw
    g = group(m, description="web tier", stateful=False)
    assert g["stateful"] is False and g["description"] == "web tier" and g["tags"] == []
    assert m("PUT", f"/v2.0/security-groups/{g['id']}/tags/blue").status_code == 201
    listed = m("GET", "/v2.0/security-groups", params={"tags": "blue", "fields": ["id", "stateful"]}).json()
    assert listed == {"security_groups": [{"id": g["id"], "stateful": False}]}
    assert [x["id"] for x in m("GET", "/v2.0/security-groups", params={"stateful": "false"}).json()[
        "security_groups"]] == [g["id"]]
    up = m("PUT", f"/v2.0/security-groups/{g['id']}", json={"security_group": {"stateful": True, "name": "web"}})
    assert up.status_code == 200 and up.json()["security_group"]["stateful"] is True
    # Paging with the hyphenated collection: links and body keys use security_groups.
    page = m("GET", "/v2.0/security-groups", params={"limit": 1}).json()
    assert len(page["security_groups"]) == 1 and "/v2.0/security-groups?" in page["security_groups_links"][0]["href"]
    error(m("GET", f"/v2.0/security-groups/{ANY}"), 404, "SecurityGroupNotFound")
    error(m("POST", "/v2.0/security-groups", json={"security_group": {"stateful": "maybe"}}), 400, "HTTPBadRequest")
    error(m("POST", "/v2.0/security-groups", json={"security_group": {"security_group_rules": []}}), 400,
          "HTTPBadRequest")
    assert m("DELETE", f"/v2.0/security-groups/{g['id']}").status_code == 204
    error(m("GET", f"/v2.0/security-groups/{g['id']}"), 404, "SecurityGroupNotFound")


# -- rules ----------------------------------------------------------------------------------------------
def test_rule_validation_as_neutron(alice: Member) -> None:
    m = alice.raw
    g = group(m)
    gid = g["id"]
    ok = rule(m, gid, protocol="tcp", port_range_min=22, port_range_max=22, remote_ip_prefix="0.0.0.0/0",
              description="ssh")
    assert ok.status_code == 201, ok.text
    ssh = ok.json()["security_group_rule"]
    assert (ssh["protocol"], ssh["ethertype"], ssh["port_range_min"], ssh["port_range_max"]) == ("tcp", "IPv4", 22, 22)
    # The same rule again, by number, or with "everywhere" left out: 409 naming the existing rule.
    for same in ({"protocol": "tcp", "port_range_min": 22, "port_range_max": 22, "remote_ip_prefix": "0.0.0.0/0"},
                 {"protocol": "6", "port_range_min": "22", "port_range_max": 22},
                 {"protocol": "TCP", "port_range_min": 22, "port_range_max": 22, "ethertype": "ipv4"}):
        err = error(rule(m, gid, **same), 409, "SecurityGroupRuleExists")
        assert ssh["id"] in err["message"]
    bad: list[tuple[dict[str, Any], str]] = [
        ({"protocol": "bogus"}, "SecurityGroupRuleInvalidProtocol"),
        ({"protocol": 256}, "SecurityGroupRuleInvalidProtocol"),
        ({"protocol": -1}, "SecurityGroupRuleInvalidProtocol"),
        ({"protocol": True}, "SecurityGroupRuleInvalidProtocol"),
        ({"port_range_min": 80, "port_range_max": 80}, "SecurityGroupProtocolRequiredWithPorts"),
        ({"protocol": "tcp", "port_range_min": 90, "port_range_max": 80}, "SecurityGroupInvalidPortRange"),
        ({"protocol": "udp", "port_range_min": 53}, "SecurityGroupInvalidPortRange"),
        ({"protocol": "tcp", "port_range_min": 0, "port_range_max": 10}, "SecurityGroupInvalidPortValue"),
        ({"protocol": "tcp", "port_range_min": 1, "port_range_max": 70000}, "SecurityGroupInvalidPortValue"),
        ({"protocol": "tcp", "port_range_min": "9" * 5000, "port_range_max": 1}, "SecurityGroupInvalidPortValue"),
        ({"protocol": "tcp", "port_range_min": 1.5, "port_range_max": 2}, "SecurityGroupInvalidPortValue"),
        ({"protocol": "gre", "port_range_min": 1, "port_range_max": 1}, "SecurityGroupInvalidProtocolForPort"),
        ({"protocol": "icmp", "port_range_min": 256}, "SecurityGroupInvalidIcmpValue"),
        ({"protocol": "icmp", "port_range_max": 0}, "SecurityGroupMissingIcmpType"),
        ({"remote_ip_prefix": "2001:db8::/64"}, "SecurityGroupRuleParameterConflict"),
        ({"remote_ip_prefix": "10.0.0.0/33"}, "InvalidCIDR"),
        ({"remote_ip_prefix": "fe80::1%eth0", "ethertype": "IPv6"}, "InvalidCIDR"),
        ({"protocol": "ipv6-icmp"}, "SecurityGroupEthertypeConflictWithProtocol"),
        ({"protocol": "58"}, "SecurityGroupEthertypeConflictWithProtocol"),
        ({"remote_ip_prefix": "10.0.0.0/8", "remote_group_id": gid}, "SecurityGroupRemoteGroupAndRemoteIpPrefix"),
        ({"ethertype": "IPv5"}, "HTTPBadRequest"),
        ({"direction": "sideways"}, "HTTPBadRequest"),
        ({"remote_group_id": "not-a-uuid"}, "HTTPBadRequest"),
        ({"bogus": 1}, "HTTPBadRequest"),
    ]
    for attrs, kind in bad:
        error(rule(m, gid, **attrs), 400, kind)
    error(m("POST", "/v2.0/security-group-rules", json={"security_group_rule": {"security_group_id": gid}}), 400,
          "HTTPBadRequest")  # direction is required
    error(rule(m, gid, remote_group_id=ANY), 404, "SecurityGroupNotFound")
    error(rule(m, ANY), 404, "SecurityGroupNotFound")
    # Normalised as Neutron does.
    norm: list[tuple[dict[str, Any], str, Any]] = [
        ({"remote_ip_prefix": "10.1.2.3/16"}, "remote_ip_prefix", "10.1.0.0/16"),
        ({"remote_ip_prefix": "192.0.2.7"}, "remote_ip_prefix", "192.0.2.7/32"),
        ({"remote_ip_prefix": "2001:db8::1", "ethertype": "ipv6"}, "remote_ip_prefix", "2001:db8::1/128"),
        ({"protocol": "icmp", "ethertype": "IPv6", "port_range_min": 128}, "protocol", "ipv6-icmp"),
        ({"protocol": "icmpv6", "ethertype": "IPv6", "port_range_min": 135, "port_range_max": 0}, "protocol",
         "ipv6-icmp"),
        ({"protocol": "1", "ethertype": "IPv6"}, "protocol", "58"),
        ({"protocol": "any", "remote_ip_prefix": "198.51.100.0/24"}, "protocol", None),
        ({"protocol": 0, "remote_ip_prefix": "198.51.101.0/24"}, "protocol", None),
        ({"protocol": "017", "port_range_min": 53, "port_range_max": 53}, "protocol", "17"),
        ({"protocol": "icmp", "port_range_min": 8}, "port_range_max", None),
        ({"protocol": "vrrp", "remote_group_id": gid}, "remote_group_id", gid),
    ]
    made = []
    for attrs, key, want in norm:
        resp = rule(m, gid, **attrs)
        assert resp.status_code == 201, (attrs, resp.text)
        made.append(resp.json()["security_group_rule"])
        assert made[-1][key] == want, (attrs, made[-1])
    error(rule(m, gid, remote_ip_prefix="10.1.0.0/16"), 409, "SecurityGroupRuleExists")  # host bits cleared
    # Every rule shows in its group, which has a new revision for each; rules are immutable.
    shown = m("GET", f"/v2.0/security-groups/{gid}").json()["security_group"]
    assert shown["revision_number"] == 1 + len(norm)
    assert {r["id"] for r in shown["security_group_rules"]} >= {ssh["id"], *(r["id"] for r in made)}
    error(m("PUT", f"/v2.0/security-group-rules/{ssh['id']}", json={"security_group_rule": {"protocol": "udp"}}),
          400, "HTTPBadRequest")
    listed = m("GET", "/v2.0/security-group-rules", params={"security_group_id": gid, "protocol": "tcp",
                                                             "port_range_min": 22}).json()["security_group_rules"]
    assert [r["id"] for r in listed] == [ssh["id"]]
    error(m("GET", "/v2.0/security-group-rules", params={"port_range_min": "x"}), 400, "HTTPBadRequest")
    error(m("GET", f"/v2.0/security-group-rules/{ssh['id']}/tags"), 404, "HTTPNotFound")  # rules carry no tags
    assert m("DELETE", f"/v2.0/security-group-rules/{ssh['id']}").status_code == 204
    error(m("GET", f"/v2.0/security-group-rules/{ssh['id']}"), 404, "SecurityGroupRuleNotFound")
    error(m("DELETE", f"/v2.0/security-group-rules/{ssh['id']}"), 404, "SecurityGroupRuleNotFound")
    # Deleting a group takes its rules along, and the rules of other groups that name it as remote.
    other = group(m)
    naming = rule(m, other["id"], remote_group_id=gid, protocol="tcp", port_range_min=80, port_range_max=80)
    assert m("DELETE", f"/v2.0/security-groups/{gid}").status_code == 204
    error(m("GET", f"/v2.0/security-group-rules/{made[0]['id']}"), 404, "SecurityGroupRuleNotFound")
    error(m("GET", f"/v2.0/security-group-rules/{naming.json()['security_group_rule']['id']}"), 404,
          "SecurityGroupRuleNotFound")
    assert m("DELETE", f"/v2.0/security-groups/{other['id']}").status_code == 204


def test_projects_do_not_reach_each_others_groups(alice: Member, bob: Member, server: Server, admin: Any) -> None:
    mine = group(alice.raw)
    theirs = group(bob.raw)
    error(bob.raw("GET", f"/v2.0/security-groups/{mine['id']}"), 404, "SecurityGroupNotFound")
    assert mine["id"] not in {g["id"] for g in bob.raw("GET", "/v2.0/security-groups").json()["security_groups"]}
    error(rule(bob.raw, mine["id"]), 404, "SecurityGroupNotFound")
    error(rule(bob.raw, theirs["id"], remote_group_id=mine["id"]), 404, "SecurityGroupNotFound")
    error(bob.raw("DELETE", f"/v2.0/security-groups/{mine['id']}"), 404, "SecurityGroupNotFound")
    egress = mine["security_group_rules"][0]["id"]
    error(bob.raw("GET", f"/v2.0/security-group-rules/{egress}"), 404, "SecurityGroupRuleNotFound")
    error(bob.raw("DELETE", f"/v2.0/security-group-rules/{egress}"), 404, "SecurityGroupRuleNotFound")
    assert egress not in {r["id"] for r in bob.raw("GET", "/v2.0/security-group-rules").json()[
        "security_group_rules"]}
    # Membership: a port joins only groups of its own project, whoever asks (an admin included).
    net_id, _ = network(bob.raw)
    error(bob.raw("POST", "/v2.0/ports", json={"port": {"network_id": net_id, "security_groups": [mine["id"]]}}),
          404, "SecurityGroupNotFound")
    p = port(bob.raw, net_id, security_groups=[theirs["id"]])
    error(bob.raw("PUT", f"/v2.0/ports/{p['id']}", json={"port": {"security_groups": [theirs["id"], mine["id"]]}}),
          404, "SecurityGroupNotFound")
    raw = Raw.of(server.url, admin)
    error(raw("PUT", f"/v2.0/ports/{p['id']}", json={"port": {"security_groups": [mine["id"]]}}), 404,
          "SecurityGroupNotFound")
    # An admin sees and manages every project's groups and rules.
    assert raw("GET", f"/v2.0/security-groups/{mine['id']}").status_code == 200
    added = rule(raw, mine["id"], protocol="udp", port_range_min=53, port_range_max=53)
    assert added.status_code == 201, added.text
    # ... and the group's owner sees and removes a rule an admin added to it.
    rid = added.json()["security_group_rule"]["id"]
    assert alice.raw("GET", f"/v2.0/security-group-rules/{rid}").status_code == 200
    assert alice.raw("DELETE", f"/v2.0/security-group-rules/{rid}").status_code == 204
    # A reader looks but does not touch.
    reader = member_connection(server, admin, uniq("sgread"), role="reader")
    rr = Raw.of(server.url, reader)
    assert rr("GET", "/v2.0/security-groups").status_code == 200
    error(rr("POST", "/v2.0/security-groups", json={"security_group": {"name": "x"}}), 403, "PolicyNotAuthorized")
    bob.raw("DELETE", f"/v2.0/ports/{p['id']}")
    for who, g in ((alice, mine), (bob, theirs)):
        assert who.raw("DELETE", f"/v2.0/security-groups/{g['id']}").status_code == 204


# -- ports --------------------------------------------------------------------------------------------
def test_port_security_and_groups(alice: Member) -> None:
    m = alice.raw
    net_id, _ = network(m)
    [default] = defaults(m)
    web = group(m)
    plain = port(m, net_id)
    assert plain["security_groups"] == [default["id"]] and plain["port_security_enabled"] is True
    none = port(m, net_id, security_groups=[])
    assert none["security_groups"] == []
    null = port(m, net_id, security_groups=None)
    assert null["security_groups"] == [default["id"]]
    both = port(m, net_id, security_groups=[web["id"], default["id"]])
    assert both["security_groups"] == sorted([web["id"], default["id"]])
    open_ = port(m, net_id, port_security_enabled=False)
    assert open_["security_groups"] == [] and open_["port_security_enabled"] is False
    # The cloud's own devices are never in a group.
    dev = port(m, net_id, device_owner="network:router_interface_distributed", security_groups=[web["id"]])
    assert dev["security_groups"] == []
    error(m("POST", "/v2.0/ports", json={"port": {"network_id": net_id, "port_security_enabled": False,
                                                  "security_groups": [web["id"]]}}),
          400, "PortSecurityAndIPRequiredForSecurityGroups")
    error(m("POST", "/v2.0/ports", json={"port": {"network_id": net_id, "security_groups": [ANY]}}), 404,
          "SecurityGroupNotFound")
    error(m("POST", "/v2.0/ports", json={"port": {"network_id": net_id, "security_groups": [web["id"], web["id"]]}}),
          400, "HTTPBadRequest")
    # Port security off needs the groups gone (in the same request is fine).
    error(m("PUT", f"/v2.0/ports/{plain['id']}", json={"port": {"port_security_enabled": False}}), 409,
          "PortSecurityPortHasSecurityGroup")
    error(m("PUT", f"/v2.0/ports/{open_['id']}", json={"port": {"security_groups": [web["id"]]}}), 400,
          "PortSecurityAndIPRequiredForSecurityGroups")
    off = m("PUT", f"/v2.0/ports/{plain['id']}", json={"port": {"port_security_enabled": False,
                                                                 "security_groups": []}})
    assert off.status_code == 200, off.text
    assert off.json()["port"]["security_groups"] == [] and off.json()["port"]["port_security_enabled"] is False
    on = m("PUT", f"/v2.0/ports/{plain['id']}", json={"port": {"port_security_enabled": True,
                                                                "security_groups": [web["id"]]}})
    assert on.json()["port"]["security_groups"] == [web["id"]]
    before = on.json()["port"]["revision_number"]
    same = m("PUT", f"/v2.0/ports/{plain['id']}", json={"port": {"security_groups": [web["id"]]}})
    assert same.json()["port"]["revision_number"] == before  # nothing changed, no new revision
    # In use: the group cannot go, nor change its statefulness; filters find its ports.
    error(m("DELETE", f"/v2.0/security-groups/{web['id']}"), 409, "SecurityGroupInUse")
    error(m("PUT", f"/v2.0/security-groups/{web['id']}", json={"security_group": {"stateful": False}}), 409,
          "SecurityGroupInUse")
    found = m("GET", "/v2.0/ports", params={"security_groups": web["id"]}).json()["ports"]
    assert sorted(p["id"] for p in found) == sorted([plain["id"], both["id"]])
    # A port that becomes a router's interface is the cloud's own device: it leaves its groups.
    router = m("POST", "/v2.0/routers", json={"router": {"name": uniq("sgr")}}).json()["router"]
    iface = port(m, net_id, security_groups=[web["id"]], port_security_enabled=True)
    added = m("PUT", f"/v2.0/routers/{router['id']}/add_router_interface", json={"port_id": iface["id"]})
    assert added.status_code == 200, added.text
    assert m("GET", f"/v2.0/ports/{iface['id']}").json()["port"]["security_groups"] == []
    assert m("PUT", f"/v2.0/routers/{router['id']}/remove_router_interface",
             json={"port_id": iface["id"]}).status_code == 200
    assert m("DELETE", f"/v2.0/routers/{router['id']}").status_code == 204
    # Neither does an update that makes a port one.
    dev2 = port(m, net_id, security_groups=[web["id"]])
    made_dev = m("PUT", f"/v2.0/ports/{dev2['id']}", json={"port": {"device_owner": "network:dhcp"}})
    assert made_dev.json()["port"]["security_groups"] == []
    for p in (plain, none, null, both, open_, dev, dev2):
        assert m("DELETE", f"/v2.0/ports/{p['id']}").status_code == 204
    assert m("DELETE", f"/v2.0/security-groups/{web['id']}").status_code == 204


def test_port_refuses_stateful_and_stateless_groups_together(alice: Member, db: Database) -> None:
    """As Neutron: a port's groups are all stateful or all stateless. A create or an update that would mix
    them is a 409 SecurityGroupConflict that changes nothing (no port, no new revision, no feed entry); a
    group's ``stateful`` cannot change while a port is in it (which would mix them too)."""
    m = alice.raw
    net_id, _ = network(m)
    [default] = defaults(m)
    sf, sl, sl2 = group(m), group(m, stateful=False), group(m, stateful=False)
    mixed = "Cannot apply both stateful and stateless security groups on the same port at the same time."

    def last_seq() -> int:
        with db.read() as conn:
            return int(conn.execute(select(func.max(changes.c.seq))).scalar_one())

    def ports_on_net() -> list[str]:
        return sorted(p["id"] for p in m("GET", "/v2.0/ports", params={"network_id": net_id}).json()["ports"])

    before, seq = ports_on_net(), last_seq()
    for groups in ([sf["id"], sl["id"]], [sl["id"], default["id"], sl2["id"]]):
        err = error(m("POST", "/v2.0/ports", json={"port": {"network_id": net_id, "security_groups": groups}}),
                    409, "SecurityGroupConflict")
        assert mixed in err["message"], err
    assert ports_on_net() == before and last_seq() == seq
    # All stateless, or all stateful (the default group is), is fine.
    stateless = port(m, net_id, security_groups=[sl["id"], sl2["id"]])
    stateful = port(m, net_id)
    assert stateful["security_groups"] == [default["id"]]
    both_stateful = port(m, net_id, security_groups=[sf["id"], default["id"]])
    # Updates that would mix, either way round: refused, the port as it was.
    seq = last_seq()
    for p, groups in ((stateful, [default["id"], sl["id"]]), (stateless, [sl["id"], sf["id"]]),
                      (both_stateful, [sl2["id"]] + both_stateful["security_groups"])):
        err = error(m("PUT", f"/v2.0/ports/{p['id']}", json={"port": {"security_groups": groups, "name": "x"}}),
                    409, "SecurityGroupConflict")
        assert mixed in err["message"], err
        now = m("GET", f"/v2.0/ports/{p['id']}").json()["port"]
        assert (now["security_groups"], now["revision_number"], now["name"]) == (
            p["security_groups"], p["revision_number"], p["name"])
    assert last_seq() == seq
    # Switching a port over entirely is an ordinary update.
    moved = m("PUT", f"/v2.0/ports/{stateful['id']}", json={"port": {"security_groups": [sl2["id"]]}})
    assert moved.status_code == 200 and moved.json()["port"]["security_groups"] == [sl2["id"]]
    # A group in use keeps its statefulness (flipping it would mix the groups of its ports); unused, it may.
    seq = last_seq()
    error(m("PUT", f"/v2.0/security-groups/{sl['id']}", json={"security_group": {"stateful": True}}), 409,
          "SecurityGroupInUse")
    again = m("GET", f"/v2.0/security-groups/{sl['id']}").json()["security_group"]
    assert (again["stateful"], again["revision_number"]) == (False, sl["revision_number"]) and last_seq() == seq
    assert m("DELETE", f"/v2.0/ports/{stateless['id']}").status_code == 204
    flipped = m("PUT", f"/v2.0/security-groups/{sl['id']}", json={"security_group": {"stateful": True}})
    assert flipped.status_code == 200 and flipped.json()["security_group"]["stateful"] is True
    for p in (stateful, both_stateful):
        assert m("DELETE", f"/v2.0/ports/{p['id']}").status_code == 204
    for g in (sf, sl, sl2):
        assert m("DELETE", f"/v2.0/security-groups/{g['id']}").status_code == 204


def test_allowed_address_pairs(alice: Member) -> None:
    m = alice.raw
    net_id, _ = network(m)
    pairs = [{"ip_address": "10.200.0.10"}, {"ip_address": "10.201.0.0/24", "mac_address": "FA:16:3E:00:00:AA"},
             {"ip_address": "10.200.0.10", "mac_address": "fa:16:3e:00:00:bb"}]
    p = port(m, net_id, allowed_address_pairs=pairs)
    assert p["allowed_address_pairs"] == [
        {"ip_address": "10.200.0.10", "mac_address": p["mac_address"]},
        {"ip_address": "10.201.0.0/24", "mac_address": "fa:16:3e:00:00:aa"},
        {"ip_address": "10.200.0.10", "mac_address": "fa:16:3e:00:00:bb"}]
    cases = [
        ([{"ip_address": "10.200.0.10"}, {"ip_address": "10.200.0.10"}], "DuplicateAddressPairInRequest"),
        ([{"ip_address": f"10.202.0.{i}"} for i in range(11)], "AllowedAddressPairExhausted"),
        ([{"ip_address": "10.201.0.5/24"}], "HTTPBadRequest"),
        ([{"mac_address": "fa:16:3e:00:00:01"}], "HTTPBadRequest"),
        ([{"ip_address": "10.1.1.1", "mac_address": "nope"}], "HTTPBadRequest"),
        ([{"ip_address": "10.1.1.1", "extra": 1}], "HTTPBadRequest"),
    ]
    for value, kind in cases:
        error(m("PUT", f"/v2.0/ports/{p['id']}", json={"port": {"allowed_address_pairs": value}}), 400, kind)
    ten = [{"ip_address": f"10.202.0.{i}"} for i in range(10)]
    assert m("PUT", f"/v2.0/ports/{p['id']}", json={"port": {"allowed_address_pairs": ten}}).status_code == 200
    error(m("PUT", f"/v2.0/ports/{p['id']}", json={"port": {"port_security_enabled": False, "security_groups": []}}),
          409, "AddressPairAndPortSecurityRequired")
    assert m("DELETE", f"/v2.0/ports/{p['id']}").status_code == 204


def test_quotas(server: Server, admin: Any) -> None:
    m = new_member(server, admin, "sgq")
    raw = Raw.of(server.url, admin)
    resp = raw("PUT", f"/v2.0/quotas/{m.project_id}", json={"quota": {"security_group": 2,
                                                                       "security_group_rule": 8}})
    assert resp.status_code == 200, resp.text
    g = group(m.raw)                       # the default group counts too: 2 groups, 4 + 2 rules
    error(m.raw("POST", "/v2.0/security-groups", json={"security_group": {"name": "third"}}), 409, "OverQuota")
    assert rule(m.raw, g["id"], protocol="tcp", port_range_min=1, port_range_max=1).status_code == 201
    assert rule(m.raw, g["id"], protocol="tcp", port_range_min=2, port_range_max=2).status_code == 201
    error(rule(m.raw, g["id"], protocol="tcp", port_range_min=3, port_range_max=3), 409, "OverQuota")
    details = raw("GET", f"/v2.0/quotas/{m.project_id}/details").json()["quota"]
    assert details["security_group"] == {"limit": 2, "used": 2, "reserved": 0}
    assert details["security_group_rule"]["used"] == 8


def test_discovery(raw: Raw) -> None:
    aliases = {e["alias"] for e in raw("GET", "/v2.0/extensions").json()["extensions"]}
    assert {"security-group", "stateful-security-group", "port-security", "allowed-address-pairs",
            "port-security-groups-filtering"} <= aliases
    assert "security-groups-remote-address-group" not in aliases
    collections = {r["collection"] for r in raw("GET", "/v2.0").json()["resources"]}
    assert {"security-groups", "security-group-rules"} <= collections


# -- the stock CLI and the SDK -------------------------------------------------------------------------
@pytest.mark.parametrize("server", ["sqlite"], indirect=True)
def test_cli(cli: Cli, admin: openstack.connection.Connection) -> None:
    name = uniq("clisg")
    g = cli("security", "group", "create", name, "--description", "from the CLI", "--stateless")
    assert g["name"] == name and g["stateful"] is False and len(g["rules"]) == 2
    r = cli("security", "group", "rule", "create", "--protocol", "tcp", "--dst-port", "8000:8080",
            "--remote-ip", "192.0.2.0/24", name)
    assert (r["port_range_min"], r["port_range_max"], r["remote_ip_prefix"]) == (8000, 8080, "192.0.2.0/24")
    icmp = cli("security", "group", "rule", "create", "--protocol", "icmp", "--icmp-type", "8", "--icmp-code", "0",
               "--remote-group", name, name)
    assert (icmp["protocol"], icmp["port_range_min"], icmp["port_range_max"]) == ("icmp", 8, 0)
    dup = cli("security", "group", "rule", "create", "--protocol", "tcp", "--dst-port", "8000:8080",
              "--remote-ip", "192.0.2.0/24", name, check=False)
    assert dup.returncode != 0 and "already exists" in dup.stderr
    listed = cli("security", "group", "rule", "list", name)
    assert {x["ID"] for x in listed} >= {r["id"], icmp["id"]}
    cli("security", "group", "set", name, "--stateful", "--name", name + "-2", fmt=False)
    shown = cli("security", "group", "show", name + "-2")
    assert shown["stateful"] is True and shown["description"] == "from the CLI"
    assert name + "-2" in {x["Name"] for x in cli("security", "group", "list")}
    net = cli("network", "create", uniq("clisgnet"))
    cli("subnet", "create", "--network", net["id"], "--subnet-range", "192.0.2.0/26", "--no-dhcp", uniq("s"))
    p = cli("port", "create", "--network", net["id"], "--security-group", name + "-2", uniq("p"))
    assert p["security_group_ids"] == [shown["id"]]
    gone = cli("security", "group", "delete", name + "-2", check=False, fmt=False)
    assert gone.returncode != 0 and "in use" in gone.stderr
    cli("port", "set", "--no-security-group", "--disable-port-security", p["id"], fmt=False)
    after = cli("port", "show", p["id"])
    assert after["security_group_ids"] == [] and after["port_security_enabled"] is False
    cli("security", "group", "rule", "delete", r["id"], fmt=False)
    cli("port", "delete", p["id"], fmt=False)
    cli("security", "group", "delete", name + "-2", fmt=False)
    cli("network", "delete", net["id"], fmt=False)
    assert admin.network.find_security_group(shown["id"]) is None


def test_sdk(alice: Member) -> None:
    conn = alice.conn
    g = conn.network.create_security_group(name=uniq("sdk"), description="via the SDK")
    r = conn.network.create_security_group_rule(security_group_id=g.id, direction="ingress", ether_type="IPv6",
                                                protocol="tcp", port_range_min=443, port_range_max=443)
    assert r.ether_type == "IPv6" and r.remote_ip_prefix is None and r.security_group_id == g.id
    with pytest.raises(openstack.exceptions.ConflictException):
        conn.network.create_security_group_rule(security_group_id=g.id, direction="ingress", ether_type="IPv6",
                                                protocol="6", port_range_min=443, port_range_max=443)
    found = conn.network.find_security_group(g.name)
    assert found is not None and found.id == g.id and found.stateful is True
    assert r.id in {x.id for x in conn.network.security_group_rules(security_group_id=g.id)}
    net_id, _ = network(alice.raw)
    p = conn.network.create_port(network_id=net_id, security_group_ids=[g.id])
    assert p.security_group_ids == [g.id]
    p = conn.network.update_port(p, security_group_ids=[])
    assert p.security_group_ids == []
    conn.network.delete_security_group_rule(r)
    conn.network.delete_port(p)
    conn.network.delete_security_group(g)
    assert conn.network.find_security_group(g.id) is None


# -- the lab's instance ports ---------------------------------------------------------------------------
def test_lab_instance_ports(server: Server, raw: Raw) -> None:
    """What ``neutrino instance create`` asks the server for (the kernel side is the integration tests'):
    groups by name within the caller's project although every project has a ``default``, port security
    off, and an existing port taken as it is and given back unbound."""
    import asyncio

    from neutrino.client import Client
    from neutrino.errors import NeutrinoError
    from neutrino.lab import lifecycle

    net_id, _ = network(raw)
    web = group(raw)
    existing = port(raw, net_id, name=uniq("byport"))

    async def token() -> str:
        return raw.token

    async def run() -> None:
        async with Client(server.url, token) as api:
            dev = str(uuid.uuid4())
            made = await lifecycle._port(api, "vm1", lifecycle.PortChoice(
                network=net_id, security_groups=("default", web["name"])), dev, "labhost")
            [default] = [g for g in defaults(raw) if g["project_id"] == web["project_id"]]
            assert made["security_groups"] == sorted([default["id"], web["id"]])
            assert made["device_owner"] == "compute:lab" and made["binding:host_id"] == "labhost"
            plain = await lifecycle._port(api, "vm2", lifecycle.PortChoice(network=net_id), dev, "labhost")
            assert plain["security_groups"] == [default["id"]]
            bare = await lifecycle._port(api, "vm3", lifecycle.PortChoice(network=net_id, port_security=False), dev,
                                         "labhost")
            assert bare["security_groups"] == [] and bare["port_security_enabled"] is False
            with pytest.raises(NeutrinoError, match="not found"):
                await lifecycle._port(api, "vm4", lifecycle.PortChoice(network=net_id, security_groups=("nope",)),
                                      dev, "labhost")
            taken = await lifecycle._port(api, "vm5", lifecycle.PortChoice(port=existing["name"]), dev, "labhost")
            assert taken["id"] == existing["id"] and taken["device_id"] == dev
            assert taken["binding:host_id"] == "labhost" and taken["security_groups"] == existing["security_groups"]
            with pytest.raises(NeutrinoError, match="in use"):
                await lifecycle._port(api, "vm6", lifecycle.PortChoice(port=existing["id"]), dev, "labhost")
            await lifecycle._release(api, existing["id"])
            back = raw("GET", f"/v2.0/ports/{existing['id']}").json()["port"]
            assert (back["device_id"], back["device_owner"], back["binding:host_id"]) == ("", "", "")
            for p in (made, plain, bare, existing):
                assert raw("DELETE", f"/v2.0/ports/{p['id']}").status_code == 204

    asyncio.run(run())
    assert raw("DELETE", f"/v2.0/security-groups/{web['id']}").status_code == 204


# -- the snapshot and the feed --------------------------------------------------------------------------
def snapshot(raw: Raw, host: str) -> dict[str, Any]:
    resp = raw("GET", "/agent-api/v1/snapshot", params={"host": host})
    assert resp.status_code == 200, resp.text
    body: dict[str, Any] = resp.json()
    return body


def bind(raw: Raw, port_id: str, host: str) -> None:
    resp = raw("PUT", f"/v2.0/ports/{port_id}", json={"port": {"binding:host_id": host}})
    assert resp.status_code == 200, resp.text


def test_snapshots_of_one_revision_share_what_is_not_the_hosts_and_never_go_stale(alice: Member, raw: Raw,
                                                                                  db: Database) -> None:
    """Hosts woken by one change fetch their snapshots at one revision: the network's ports and the
    groups are read once (the very same objects in both) and each snapshot is what a build without the
    memo makes; a write moves the revision on and the next build reads what it touched, however soon,
    and keeps the rest."""
    m = alice.raw
    here, there = uniq("mmhost"), uniq("mmhost")
    net, _ = network(m)
    g = group(m)
    rule(m, g["id"], remote_group_id=g["id"])
    a, b, c = (port(m, net, security_groups=[g["id"]]) for _ in range(3))
    bind(raw, a["id"], here)
    bind(raw, b["id"], there)
    memo = Memo(seconds=60)
    with db.read() as conn:
        shared = [build(conn, h, 60, memo) for h in (here, there)]
        fresh = [build(conn, h, 60) for h in (here, there)]
    assert [codec.encode(s) for s in shared] == [codec.encode(s) for s in fresh]
    assert shared[0].ports[c["id"]] is shared[1].ports[c["id"]]
    gid = SecurityGroupId(g["id"])
    assert shared[0].security_groups[gid] is shared[1].security_groups[gid]
    assert fresh[0].ports[c["id"]] is not shared[0].ports[c["id"]]
    m("PUT", f"/v2.0/ports/{c['id']}", json={"port": {"allowed_address_pairs": [{"ip_address": "10.252.0.1"}]}})
    with db.read() as conn:
        after = build(conn, there, 60, memo)
    assert after.revision > shared[1].revision
    assert [str(p.ip_address) for p in after.ports[c["id"]].allowed_address_pairs] == ["10.252.0.1/32"]
    assert ipaddress.ip_network("10.252.0.1/32") in after.security_groups[gid].members
    # A change elsewhere (a port on another network) leaves this network's pieces as read; one naming the
    # network (a port's address pairs) has them read again.
    elsewhere, _ = network(m)
    d = port(m, elsewhere)
    with db.read() as conn:
        later = build(conn, there, 60, memo)
    assert later.revision > after.revision and later.ports[c["id"]] is after.ports[c["id"]]
    m("PUT", f"/v2.0/ports/{a['id']}", json={"port": {"allowed_address_pairs": [{"ip_address": "10.252.0.2"}]}})
    with db.read() as conn:
        last = build(conn, there, 60, memo)
    assert last.ports[c["id"]] is not later.ports[c["id"]] and last.ports[c["id"]] == later.ports[c["id"]]
    assert [str(p.ip_address) for p in last.ports[a["id"]].allowed_address_pairs] == ["10.252.0.2/32"]
    with db.read() as conn:
        assert codec.encode(build(conn, there, 60, memo)) == codec.encode(build(conn, there, 60))
    for p in (a, b, c, d):
        m("DELETE", f"/v2.0/ports/{p['id']}")


def test_snapshot_carries_groups_rules_members_and_pairs(alice: Member, raw: Raw, db: Database) -> None:
    m = alice.raw
    here, there = uniq("sghost"), uniq("sghost")
    net4, _ = network(m)
    net6, _ = network(m, v6=True)
    web, app, unused = group(m, stateful=False), group(m), group(m)
    # web lets in app's members on 8080 and pings; app lets in everything from 198.51.100.0/24.
    rule(m, web["id"], protocol="tcp", port_range_min=8080, port_range_max=8080, remote_group_id=app["id"])
    rule(m, web["id"], protocol="icmp", ethertype="IPv6", port_range_min=128)
    rule(m, app["id"], remote_ip_prefix="198.51.100.7/24")
    w = port(m, net4, security_groups=[web["id"]], allowed_address_pairs=[
        {"ip_address": "10.250.0.0/24"}, {"ip_address": "10.250.0.9", "mac_address": "fa:16:3e:aa:bb:cc"}])
    a1 = port(m, net4, security_groups=[app["id"]],
              allowed_address_pairs=[{"ip_address": "10.251.0.1"}, {"ip_address": "10.251.0.1/32",
                                                                    "mac_address": "fa:16:3e:00:00:01"}])
    a2 = port(m, net6, security_groups=[web["id"]])  # not app too: stateful and stateless do not mix
    off = port(m, net4, port_security_enabled=False)
    for p, host in ((w, here), (a1, there), (a2, there), (off, here)):
        bind(raw, p["id"], host)
    snap = snapshot(raw, here)
    mine = snap["ports"][w["id"]]
    assert mine["port_security_enabled"] is True and mine["security_groups"] == [web["id"]]
    assert mine["allowed_address_pairs"] == [
        {"ip_address": "10.250.0.0/24", "mac_address": w["mac_address"]},
        {"ip_address": "10.250.0.9/32", "mac_address": "fa:16:3e:aa:bb:cc"}]
    assert snap["ports"][off["id"]]["port_security_enabled"] is False
    assert snap["ports"][off["id"]]["security_groups"] == []
    # web is here directly, app because web's rule names it; the unused group is nowhere.
    groups = snap["security_groups"]
    assert set(groups) == {web["id"], app["id"]}
    assert groups[web["id"]]["stateful"] is False and groups[app["id"]]["stateful"] is True
    by_proto = {(r["direction"], r["ethertype"], r["protocol"]): r for r in groups[web["id"]]["rules"]}
    tcp = by_proto[("ingress", 4, 6)]
    assert (tcp["port_min"], tcp["port_max"], tcp["remote_group_id"]) == (8080, 8080, app["id"])
    icmp6 = by_proto[("ingress", 6, 58)]
    assert (icmp6["port_min"], icmp6["port_max"], icmp6["remote_ip_prefix"]) == (128, None, None)
    assert {("egress", 4, None), ("egress", 6, None)} <= set(by_proto)
    [from_net] = [r for r in groups[app["id"]]["rules"] if r["direction"] == "ingress"]
    assert from_net["remote_ip_prefix"] == "198.51.100.0/24" and from_net["protocol"] is None
    # Members: every member port's addresses and pairs, on any host, sorted (IPv4 first), no repeats.
    a1_ip = a1["fixed_ips"][0]["ip_address"]
    a2_ip = a2["fixed_ips"][0]["ip_address"]
    assert groups[app["id"]]["members"] == [f"{a1_ip}/32", "10.251.0.1/32"]
    w_ip = w["fixed_ips"][0]["ip_address"]
    expected = sorted([ipaddress.ip_network(x) for x in (f"{w_ip}/32", "10.250.0.0/24", "10.250.0.9/32")],
                      key=lambda n: (n.version, n.network_address, n.prefixlen))
    assert groups[web["id"]]["members"] == [str(n) for n in expected] + [f"{a2_ip}/128"]
    # The other host has both groups directly.
    assert set(snapshot(raw, there)["security_groups"]) == {web["id"], app["id"]}
    assert snapshot(raw, uniq("nohost"))["security_groups"] == {}

    # Each change is announced to the hosts that carry the group, and moves the feed on.
    def entries_since(seq: int) -> list[tuple[str, str, str, str | None]]:
        with db.read() as conn:
            return [(r.resource, r.resource_id, r.op, r.host) for r in conn.execute(
                select(changes).where(changes.c.seq > seq).order_by(changes.c.seq))]

    def last_seq() -> int:
        with db.read() as conn:
            return int(conn.execute(select(func.max(changes.c.seq))).scalar_one())

    seq = last_seq()
    added = rule(m, app["id"], protocol="udp", port_range_min=53, port_range_max=53).json()["security_group_rule"]
    got = entries_since(seq)
    assert ("security_group_rule", added["id"], "create", None) in got
    # app: ports there, and web's rule naming it brings it here too.
    assert {h for r, g, _, h in got if r == "security_group" and g == app["id"]} == {here, there}
    assert snapshot(raw, here)["revision"] > seq
    seq = last_seq()
    bind(raw, a1["id"], "")  # its last member leaves no host: app is still on `there`, named by a2's web
    m("PUT", f"/v2.0/ports/{a1['id']}", json={"port": {"security_groups": [unused["id"]]}})
    got = entries_since(seq)
    assert {h for r, g, _, h in got if r == "security_group" and g == app["id"]} == {here, there}
    assert ("security_group", unused["id"], "update", None) in got  # nobody carries it: one entry, no host
    assert a1_ip not in str(snapshot(raw, here)["security_groups"][app["id"]]["members"])
    for p in (w, a1, a2, off):
        m("DELETE", f"/v2.0/ports/{p['id']}")
    for g in (web, app, unused):
        assert m("DELETE", f"/v2.0/security-groups/{g['id']}").status_code == 204


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """An empty database of its own at the current schema."""
    from neutrino.db.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'big.db'}" if request.param == "sqlite" else \
        request.getfixturevalue("postgres").new_database()
    database = Database(url)
    try:
        upgrade(database)
        yield database
    finally:
        database.dispose()


def test_a_big_snapshot_takes_a_few_queries(fresh_db: Database) -> None:
    """1,000 ports on one host in a group whose rule names a remote group of 1,000 members on another: the
    host's snapshot costs a fixed handful of statements, not one per port or member. (Rows are written
    directly: what is measured is the snapshot, and 2,000 port creates would be most of the test.)"""
    from neutrino.db.schema import ipallocations, networks, ports, securitygroupportbindings, subnets
    from neutrino.services import secgroups, standard
    from neutrino.sync import snapshot as snap_builder

    here, there = "big-here", "big-there"
    with fresh_db.engine.begin() as conn:
        conn.execute(insert(networks).values(**standard.stamp_new({
            "id": "n", "project_id": "p", "name": "", "description": "", "admin_state_up": True, "status": "ACTIVE",
            "shared": False, "router_external": False, "mtu": 1450, "network_type": "vxlan",
            "physical_network": "", "segmentation_id": 9, "port_security_enabled": True, "dns_domain": "",
            "availability_zone_hints": []})))
        conn.execute(insert(subnets).values(**standard.stamp_new({
            "id": "s", "project_id": "p", "name": "", "description": "", "network_id": "n", "ip_version": 4,
            "cidr": "10.64.0.0/20", "gateway_ip": None, "enable_dhcp": False, "allocation_pools": [],
            "dns_nameservers": [], "host_routes": [], "service_types": []})))
        local = secgroups.ensure_default(conn, "p")  # its ingress rules name itself as remote
        remote = secgroups.ensure_default(conn, "q")
        conn.execute(text("UPDATE securitygrouprules SET remote_group_id = :r WHERE security_group_id = :l "
                          "AND remote_group_id IS NOT NULL AND ethertype = 'IPv4'"), {"r": remote, "l": local})
        rows, ips, links = [], [], []
        for n in range(2000):
            pid = f"port-{n:04d}"
            rows.append(standard.stamp_new({
                "id": pid, "project_id": "p", "name": "", "description": "", "network_id": "n",
                "mac_address": f"fa:16:3e:00:{n >> 8:02x}:{n & 255:02x}", "admin_state_up": True, "status": "DOWN",
                "device_id": "", "device_owner": "compute:x", "port_security_enabled": True,
                "allowed_address_pairs": [{"ip_address": f"10.65.{n >> 8}.{n & 255}"}] if n % 10 == 0 else [],
                "extra_dhcp_opts": [], "binding_host_id": here if n < 1000 else there, "binding_vnic_type": "normal",
                "binding_vif_type": "bridge", "binding_vif_details": {}, "binding_profile": {}, "dns_name": ""}))
            ips.append({"port_id": pid, "subnet_id": "s", "network_id": "n", "ip_address": f"10.64.{n >> 8}.{n & 255}",
                        "position": 0})
            links.append({"port_id": pid, "security_group_id": local if n < 1000 else remote})
        conn.execute(insert(ports), rows)
        conn.execute(insert(ipallocations), ips)
        conn.execute(insert(securitygroupportbindings), links)
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(fresh_db.engine, "before_cursor_execute", count)
    try:
        started = time.monotonic()
        with fresh_db.read() as conn:
            built = snap_builder.build(conn, here, 60.0)
        took = time.monotonic() - started
    finally:
        event.remove(fresh_db.engine, "before_cursor_execute", count)
    assert len(built.ports) == 2000 and set(built.security_groups) == {local, remote}
    assert len(built.security_groups[SecurityGroupId(remote)].members) == 1000 + 100  # addresses and pairs
    assert len(built.security_groups[SecurityGroupId(local)].members) == 1000 + 100
    assert all(p.security_groups for p in built.ports.values())
    assert len(statements) <= 20, statements
    assert took < 10, took
    print(f"\nsnapshot with 2,000 ports and 2 groups of 1,000 members ({fresh_db.engine.dialect.name}): "
          f"{len(statements)} statements, {took * 1000:.0f} ms")


# -- the upgrade ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_upgrade_gives_existing_instance_ports_their_default_group(tmp_path: Path, backend: str,
                                                                    request: pytest.FixtureRequest) -> None:
    from neutrino.db.migrate import upgrade
    from neutrino.db.schema import networks
    from neutrino.services import standard

    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'old.db'}"
    else:
        url = request.getfixturevalue("postgres").new_database()
    db = Database(url)
    try:
        upgrade(db, "0002")
        with db.engine.begin() as conn:
            conn.execute(insert(networks).values(**standard.stamp_new({
                "id": "n1", "project_id": "p", "name": "old", "description": "", "admin_state_up": True,
                "status": "ACTIVE", "shared": False, "router_external": False, "mtu": 1450,
                "network_type": "vxlan", "physical_network": "", "segmentation_id": 7,
                "port_security_enabled": True, "dns_domain": "", "availability_zone_hints": []})))
            for n, (pid, owner, secure) in enumerate((("vm", "compute:nova", True), ("dhcp", "network:dhcp", True),
                                                      ("open", "compute:nova", False))):
                conn.execute(text(
                    "INSERT INTO ports (id, project_id, name, description, revision_number, created_at, updated_at, "
                    "network_id, mac_address, admin_state_up, status, device_id, device_owner, "
                    "port_security_enabled, security_groups, allowed_address_pairs, extra_dhcp_opts, "
                    "binding_host_id, binding_vnic_type, binding_vif_type, binding_vif_details, binding_profile, "
                    "dns_name) VALUES (:id, 'p', '', '', 0, :ts, :ts, 'n1', :mac, true, 'DOWN', '', :owner, "
                    ":secure, '[\"junk\"]', '[]', '[]', '', 'normal', 'unbound', '{}', '{}', '')"),
                    {"id": pid, "ts": standard.now(), "mac": f"fa:16:3e:00:00:0{n}", "owner": owner,
                     "secure": secure})
    finally:
        db.dispose()
    done = subprocess.run([NEUTRINO, "--state-dir", str(tmp_path), "db", "upgrade"], capture_output=True, text=True,
                          env=dict(os.environ, NEUTRINO_DATABASE__URL=url), timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    db = Database(url)
    try:
        with db.read() as conn:
            bound = conn.execute(text("SELECT port_id, security_group_id FROM securitygroupportbindings")).all()
            default = conn.execute(text("SELECT security_group_id FROM default_security_groups "
                                        "WHERE project_id = 'p'")).scalar_one()
            rules = conn.execute(text("SELECT direction, ethertype, remote_group_id FROM securitygrouprules "
                                      "WHERE security_group_id = :g"), {"g": default}).all()
            columns = list(conn.execute(text("SELECT * FROM ports")).keys())
        assert bound == [("vm", default)]
        assert set(map(tuple, rules)) == {("egress", "IPv4", None), ("egress", "IPv6", None),
                                          ("ingress", "IPv4", default), ("ingress", "IPv6", default)}
        assert "security_groups" not in columns
    finally:
        db.dispose()
