"""Subnets: CIDR, gateway and pool rules, IPv6 modes, overlap and in-use checks, and their API view."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, insert, select, true

from neutrino.context import RequestContext
from neutrino.db.schema import ipallocations, networks, ports, subnets
from neutrino.errors import InUse, InvalidInput, PolicyNotAuthorized
from neutrino.intent.model import ROUTER_OWNERS, DeviceOwner
from neutrino.ipam.macs import eui64
from neutrino.ipam.pools import Pool, PoolError, default_pools, usable_range, validate_pools
from neutrino.services import dhcp, quotas, rows, secgroups, standard
from neutrino.services import networks as net_service
from neutrino.services.addresses import AUTO_ADDRESS_MODES
from neutrino.services.core import Core, guard_change, require_writer

MAX_DNS_NAMESERVERS = 5
MAX_HOST_ROUTES = 20


COLUMNS = {**standard.COLUMNS, **{c: c for c in (
    "network_id", "ip_version", "cidr", "gateway_ip", "allocation_pools", "dns_nameservers", "host_routes",
    "enable_dhcp", "ipv6_ra_mode", "ipv6_address_mode", "subnetpool_id", "segment_id", "service_types")}}


def _on_shared(values: list[bool]) -> Any:
    """Subnets have no ``shared`` of their own: it is their network's (a filter stock clients send)."""
    return subnets.c.network_id.in_(select(networks.c.id).where(networks.c.shared.in_(values)))


FILTERS = {"shared": _on_shared}


def scope(ctx: RequestContext) -> Any:
    if ctx.is_admin:
        return true()
    shared = select(networks.c.id).where(networks.c.shared == true())
    return (subnets.c.project_id == ctx.project_id) | subnets.c.network_id.in_(shared)


def fetch(conn: Connection, ctx: RequestContext, subnet_id: str) -> Any:
    return standard.fetch_visible(conn, subnets, scope(ctx), "Subnet", subnet_id)


def _pools(cidr: Any, raw: list[dict[str, str]] | None, gateway: Any) -> list[Pool]:
    if raw is None:
        return default_pools(cidr, gateway)
    try:
        return validate_pools(cidr, [Pool(ipaddress.ip_address(p["start"]), ipaddress.ip_address(p["end"]))
                                     for p in raw], gateway)
    except PoolError as exc:
        raise InvalidInput(str(exc)) from None


def _check_gateway(cidr: Any, gateway: Any) -> None:
    if gateway is None:
        return
    if gateway.version != cidr.version:
        raise InvalidInput(f"Gateway IP {gateway} does not match the IP version of subnet {cidr}")
    # A gateway outside the subnet is allowed (as in Neutron): DHCP clients get an on-link route to it.
    lo, hi = usable_range(cidr)
    if gateway in cidr and not lo <= int(gateway) <= hi:
        raise InvalidInput(f"Gateway is not valid on subnet: {gateway} is the network or broadcast address")


def _check_lists(cidr: Any, data: dict[str, Any]) -> None:
    dns = data.get("dns_nameservers") or []
    if len(dns) > MAX_DNS_NAMESERVERS:
        raise InvalidInput(f"Number of DNS nameservers exceeds the limit {MAX_DNS_NAMESERVERS}")
    routes = data.get("host_routes") or []
    if len(routes) > MAX_HOST_ROUTES:
        raise InvalidInput(f"Number of host routes exceeds the limit {MAX_HOST_ROUTES}")
    for route in routes:
        if ipaddress.ip_network(route["destination"]).version != cidr.version or \
                ipaddress.ip_address(route["nexthop"]).version != cidr.version:
            raise InvalidInput(f"Host route {route} does not match the IP version of subnet {cidr}")


def _check_dhcp_cidr(cidr: Any) -> None:
    """Ranges a DHCP server cannot serve (as Neutron refuses them when enable_dhcp is true)."""
    if cidr.is_multicast:
        raise InvalidInput("Multicast IP subnet is not supported if enable_dhcp is True")
    if cidr.is_loopback:
        raise InvalidInput("Loopback IP subnet is not supported if enable_dhcp is True")
    if cidr.version == 4 and int(cidr.network_address) == 0:
        raise InvalidInput("First IP '0.0.0.0' of network is not supported if enable_dhcp is True")


