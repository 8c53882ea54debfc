"""The attribute maps of every collection (what the wire accepts and shows).

Which attribute is stored in which column is the services' to say (their ``COLUMNS``); filters that are
more than a column comparison are theirs too (``FILTERS``).
"""

from __future__ import annotations

from typing import Any

from neutrino.api import validate as v
from neutrino.api.attributes import FILTER_FOR, Attr, ResourceSpec, standard_attrs, with_columns
from neutrino.db.schema import (
    agents,
    floatingips,
    networks,
    ports,
    routers,
    securitygrouprules,
    securitygroups,
    subnets,
)
from neutrino.services import agents as agent_service
from neutrino.services import floatingips as fip_service
from neutrino.services import networks as net_service
from neutrino.services import ports as port_service
from neutrino.services import routers as router_service
from neutrino.services import secgroups as sg_service
from neutrino.services import sgrules as rule_service
from neutrino.services import subnets as subnet_service

s255 = v.string(255)
b, i = FILTER_FOR["bool"], FILTER_FOR["int"]


NETWORK = ResourceSpec(
    name="network",
    collection="networks",
    table=networks,
    attrs=with_columns(net_service.COLUMNS, {
        **standard_attrs(),
        "admin_state_up": Attr("admin_state_up", post=True, put=True, default=True,
                               validate=v.boolean, filter=b),
        "status": Attr("status"),
        "shared": Attr("shared", post=True, put=True, default=False, validate=v.boolean,
                       admin_write=True, filter=b),
        "router:external": Attr("router:external", post=True, put=True, default=False,
                                validate=v.boolean, admin_write=True, filter=b),
        "mtu": Attr("mtu", post=True, put=True, validate=v.integer(68, 65535), filter=i),
        "subnets": Attr("subnets", sortable=False),
        "port_security_enabled": Attr("port_security_enabled", post=True, put=True,
                                      default=True, validate=v.boolean, filter=b),
        "provider:network_type": Attr("provider:network_type", post=True,
                                      validate=v.one_of("vxlan", "flat", "vlan", "local"),
                                      admin_write=True, admin_read=True),
        "provider:physical_network": Attr("provider:physical_network", post=True,
                                          validate=v.string(64), admin_write=True, admin_read=True,
                                          sortable=False),
        "provider:segmentation_id": Attr("provider:segmentation_id", post=True,
                                         validate=v.integer(1, 16777215), admin_write=True,
                                         admin_read=True, filter=i),
        "availability_zone_hints": Attr("availability_zone_hints", post=True, default=list,
                                        validate=v.list_of(v.string(255)), sortable=False),
        "availability_zones": Attr("availability_zones", sortable=False),
        "ipv4_address_scope": Attr("ipv4_address_scope", sortable=False),
        "ipv6_address_scope": Attr("ipv6_address_scope", sortable=False),
        "l2_adjacency": Attr("l2_adjacency", sortable=False),
    }),
    special_filters=net_service.FILTERS,
)

_pool_list = v.list_of(v.allocation_pool)


def _ipv6_mode(value: Any) -> Any:
    return v.one_of(None, "slaac", "dhcpv6-stateful", "dhcpv6-stateless")(value)


