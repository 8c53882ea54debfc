"""The attribute maps of networks, subnets and ports (what the wire accepts and shows)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import or_, select

from neutrino.api import validate as v
from neutrino.api.attributes import FILTER_FOR, Attr, ResourceSpec, standard_attrs
from neutrino.db.schema import ipallocations, networks, ports, subnets

s255 = v.string(255)
b, i = FILTER_FOR["bool"], FILTER_FOR["int"]


def _subnets_filter(values: list[str]) -> Any:
    return networks.c.id.in_(select(subnets.c.network_id).where(subnets.c.id.in_(values)))


def _physnet_filter(values: list[str]) -> Any:
    return networks.c.physical_network.in_(values)


NETWORK = ResourceSpec(
    name="network",
    collection="networks",
    table=networks,
    attrs={
        **standard_attrs(),
        "admin_state_up": Attr("admin_state_up", "admin_state_up", post=True, put=True, default=True,
                               validate=v.boolean, filter=b),
        "status": Attr("status", "status"),
        "shared": Attr("shared", "shared", post=True, put=True, default=False, validate=v.boolean,
                       admin_write=True, filter=b),
        "router:external": Attr("router:external", "router_external", post=True, put=True, default=False,
                                validate=v.boolean, admin_write=True, filter=b),
        "mtu": Attr("mtu", "mtu", post=True, put=True, validate=v.integer(68, 65535), filter=i),
        "subnets": Attr("subnets", sortable=False),
        "port_security_enabled": Attr("port_security_enabled", "port_security_enabled", post=True, put=True,
                                      default=True, validate=v.boolean, filter=b),
        "provider:network_type": Attr("provider:network_type", "network_type", post=True,
                                      validate=v.one_of("vxlan", "flat", "vlan", "local"),
                                      admin_write=True, admin_read=True),
        "provider:physical_network": Attr("provider:physical_network", None, post=True,
                                          validate=v.string(64), admin_write=True, admin_read=True,
                                          sortable=False),
        "provider:segmentation_id": Attr("provider:segmentation_id", "segmentation_id", post=True,
                                         validate=v.integer(1, 16777215), admin_write=True,
                                         admin_read=True, filter=i),
        "availability_zone_hints": Attr("availability_zone_hints", post=True, default=list,
                                        validate=v.list_of(v.string(255)), sortable=False),
        "availability_zones": Attr("availability_zones", sortable=False),
        "ipv4_address_scope": Attr("ipv4_address_scope", sortable=False),
        "ipv6_address_scope": Attr("ipv6_address_scope", sortable=False),
        "l2_adjacency": Attr("l2_adjacency", sortable=False),
    },
    special_filters={"subnets": _subnets_filter, "provider:physical_network": _physnet_filter},
)

_pool_list = v.list_of(v.allocation_pool)


def _ipv6_mode(value: Any) -> Any:
    return v.one_of(None, "slaac", "dhcpv6-stateful", "dhcpv6-stateless")(value)


def _bool_values(attr: str, values: list[str]) -> list[bool]:
    try:
        return [v.boolean(value) for value in values]
    except ValueError as exc:
        raise v.invalid(attr, str(exc)) from None


def _subnet_shared_filter(values: list[str]) -> Any:
    """Subnets have no ``shared`` of their own: it is their network's (a filter stock clients send)."""
    return subnets.c.network_id.in_(select(networks.c.id).where(networks.c.shared.in_(_bool_values("shared", values))))


SUBNET = ResourceSpec(
    name="subnet",
    collection="subnets",
    table=subnets,
    attrs={
        **standard_attrs(),
        "network_id": Attr("network_id", "network_id", post=True, required=True, validate=v.uuid_str),
        "ip_version": Attr("ip_version", "ip_version", post=True, required=True,
                           validate=v.ip_version, filter=i),
        "cidr": Attr("cidr", "cidr", post=True, validate=v.subnet_cidr),
        "gateway_ip": Attr("gateway_ip", "gateway_ip", post=True, put=True, validate=v.ip_address_or_none),
        "allocation_pools": Attr("allocation_pools", post=True, put=True, validate=_pool_list, sortable=False),
        "dns_nameservers": Attr("dns_nameservers", post=True, put=True, default=list,
                                validate=v.list_of(v.ip_address, unique=True), sortable=False),
        "host_routes": Attr("host_routes", post=True, put=True, default=list,
                            validate=v.list_of(v.host_route), sortable=False),
        "enable_dhcp": Attr("enable_dhcp", "enable_dhcp", post=True, put=True, default=True,
                            validate=v.boolean, filter=b),
        "ipv6_ra_mode": Attr("ipv6_ra_mode", "ipv6_ra_mode", post=True, default=None, validate=_ipv6_mode),
        "ipv6_address_mode": Attr("ipv6_address_mode", "ipv6_address_mode", post=True, default=None,
                                  validate=_ipv6_mode),
        "subnetpool_id": Attr("subnetpool_id", "subnetpool_id"),
        "prefixlen": Attr("prefixlen", post=True, validate=v.integer(0, 128), sortable=False),
        "use_default_subnetpool": Attr("use_default_subnetpool", post=True, validate=v.boolean,
                                       sortable=False),
        "segment_id": Attr("segment_id", "segment_id"),
        "service_types": Attr("service_types", post=True, put=True, default=list,
                              validate=v.list_of(v.string(255)), sortable=False),
        "shared": Attr("shared", sortable=False),
    },
    special_filters={"shared": _subnet_shared_filter},
)