def _check_ipv6_modes(cidr: Any, data: dict[str, Any]) -> None:
    ra, addr = data.get("ipv6_ra_mode"), data.get("ipv6_address_mode")
    if cidr.version == 4:
        if ra or addr:
            raise InvalidInput("ipv6_ra_mode and ipv6_address_mode cannot be set for an IPv4 subnet")
        return
    if ra and addr and ra != addr:
        raise InvalidInput(f"ipv6_ra_mode set to '{ra}' with ipv6_address_mode set to '{addr}' is not valid. "
                           "If both attributes are set, they must be the same value")
    if (ra in AUTO_ADDRESS_MODES or addr in AUTO_ADDRESS_MODES) and cidr.prefixlen != 64:
        raise InvalidInput(f"Invalid CIDR {cidr}: the prefix length must be 64 for SLAAC and dhcpv6-stateless")
    if (ra or addr) and not data.get("enable_dhcp", True) and addr != "slaac" and ra != "slaac":
        raise InvalidInput("ipv6_ra_mode or ipv6_address_mode cannot be set when enable_dhcp is set to False")


def create(core: Core, conn: Connection, ctx: RequestContext, data: dict[str, Any]) -> str:
    require_writer(ctx, "create_subnet")
    net = net_service.fetch(conn, ctx, data["network_id"])
    if not ctx.is_admin and net.project_id != ctx.project_id:
        raise PolicyNotAuthorized("rule:create_subnet")
    if "cidr" not in data:
        raise InvalidInput("A cidr must be specified in the absence of a subnet pool")
    cidr = ipaddress.ip_network(data["cidr"])
    if cidr.version != data["ip_version"]:
        raise InvalidInput(f"Invalid CIDR {cidr} for IP version {data['ip_version']}")
    if cidr.version == 6 and net.mtu < net_service.IPV6_MIN_MTU:
        raise net_service.mtu_too_small_for_ipv6(net.id, net.mtu)
    if (cidr.version == 4 and cidr.prefixlen > 30) or (cidr.version == 6 and cidr.prefixlen > 126):
        raise InvalidInput(f"Invalid CIDR {cidr}: the prefix is too long to hold addresses for ports")
    quotas.check(conn, core.cfg.quotas, data["project_id"], "subnet")
    if "gateway_ip" in data:
        gateway = ipaddress.ip_address(data["gateway_ip"]) if data["gateway_ip"] else None
    else:
        gateway = cidr.network_address + 1
    _check_gateway(cidr, gateway)
    pools = _pools(cidr, data.get("allocation_pools"), gateway)
    _check_lists(cidr, data)
    _check_ipv6_modes(cidr, data)
    if data["enable_dhcp"]:
        _check_dhcp_cidr(cidr)
    for (other_cidr,) in conn.execute(select(subnets.c.cidr)
                                             .where(subnets.c.network_id == net.id)):
        if ipaddress.ip_network(other_cidr).overlaps(cidr):
            raise InvalidInput(f"Requested subnet with cidr: {cidr} for network: {net.id} overlaps with "
                               f"another subnet")
    subnet_id = str(uuid.uuid4())
    conn.execute(insert(subnets).values(**standard.stamp_new({
        "id": subnet_id, "project_id": data["project_id"], "name": data["name"],
        "description": data["description"], "network_id": net.id, "ip_version": cidr.version,
        "cidr": str(cidr), "gateway_ip": str(gateway) if gateway else None,
        "enable_dhcp": data["enable_dhcp"], "ipv6_ra_mode": data.get("ipv6_ra_mode"),
        "ipv6_address_mode": data.get("ipv6_address_mode"),
        "allocation_pools": [p.as_dict() for p in pools], "dns_nameservers": data["dns_nameservers"],
        "host_routes": data["host_routes"], "service_types": data.get("service_types", []),
    })))
    if cidr.version == 6 and data.get("ipv6_address_mode") in AUTO_ADDRESS_MODES:
        _address_existing_ports(conn, net.id, subnet_id, cidr)
    standard.bump(conn, networks, net.id)
    standard.emit(conn, "subnet", subnet_id, "create", network_id=net.id)
    dhcp.reconcile_network(conn, core, net.id)
    return subnet_id


def _address_existing_ports(conn: Connection, network_id: str, subnet_id: str, cidr: Any) -> None:
    """A new SLAAC subnet gives every existing (non-router) port its EUI-64 address."""
    rows = conn.execute(select(ports.c.id, ports.c.mac_address, ports.c.device_owner)
                        .where(ports.c.network_id == network_id)).all()
    values = [{"port_id": pid, "subnet_id": subnet_id, "network_id": network_id,
               "ip_address": str(eui64(cidr, mac)), "position": 99}
              for pid, mac, owner in rows if owner not in ROUTER_OWNERS]
    if values:
        conn.execute(insert(ipallocations), values)
        for v in values:
            standard.bump(conn, ports, v["port_id"])
            standard.emit(conn, "port", v["port_id"], "update", network_id=network_id)
        secgroups.announce_members(conn, [v["port_id"] for v in values])