SUBNET = ResourceSpec(
    name="subnet",
    collection="subnets",
    table=subnets,
    attrs=with_columns(subnet_service.COLUMNS, {
        **standard_attrs(),
        "network_id": Attr("network_id", post=True, required=True, validate=v.uuid_str),
        "ip_version": Attr("ip_version", post=True, required=True,
                           validate=v.ip_version, filter=i),
        "cidr": Attr("cidr", post=True, validate=v.subnet_cidr),
        "gateway_ip": Attr("gateway_ip", post=True, put=True, validate=v.ip_address_or_none),
        "allocation_pools": Attr("allocation_pools", post=True, put=True, validate=_pool_list, sortable=False),
        "dns_nameservers": Attr("dns_nameservers", post=True, put=True, default=list,
                                validate=v.list_of(v.ip_address, unique=True), sortable=False),
        "host_routes": Attr("host_routes", post=True, put=True, default=list,
                            validate=v.list_of(v.host_route), sortable=False),
        "enable_dhcp": Attr("enable_dhcp", post=True, put=True, default=True,
                            validate=v.boolean, filter=b),
        "ipv6_ra_mode": Attr("ipv6_ra_mode", post=True, default=None, validate=_ipv6_mode),
        "ipv6_address_mode": Attr("ipv6_address_mode", post=True, default=None,
                                  validate=_ipv6_mode),
        "subnetpool_id": Attr("subnetpool_id"),
        "prefixlen": Attr("prefixlen", post=True, validate=v.integer(0, 128), sortable=False),
        "use_default_subnetpool": Attr("use_default_subnetpool", post=True, validate=v.boolean,
                                       sortable=False),
        "segment_id": Attr("segment_id"),
        "service_types": Attr("service_types", post=True, put=True, default=list,
                              validate=v.list_of(v.string(255)), sortable=False),
        "shared": Attr("shared", sortable=False, filter=b),
    }),
    special_filters=subnet_service.FILTERS,
)


_uuid_list = v.list_of(v.uuid_str, unique=True)


def _group_ids(value: Any) -> Any:
    """A port's groups; null is "not given" (on create: the project's default group), as in Neutron."""
    return None if value is None else _uuid_list(value)


PORT = ResourceSpec(
    name="port",
    collection="ports",
    table=ports,
    attrs=with_columns(port_service.COLUMNS, {
        **standard_attrs(),
        "network_id": Attr("network_id", post=True, required=True, validate=v.uuid_str),
        "admin_state_up": Attr("admin_state_up", post=True, put=True, default=True,
                               validate=v.boolean, filter=b),
        "status": Attr("status"),
        "mac_address": Attr("mac_address", post=True, put=True, validate=v.mac_address,
                            filter=lambda x: v.mac_address(x)),
        "fixed_ips": Attr("fixed_ips", post=True, put=True, validate=v.list_of(v.fixed_ip), sortable=False),
        "device_id": Attr("device_id", post=True, put=True, default="", validate=s255),
        "device_owner": Attr("device_owner", post=True, put=True, default="", validate=s255),
        "security_groups": Attr("security_groups", post=True, put=True, validate=_group_ids, sortable=False),
        "port_security_enabled": Attr("port_security_enabled", post=True, put=True,
                                      validate=v.boolean, filter=b),
        "allowed_address_pairs": Attr("allowed_address_pairs", post=True, put=True, default=list,
                                      validate=v.address_pairs, sortable=False),
        "extra_dhcp_opts": Attr("extra_dhcp_opts", post=True, put=True, default=list,
                                validate=v.list_of(v.extra_dhcp_opt), sortable=False),
        "binding:host_id": Attr("binding:host_id", post=True, put=True, default="",
                                validate=s255, admin_write=True, admin_read=True),
        "binding:vnic_type": Attr("binding:vnic_type", post=True, put=True,
                                  default="normal", validate=v.one_of("normal", "direct", "macvtap",
                                                                      "baremetal", "virtio-forwarder")),
        "binding:vif_type": Attr("binding:vif_type", admin_read=True),
        "binding:vif_details": Attr("binding:vif_details", admin_read=True, sortable=False),
        "binding:profile": Attr("binding:profile", post=True, put=True, default=dict, validate=v.json_dict(),
                                admin_write=True, admin_read=True, sortable=False),
    }),
    special_filters=port_service.FILTERS,
)


AGENT = ResourceSpec(
    name="agent",
    collection="agents",
    table=agents,
    attrs=with_columns(agent_service.COLUMNS, {
        "id": Attr("id"),
        "agent_type": Attr("agent_type"),
        "binary": Attr("binary"),
        "topic": Attr("topic"),
        "host": Attr("host"),
        "admin_state_up": Attr("admin_state_up", put=True, validate=v.boolean, filter=lambda x: v.boolean(x)),
        "description": Attr("description", put=True, validate=v.string(255)),
        "alive": Attr("alive", sortable=False),
        "availability_zone": Attr("availability_zone"),
        "configurations": Attr("configurations", sortable=False),
        "created_at": Attr("created_at", filter=v.timestamp),
        "started_at": Attr("started_at", filter=v.timestamp),
        "heartbeat_timestamp": Attr("heartbeat_timestamp", filter=v.timestamp),
        "resources_synced": Attr("resources_synced", sortable=False),
    }),
)