MAX_SUBSTR_FILTERS = 64


def _fixed_ips_filter(values: list[str]) -> Any:
    """``fixed_ips=ip_address=X`` / ``subnet_id=Y`` / ``ip_address_substr=Z`` as Neutron reads them: ports
    with one allocation matching every given key, repeated values of one key OR'd (IN, however many)."""
    by_key: dict[str, list[str]] = {}
    for value in values:
        key, sep, want = value.partition("=")
        if not sep or key not in ("ip_address", "subnet_id", "ip_address_substr"):
            raise v.invalid("fixed_ips", f"'{value}' is not of the form ip_address=... or subnet_id=...")
        by_key.setdefault(key, []).append(want)
    conds: list[Any] = []
    if "ip_address" in by_key:
        conds.append(ipallocations.c.ip_address.in_(by_key["ip_address"]))
    if "subnet_id" in by_key:
        conds.append(ipallocations.c.subnet_id.in_(by_key["subnet_id"]))
    if "ip_address_substr" in by_key:
        if len(by_key["ip_address_substr"]) > MAX_SUBSTR_FILTERS:
            raise v.invalid("fixed_ips", f"at most {MAX_SUBSTR_FILTERS} ip_address_substr values")
        conds.append(or_(*(ipallocations.c.ip_address.contains(want, autoescape=True)
                           for want in by_key["ip_address_substr"])))
    return ports.c.id.in_(select(ipallocations.c.port_id).where(*conds))


PORT = ResourceSpec(
    name="port",
    collection="ports",
    table=ports,
    attrs={
        **standard_attrs(),
        "network_id": Attr("network_id", "network_id", post=True, required=True, validate=v.uuid_str),
        "admin_state_up": Attr("admin_state_up", "admin_state_up", post=True, put=True, default=True,
                               validate=v.boolean, filter=b),
        "status": Attr("status", "status"),
        "mac_address": Attr("mac_address", "mac_address", post=True, put=True, validate=v.mac_address,
                            filter=lambda x: v.mac_address(x)),
        "fixed_ips": Attr("fixed_ips", post=True, put=True, validate=v.list_of(v.fixed_ip), sortable=False),
        "device_id": Attr("device_id", "device_id", post=True, put=True, default="", validate=s255),
        "device_owner": Attr("device_owner", "device_owner", post=True, put=True, default="", validate=s255),
        "security_groups": Attr("security_groups", post=True, put=True, validate=v.list_of(v.uuid_str,
                                unique=True), sortable=False),
        "port_security_enabled": Attr("port_security_enabled", "port_security_enabled", post=True, put=True,
                                      validate=v.boolean, filter=b),
        "allowed_address_pairs": Attr("allowed_address_pairs", post=True, put=True, default=list,
                                      validate=v.list_of(v.address_pair), sortable=False),
        "extra_dhcp_opts": Attr("extra_dhcp_opts", post=True, put=True, default=list,
                                validate=v.list_of(v.extra_dhcp_opt), sortable=False),
        "binding:host_id": Attr("binding:host_id", "binding_host_id", post=True, put=True, default="",
                                validate=s255, admin_write=True, admin_read=True),
        "binding:vnic_type": Attr("binding:vnic_type", "binding_vnic_type", post=True, put=True,
                                  default="normal", validate=v.one_of("normal", "direct", "macvtap",
                                                                      "baremetal", "virtio-forwarder")),
        "binding:vif_type": Attr("binding:vif_type", "binding_vif_type", admin_read=True),
        "binding:vif_details": Attr("binding:vif_details", admin_read=True, sortable=False),
        "binding:profile": Attr("binding:profile", post=True, put=True, default=dict, validate=v.json_dict(),
                                admin_write=True, admin_read=True, sortable=False),
    },
    special_filters={"fixed_ips": _fixed_ips_filter},
)