def update(core: Core, conn: Connection, ctx: RequestContext, subnet_id: str, data: dict[str, Any],
           if_match: str | None) -> None:
    row = fetch(conn, ctx, subnet_id)
    guard_change(ctx, row.project_id, "update_subnet", row.revision_number, if_match)
    cidr = ipaddress.ip_network(row.cidr)
    # gateway_ip and allocation_pools are checked and rewritten below
    values = standard.columns_of({k: v for k, v in data.items() if k not in ("gateway_ip", "allocation_pools")},
                                 COLUMNS)
    _check_lists(cidr, data)
    gateway = ipaddress.ip_address(row.gateway_ip) if row.gateway_ip else None
    if "gateway_ip" in data:
        gateway = ipaddress.ip_address(data["gateway_ip"]) if data["gateway_ip"] else None
        _check_gateway(cidr, gateway)
        values["gateway_ip"] = str(gateway) if gateway else None
    if "allocation_pools" in data or "gateway_ip" in data:
        raw = data.get("allocation_pools", row.allocation_pools)
        values["allocation_pools"] = [p.as_dict() for p in _pools(cidr, raw, gateway)]
    if data.get("enable_dhcp") is False and (row.ipv6_address_mode or row.ipv6_ra_mode) \
            and "slaac" not in (row.ipv6_address_mode, row.ipv6_ra_mode):
        raise InvalidInput("ipv6_ra_mode or ipv6_address_mode cannot be set when enable_dhcp is set to False")
    values = standard.changed(row, values)
    if not values:
        return
    if values.get("enable_dhcp"):
        _check_dhcp_cidr(cidr)
    standard.bump(conn, subnets, subnet_id, values)
    standard.emit(conn, "subnet", subnet_id, "update", network_id=row.network_id)
    if "enable_dhcp" in values:
        dhcp.reconcile_network(conn, core, row.network_id)


def delete_(core: Core, conn: Connection, ctx: RequestContext, subnet_id: str, if_match: str | None) -> None:
    row = fetch(conn, ctx, subnet_id)
    guard_change(ctx, row.project_id, "delete_subnet", row.revision_number, if_match)
    auto = row.ip_version == 6 and row.ipv6_address_mode in AUTO_ADDRESS_MODES
    users = select(ipallocations.c.port_id).join(ports, ports.c.id == ipallocations.c.port_id).where(
        ipallocations.c.subnet_id == subnet_id, ports.c.device_owner != DeviceOwner.DHCP)
    if auto:
        users = users.where(ports.c.device_owner.in_(sorted(ROUTER_OWNERS)))
    if conn.execute(users.limit(1)).first() is not None:
        raise InUse(f"Unable to complete operation on subnet {subnet_id}: One or more ports have an IP "
                    "allocation from this subnet.", type="SubnetInUse")
    touched = [r[0] for r in conn.execute(select(ipallocations.c.port_id)
                                          .where(ipallocations.c.subnet_id == subnet_id).distinct())]
    for port_id in touched:
        standard.bump(conn, ports, port_id)
        standard.emit(conn, "port", port_id, "update", network_id=row.network_id)
    rows.delete_subnets(conn, [row])
    secgroups.announce_members(conn, touched)
    standard.bump(conn, networks, row.network_id)
    dhcp.reconcile_network(conn, core, row.network_id)


def view(conn: Connection, rows: Sequence[Any], ctx: RequestContext) -> list[dict[str, Any]]:
    tag_map = standard.load_tags(conn, [r.id for r in rows])
    out = []
    for r in rows:
        item = standard.standard_view(r, tag_map)
        item.update({
            "network_id": r.network_id, "ip_version": r.ip_version, "cidr": r.cidr, "gateway_ip": r.gateway_ip,
            "allocation_pools": r.allocation_pools, "dns_nameservers": r.dns_nameservers,
            "host_routes": r.host_routes, "enable_dhcp": r.enable_dhcp, "ipv6_ra_mode": r.ipv6_ra_mode,
            "ipv6_address_mode": r.ipv6_address_mode, "subnetpool_id": r.subnetpool_id,
            "segment_id": r.segment_id, "service_types": r.service_types,
        })
        out.append(item)
    return out
