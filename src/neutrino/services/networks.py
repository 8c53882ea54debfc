"""Networks: segment allocation, MTU, sharing rules, in-use checks, and their API view."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, func, insert, select, true

from neutrino.config import NetworkConfig
from neutrino.context import RequestContext
from neutrino.db.engine import lock_name
from neutrino.db.schema import networks, ports, subnets
from neutrino.errors import Conflict, Forbidden, InUse, InvalidInput
from neutrino.intent.model import DeviceOwner
from neutrino.services import quotas, rows, standard
from neutrino.services.core import Core, guard_change, require_writer

COLUMNS = {**standard.COLUMNS, "admin_state_up": "admin_state_up", "status": "status", "shared": "shared",
           "router:external": "router_external", "mtu": "mtu", "port_security_enabled": "port_security_enabled",
           "provider:network_type": "network_type", "provider:physical_network": "physical_network",
           "provider:segmentation_id": "segmentation_id", "availability_zone_hints": "availability_zone_hints"}


def _on_subnets(values: list[str]) -> Any:
    return networks.c.id.in_(select(subnets.c.network_id).where(subnets.c.id.in_(values)))


def _on_physnet(values: list[str]) -> Any:
    return networks.c.physical_network.in_(values)


FILTERS = {"subnets": _on_subnets, "provider:physical_network": _on_physnet}


def scope(ctx: RequestContext) -> Any:
    if ctx.is_admin:
        return true()
    # Shared networks and external ones (router:external) are visible to every project.
    return (networks.c.project_id == ctx.project_id) | (networks.c.shared == true()) | \
        (networks.c.router_external == true())


def fetch(conn: Connection, ctx: RequestContext, network_id: str) -> Any:
    return standard.fetch_visible(conn, networks, scope(ctx), "Network", network_id)


def _ranges(specs: Sequence[str]) -> list[tuple[int, int]]:
    """``["1:1000", "2000:3000"]`` -> [(1, 1000), (2000, 3000)]."""
    out = []
    for spec in specs:
        lo, _, hi = spec.partition(":")
        out.append((int(lo), int(hi or lo)))
    return out


def _allocate_vni(conn: Connection, cfg: NetworkConfig) -> int:
    lock_name(conn, "segments")  # concurrent creates (on any server) would draw the same id
    taken_max = conn.execute(select(func.max(networks.c.segmentation_id))
                             .where(networks.c.network_type == "vxlan")).scalar()
    for lo, hi in _ranges(cfg.vni_ranges):
        if taken_max is None or taken_max < lo:
            return lo
        if taken_max < hi:
            return int(taken_max) + 1
    # Above the top is full: look for a hole (rare; only after many deletions).
    used = {r[0] for r in conn.execute(select(networks.c.segmentation_id).where(networks.c.network_type == "vxlan"))}
    for lo, hi in _ranges(cfg.vni_ranges):
        for vni in range(lo, hi + 1):
            if vni not in used:
                return vni
    raise Conflict("Unable to create the network. No tenant network is available for allocation.",
                   type="NoNetworkAvailable")


def _segment(conn: Connection, cfg: NetworkConfig, data: dict[str, Any]) -> tuple[str, str, int]:
    """(network_type, physical_network or '', segmentation_id or 0); '' and 0 keep unique keys working."""
    net_type = data.pop("provider:network_type", None)
    physnet = data.pop("provider:physical_network", None)
    seg = data.pop("provider:segmentation_id", None)
    if net_type is None:
        if physnet is not None or seg is not None:
            raise InvalidInput("provider:network_type required")
        net_type = cfg.tenant_network_type
    if net_type == "vxlan":
        if physnet:
            raise InvalidInput("provider:physical_network specified for vxlan network")
        return "vxlan", "", seg if seg is not None else _allocate_vni(conn, cfg)
    if net_type == "flat":
        if not physnet:
            raise InvalidInput("physical_network required for flat provider network")
        if seg is not None:
            raise InvalidInput("provider:segmentation_id specified for flat network")
        if "*" not in cfg.flat_networks and physnet not in cfg.flat_networks:
            raise InvalidInput(f"physical_network '{physnet}' unknown for flat provider network")
        return "flat", physnet, 0
    if net_type == "vlan":
        if seg is None:
            return ("vlan", *_allocate_vlan(conn, cfg, physnet))
        if not physnet:
            raise InvalidInput("physical_network required for vlan provider network with a segmentation_id")
        if not 1 <= seg <= 4094:
            raise InvalidInput("segmentation_id out of range (1 through 4094)")
        return "vlan", physnet, seg
    return "local", "", 0


def vlan_ranges(cfg: NetworkConfig) -> list[tuple[str, int, int]]:
    """``network.vlan_ranges`` entries ``physnet:min:max`` (a bare ``physnet`` is a provider-only
    physical network with no range to allocate from)."""
    out = []
    for spec in cfg.vlan_ranges:
        physnet, _, rest = spec.partition(":")
        if rest:
            lo, _, hi = rest.partition(":")
            out.append((physnet, int(lo), int(hi or lo)))
    return out


def _allocate_vlan(conn: Connection, cfg: NetworkConfig, physnet: str | None) -> tuple[str, int]:
    """The lowest free VLAN id of the configured ranges (of ``physnet`` when given)."""
    lock_name(conn, "segments")
    ranges = [r for r in vlan_ranges(cfg) if physnet is None or r[0] == physnet]
    if not ranges and physnet is not None:
        raise InvalidInput(f"physical_network '{physnet}' has no VLAN range to allocate a segmentation_id "
                           "from (network.vlan_ranges)")
    for net, lo, hi in ranges:
        used = {r[0] for r in conn.execute(select(networks.c.segmentation_id).where(
            networks.c.network_type == "vlan", networks.c.physical_network == net,
            networks.c.segmentation_id.between(lo, hi)))}
        for vid in range(max(lo, 1), min(hi, 4094) + 1):
            if vid not in used:
                return net, vid
    raise Conflict("Unable to create the network. No tenant network is available for allocation.",
                   type="NoNetworkAvailable")


def _max_mtu(cfg: NetworkConfig, net_type: str) -> int:
    return cfg.default_mtu - cfg.vxlan_overhead if net_type == "vxlan" else cfg.default_mtu


def create(core: Core, conn: Connection, ctx: RequestContext, data: dict[str, Any]) -> str:
    require_writer(ctx, "create_network")
    quotas.check(conn, core.cfg.quotas, data["project_id"], "network")
    cfg = core.cfg.network
    net_type, physnet, seg = _segment(conn, cfg, data)
    max_mtu = _max_mtu(cfg, net_type)
    mtu = data.pop("mtu", None) or max_mtu
    if mtu > max_mtu:
        raise InvalidInput(f"Requested MTU is too big, maximum is {max_mtu}")
    if seg and conn.execute(select(networks.c.id).where(
            networks.c.network_type == net_type, networks.c.physical_network == physnet,
            networks.c.segmentation_id == seg)).first():
        raise Conflict(f"Unable to create the network. The {net_type} segmentation id {seg} is in use.",
                       type="SegmentationIdInUse" if net_type != "flat" else "FlatNetworkInUse")
    if net_type == "flat" and conn.execute(select(networks.c.id).where(
            networks.c.network_type == "flat", networks.c.physical_network == physnet)).first():
        raise Conflict(f"Unable to create the flat network. Physical network {physnet} is in use.",
                       type="FlatNetworkInUse")
    net_id = str(uuid.uuid4())
    values = standard.stamp_new({
        "id": net_id, "project_id": data["project_id"], "name": data["name"],
        "description": data["description"], "admin_state_up": data["admin_state_up"],
        "status": "ACTIVE", "shared": data["shared"], "router_external": data["router:external"],
        "mtu": mtu, "network_type": net_type, "physical_network": physnet, "segmentation_id": seg,
        "port_security_enabled": data["port_security_enabled"],
        "availability_zone_hints": data.get("availability_zone_hints", []),
    })
    conn.execute(insert(networks).values(**values))
    standard.emit(conn, "network", net_id, "create", network_id=net_id)
    return net_id


def update(core: Core, conn: Connection, ctx: RequestContext, network_id: str, data: dict[str, Any],
           if_match: str | None) -> None:
    row = fetch(conn, ctx, network_id)
    guard_change(ctx, row.project_id, "update_network", row.revision_number, if_match)
    values = standard.columns_of(data, COLUMNS)
    if "mtu" in values and values["mtu"] > _max_mtu(core.cfg.network, row.network_type):
        raise InvalidInput(f"Requested MTU is too big, maximum is {_max_mtu(core.cfg.network, row.network_type)}")
    if values.get("mtu", IPV6_MIN_MTU) < IPV6_MIN_MTU and conn.execute(select(subnets.c.id).where(
            subnets.c.network_id == network_id, subnets.c.ip_version == 6).limit(1)).first():
        raise mtu_too_small_for_ipv6(network_id, values["mtu"])
    if values.get("shared") is False and row.shared:
        others = conn.execute(select(ports.c.id).where(
            ports.c.network_id == network_id, ports.c.project_id != row.project_id,
            ports.c.device_owner != DeviceOwner.DHCP).limit(1)).first()
        if others is not None:
            raise InUse(f"Unable to reconfigure sharing settings for network {network_id}. "
                        "Multiple tenants are using it.", type="InvalidSharedSetting")
    if values.get("router_external") is False and row.router_external and conn.execute(
            select(ports.c.id).where(ports.c.network_id == network_id, ports.c.device_owner.in_(
                [DeviceOwner.ROUTER_GATEWAY, DeviceOwner.FLOATINGIP])).limit(1)).first() is not None:
        raise InUse(f"External network {network_id} cannot be updated to be no longer external, because it has "
                    "existing gateway ports or floating IPs.", type="ExternalNetworkInUse")
    values = standard.changed(row, values)
    if not values:
        return
    standard.bump(conn, networks, network_id, values)
    standard.emit(conn, "network", network_id, "update", network_id=network_id)


def delete_(core: Core, conn: Connection, ctx: RequestContext, network_id: str, if_match: str | None) -> None:
    row = fetch(conn, ctx, network_id)
    guard_change(ctx, row.project_id, "delete_network", row.revision_number, if_match)
    busy = conn.execute(select(ports.c.id).where(ports.c.network_id == network_id,
                                                 ports.c.device_owner != DeviceOwner.DHCP).limit(1)).first()
    if busy is not None:
        raise InUse(f"Unable to complete operation on network {network_id}. "
                    "There are one or more ports still in use on the network.", type="NetworkInUse")
    rows.delete_network(conn, network_id)


def view(conn: Connection, rows: Sequence[Any], ctx: RequestContext) -> list[dict[str, Any]]:
    ids = [r.id for r in rows]
    tag_map = standard.load_tags(conn, ids)
    subnet_map: dict[str, list[str]] = {}
    stmt = select(subnets.c.network_id, subnets.c.id).order_by(subnets.c.created_at, subnets.c.id)
    if ids and len(ids) <= standard.CHUNK:
        stmt = stmt.where(subnets.c.network_id.in_(ids))
    if ids:
        wanted = set(ids)
        for net_id, sub_id in conn.execute(stmt):
            if net_id in wanted:
                subnet_map.setdefault(net_id, []).append(sub_id)
    out = []
    for r in rows:
        item = standard.standard_view(r, tag_map)
        item.update({
            "admin_state_up": r.admin_state_up, "status": r.status, "shared": r.shared,
            "router:external": r.router_external, "mtu": r.mtu, "subnets": subnet_map.get(r.id, []),
            "port_security_enabled": r.port_security_enabled,
            "availability_zone_hints": r.availability_zone_hints, "availability_zones": [],
            "ipv4_address_scope": None, "ipv6_address_scope": None, "l2_adjacency": True,
        })
        if ctx.is_admin:
            item["provider:network_type"] = r.network_type
            item["provider:physical_network"] = r.physical_network or None
            item["provider:segmentation_id"] = r.segmentation_id or None
        out.append(item)
    return out


def check_can_use(row: Any, ctx: RequestContext, resource: str) -> None:
    """Creating a subnet or port on a network: own, shared, or admin. An external network of another
    project is visible but not for plugging into (routers use it, through their gateway)."""
    if not (ctx.is_admin or row.project_id == ctx.project_id or row.shared):
        raise Forbidden(f"Tenant {ctx.project_id} not allowed to create {resource} on this network",
                        type="HTTPForbidden")


IPV6_MIN_MTU = 1280


def mtu_too_small_for_ipv6(network_id: str, mtu: int) -> Conflict:
    """IPv6 needs links of at least 1280 bytes (RFC 8200): the kernel refuses IPv6 addresses below."""
    return Conflict(f"Network {network_id} with MTU {mtu} cannot carry IPv6 subnets: IPv6 needs an MTU of at "
                    f"least {IPV6_MIN_MTU}.", type="NetworkMTUSubnetConflict")