_gateway_info = v.dict_of({"network_id": (True, v.uuid_str), "enable_snat": (False, v.boolean),
                           "external_fixed_ips": (False, v.list_of(v.fixed_ip))})


def _gateway_or_none(value: Any) -> Any:
    return None if value is None or value == {} else _gateway_info(value)


ROUTER = ResourceSpec(
    name="router",
    collection="routers",
    table=routers,
    attrs=with_columns(router_service.COLUMNS, {
        **standard_attrs(),
        "admin_state_up": Attr("admin_state_up", post=True, put=True, default=True,
                               validate=v.boolean, filter=b),
        "status": Attr("status"),
        "external_gateway_info": Attr("external_gateway_info", post=True, put=True, default=None,
                                      validate=_gateway_or_none, sortable=False),
        "routes": Attr("routes", put=True, validate=v.list_of(v.host_route), sortable=False),
        "distributed": Attr("distributed", sortable=False),
        "ha": Attr("ha", sortable=False),
        "availability_zone_hints": Attr("availability_zone_hints", sortable=False),
        "availability_zones": Attr("availability_zones", sortable=False),
        "flavor_id": Attr("flavor_id", sortable=False),
    }),
)

FLOATINGIP = ResourceSpec(
    name="floatingip",
    collection="floatingips",
    table=floatingips,
    attrs=with_columns(fip_service.COLUMNS, {
        **{k: a for k, a in standard_attrs().items() if k != "name"},
        "floating_network_id": Attr("floating_network_id", post=True, required=True, validate=v.uuid_str),
        "floating_ip_address": Attr("floating_ip_address", post=True, validate=v.ip_address),
        "subnet_id": Attr("subnet_id", post=True, validate=v.uuid_str, sortable=False),
        "port_id": Attr("port_id", post=True, put=True, validate=lambda x: None if x is None else v.uuid_str(x)),
        "fixed_ip_address": Attr("fixed_ip_address", post=True, put=True, validate=v.ip_address),
        "router_id": Attr("router_id"),
        "status": Attr("status"),
    }),
)


SECURITY_GROUP = ResourceSpec(
    name="security_group",
    collection="security-groups",
    table=securitygroups,
    attrs=with_columns(sg_service.COLUMNS, {
        **standard_attrs(),
        "stateful": Attr("stateful", post=True, put=True, default=True, validate=v.boolean, filter=b),
        "security_group_rules": Attr("security_group_rules", sortable=False),
    }),
)


def _uuid_or_none(value: Any) -> Any:
    return None if value is None else v.uuid_str(value)


SECURITY_GROUP_RULE = ResourceSpec(
    name="security_group_rule",
    collection="security-group-rules",
    table=securitygrouprules,
    attrs=with_columns(rule_service.COLUMNS, {
        **{k: a for k, a in standard_attrs().items() if k not in ("name", "tags")},
        "description": Attr("description", post=True, default="", validate=s255),  # rules are immutable
        "security_group_id": Attr("security_group_id", post=True, required=True, validate=v.uuid_str),
        "direction": Attr("direction", post=True, required=True, validate=v.one_of("ingress", "egress")),
        "ethertype": Attr("ethertype", post=True, default="IPv4", validate=rule_service.convert_ethertype),
        "protocol": Attr("protocol", post=True, default=None, validate=rule_service.convert_protocol),
        "port_range_min": Attr("port_range_min", post=True, default=None, validate=rule_service.convert_port,
                               filter=i),
        "port_range_max": Attr("port_range_max", post=True, default=None, validate=rule_service.convert_port,
                               filter=i),
        "remote_ip_prefix": Attr("remote_ip_prefix", post=True, default=None, validate=rule_service.convert_prefix),
        "remote_group_id": Attr("remote_group_id", post=True, default=None, validate=_uuid_or_none),
    }),
)
