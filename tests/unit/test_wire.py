"""Attribute validation and list-query parsing: Neutron's messages and codes, no I/O."""

from __future__ import annotations

import pytest

from neutrino.api import validate as v
from neutrino.api.attributes import parse_bodies, parse_update
from neutrino.api.listing import parse_list_query
from neutrino.api.resources import NETWORK, PORT, SUBNET
from neutrino.context import RequestContext
from neutrino.errors import ApiError, PolicyNotAuthorized

ADMIN = RequestContext.admin()
MEMBER = RequestContext(user_id="u", project_id="p1", roles=frozenset({"member", "reader"}))


def test_create_fills_defaults_and_project() -> None:
    items, bulk = parse_bodies(NETWORK, {"network": {"name": "n"}}, MEMBER)
    assert not bulk
    assert items[0]["project_id"] == "p1" and items[0]["admin_state_up"] is True and items[0]["shared"] is False


def test_bulk_and_errors() -> None:
    items, bulk = parse_bodies(NETWORK, {"networks": [{"name": "a"}, {"name": "b"}]}, ADMIN)
    assert bulk and [i["name"] for i in items] == ["a", "b"]
    with pytest.raises(ApiError, match="Unrecognized attribute"):
        parse_bodies(NETWORK, {"network": {"nope": 1}}, ADMIN)
    with pytest.raises(ApiError, match="not allowed in POST"):
        parse_bodies(NETWORK, {"network": {"status": "DOWN"}}, ADMIN)
    with pytest.raises(ApiError, match="Required attribute 'network_id'"):
        parse_bodies(PORT, {"port": {}}, ADMIN)
    with pytest.raises(ApiError, match=r"Invalid input for cidr. Reason: '10.0.0.1/24' isn't a recommended CIDR"):
        parse_bodies(SUBNET, {"subnet": {"network_id": "3f1e1b8e-2c1f-4c5a-9b7e-1d2c3b4a5f60", "ip_version": 4,
                                         "cidr": "10.0.0.1/24"}}, ADMIN)


def test_admin_only_attributes() -> None:
    with pytest.raises(PolicyNotAuthorized):
        parse_bodies(NETWORK, {"network": {"shared": True}}, MEMBER)
    parse_bodies(NETWORK, {"network": {"shared": False}}, MEMBER)  # the default is not a privilege
    with pytest.raises(PolicyNotAuthorized):
        parse_update(PORT, {"port": {"binding:host_id": "h"}}, MEMBER)
    with pytest.raises(ApiError, match="requires admin privileges") as err:  # Neutron: 400, not 403
        parse_bodies(PORT, {"port": {"network_id": "3f1e1b8e-2c1f-4c5a-9b7e-1d2c3b4a5f60", "project_id": "other"}},
                     MEMBER)
    assert err.value.status == 400
    with pytest.raises(ApiError, match="read-only"):
        parse_update(SUBNET, {"subnet": {"cidr": "10.0.0.0/24"}}, ADMIN)


def test_validators() -> None:
    assert v.ip_address("2001:DB8::1") == "2001:db8::1"
    with pytest.raises(ValueError):
        v.ip_address("10.0.0")
    assert v.boolean("True") is True
    with pytest.raises(ValueError):
        v.integer(68)(10)
    assert v.fixed_ip({"ip_address": "10.0.0.5"}) == {"ip_address": "10.0.0.5"}
    with pytest.raises(ValueError):
        v.fixed_ip({"ip": "10.0.0.5"})


def test_list_query() -> None:
    q = parse_list_query(NETWORK, [("name", "a"), ("name", "b"), ("fields", "id"), ("sort_key", "name"),
                                   ("sort_dir", "desc"), ("limit", "5"), ("tags", "x,y")], is_admin=False)
    assert q.filters == {"name": ["a", "b"]} and q.fields == ("id",) and q.sorts == (("name", False),)
    assert q.limit == 5 and q.tags_all == ("x", "y")
    with pytest.raises(ApiError, match="invalid attribute for filtering"):
        parse_list_query(NETWORK, [("bogus", "1")], is_admin=True)
    with pytest.raises(ApiError, match="invalid attribute for filtering"):
        parse_list_query(PORT, [("binding:host_id", "h")], is_admin=False)
    with pytest.raises(ApiError):
        parse_list_query(NETWORK, [("sort_key", "name"), ("sort_dir", "sideways")], is_admin=True)


@pytest.mark.parametrize("value", ["fe80::1%eth0", "fe80::1%eth0\nx", "10.0.0.1\n", " 10.0.0.1"])
def test_addresses_refuse_zone_ids_and_control_characters(value: str) -> None:
    with pytest.raises(ValueError):
        v.ip_address(value)
    with pytest.raises(ValueError):
        v.subnet_cidr(value + "/64")


@pytest.mark.parametrize("opt", [
    {"opt_name": "domain-name", "opt_value": "a.example\noption:router,10.0.0.66"},
    {"opt_name": "router\n", "opt_value": "10.0.0.66"},
    {"opt_name": "mtu", "opt_value": "1400\r"},
    {"opt_name": "a b", "opt_value": "x"},
    {"opt_name": "", "opt_value": "x"},
    {"opt_name": "mtu", "opt_value": "x", "ip_version": True},
])
def test_dhcp_options_are_single_line_tokens(opt: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        v.extra_dhcp_opt(opt)


def test_dhcp_options_as_ironic_uses_them() -> None:
    for name in ("bootfile-name", "67", "tag:ipxe,bootfile-name", "tag:!ipxe,67"):
        assert v.extra_dhcp_opt({"opt_name": name, "opt_value": "x.efi"})["opt_name"] == name
