"""Routers: external gateway (a network:router_gateway port), interfaces (network:router_interface ports),
extra routes, and their API view. Router ports are ordinary ports, written through ``services/rows``."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, delete, insert, select, true

from neutrino.context import RequestContext
from neutrino.db.engine import lock_row
from neutrino.db.schema import ipallocations, networks, ports, routers, subnets
from neutrino.errors import BadRequest, Conflict, InUse, NotFound, PolicyNotAuthorized
from neutrino.intent.model import DeviceOwner
from neutrino.services import addresses, quotas, rows, standard
from neutrino.services import networks as net_service
from neutrino.services import subnets as subnet_service
from neutrino.services.core import Core, guard_change, require_writer

COLUMNS = {**standard.COLUMNS, "admin_state_up": "admin_state_up", "status": "status"}
INTERFACE = DeviceOwner.ROUTER_INTERFACE
GATEWAY = DeviceOwner.ROUTER_GATEWAY


def scope(ctx: RequestContext) -> Any:
    return true() if ctx.is_admin else routers.c.project_id == ctx.project_id


def fetch(conn: Connection, ctx: RequestContext, router_id: str) -> Any:
    return standard.fetch_visible(conn, routers, scope(ctx), "Router", router_id)


def fetch_locked(conn: Connection, ctx: RequestContext, router_id: str) -> Any:
    """The router read under its row lock, for a read-modify-write of it (its routes, its gateway, its
    interfaces). Lock first, then read: under READ COMMITTED a row read before the lock may be one a
    concurrent writer is replacing, and what that writer did would be lost. (SQLite: writers are
    serialized already, ``lock_row`` is a no-op and the read is the latest.)"""
    lock_row(conn, routers, router_id)
    return fetch(conn, ctx, router_id)


def bad_router(reason: str) -> BadRequest:
    return BadRequest(f"Bad router request: {reason}.", type="BadRequest")


def _router_ports(conn: Connection, router_id: str, owner: str) -> list[Any]:
    return list(conn.execute(select(ports.c.id, ports.c.network_id, ports.c.binding_host_id, ports.c.project_id)
                             .where(ports.c.device_id == router_id, ports.c.device_owner == owner)).all())


def _port_subnets(conn: Connection, port_ids: Sequence[str]) -> list[Any]:
    """(port_id, subnet_id, ip_address, cidr) of these ports' addresses."""
    if not port_ids:
        return []
    return list(conn.execute(select(ipallocations.c.port_id, ipallocations.c.subnet_id, ipallocations.c.ip_address,
                                    subnets.c.cidr).join(subnets, subnets.c.id == ipallocations.c.subnet_id)
                             .where(ipallocations.c.port_id.in_(list(port_ids)))
                             .order_by(ipallocations.c.port_id, ipallocations.c.position)).all())


def _connected_cidrs(conn: Connection, router_id: str) -> list[tuple[str, Any]]:
    """(subnet_id, network) of every subnet the router has an address on (interfaces and gateway)."""
    ids = [p.id for p in _router_ports(conn, router_id, INTERFACE) + _router_ports(conn, router_id, GATEWAY)]
    return [(r.subnet_id, ipaddress.ip_network(r.cidr)) for r in _port_subnets(conn, ids)]


def _check_routes(conn: Connection, router_id: str, routes: list[dict[str, str]]) -> list[dict[str, str]]:
    connected = [net for _, net in _connected_cidrs(conn, router_id)]
    out: list[dict[str, str]] = []
    for r in routes:
        hop = ipaddress.ip_address(r["nexthop"])
        if not any(hop in net for net in connected):
            raise BadRequest(f"Invalid format for routes: {r}, the nexthop is not connected with router",
                             type="InvalidRoutes")
        item = {"destination": r["destination"], "nexthop": r["nexthop"]}
        if item not in out:
            out.append(item)
    return out


def _gateway_port(conn: Connection, router_id: str) -> Any:
    found = _router_ports(conn, router_id, GATEWAY)
    return found[0] if found else None


def check_gateway_policy(ctx: RequestContext, info: dict[str, Any] | None, action: str) -> None:
    """Neutron's default policy on ``external_gateway_info``: members set its network; only admins give
    ``enable_snat`` or ``external_fixed_ips`` (any value: the rule applies to the key being there)."""
    if ctx.is_admin or not info:
        return
    for key in ("enable_snat", "external_fixed_ips"):
        if key in info:
            raise PolicyNotAuthorized(f"rule:{action}:external_gateway_info:{key}")


def _set_gateway(core: Core, conn: Connection, ctx: RequestContext, router: Any, info: dict[str, Any] | None,
                 action: str) -> dict[str, Any]:
    """Replace the router's gateway by ``info`` (None: remove it); returns the router columns to change."""
    check_gateway_policy(ctx, info, action)
    current = _gateway_port(conn, router.id)
    from neutrino.services import floatingips
    if current is not None and (not info or info.get("network_id") != current.network_id):
        floatingips.check_gateway_removal(conn, router.id)
    if not info or not info.get("network_id"):
        if current is not None:
            if _routes_via(conn, router.id, current.id, router.routes):
                raise InUse(f"Router {router.id} has routes through its gateway", type="RouterInterfaceInUseByRoute")
            rows.delete_ports(conn, [current])
        return {"gw_network_id": "", "enable_snat": True}
    enable_snat = info.get("enable_snat", True)
    fixed = info.get("external_fixed_ips")
    net = conn.execute(select(networks).where(networks.c.id == info["network_id"])).first()
    if net is None:
        raise NotFound(f"Network {info['network_id']} could not be found.", type="NetworkNotFound")
    if not net.router_external:
        raise BadRequest(f"Bad router request: Network {net.id} is not an external network.", type="BadRequest")
    if current is not None and current.network_id == net.id and not fixed:
        return {"gw_network_id": net.id, "enable_snat": enable_snat}
    if current is not None:
        rows.delete_ports(conn, [current])
    _new_port(core, conn, router, net.id, fixed or None, GATEWAY, project_id="")
    return {"gw_network_id": net.id, "enable_snat": enable_snat}


def _routes_via(conn: Connection, router_id: str, port_id: str, routes: list[dict[str, str]]) -> bool:
    cidrs = [ipaddress.ip_network(r.cidr) for r in _port_subnets(conn, [port_id])]
    return any(ipaddress.ip_address(r["nexthop"]) in c for r in routes for c in cidrs)


def _new_port(core: Core, conn: Connection, router: Any, network_id: str, fixed: list[dict[str, Any]] | None,
              owner: str, *, project_id: str | None = None) -> str:
    from neutrino.services import ports as port_service  # ports imports nothing of ours; avoid a cycle anyway
    lock_row(conn, networks, network_id)
    mac = port_service.unique_mac(conn, core, network_id, None)
    ips = addresses.allocate(core, conn, network_id, fixed, mac, owner)
    if not ips:
        raise BadRequest(f"Bad router request: No IPs available on network {network_id}.", type="BadRequest")
    from neutrino.services import l3
    host = l3.host_of(conn, router.id)  # where the router's L3 agent runs wires it
    return rows.insert_port(conn, {
        "project_id": router.project_id if project_id is None else project_id, "name": "", "description": "",
        "network_id": network_id, "mac_address": mac, "admin_state_up": True, "status": "DOWN",
        "device_id": router.id, "device_owner": owner, "port_security_enabled": False,
        "allowed_address_pairs": [], "extra_dhcp_opts": [], "binding_host_id": host,
        "binding_vnic_type": "normal", "binding_profile": {}, **port_service.binding(conn, core, host)}, ips)


def create(core: Core, conn: Connection, ctx: RequestContext, data: dict[str, Any]) -> str:
    require_writer(ctx, "create_router")
    quotas.check(conn, core.cfg.quotas, data["project_id"], "router")
    router_id = str(uuid.uuid4())
    values = standard.stamp_new({
        "id": router_id, "project_id": data["project_id"], "name": data["name"],
        "description": data["description"], "admin_state_up": data["admin_state_up"], "status": "ACTIVE",
        "gw_network_id": "", "enable_snat": True, "routes": []})
    conn.execute(insert(routers).values(**values))
    row = conn.execute(select(routers).where(routers.c.id == router_id)).one()
    gw = _set_gateway(core, conn, ctx, row, data.get("external_gateway_info"), "create_router")
    conn.execute(routers.update().where(routers.c.id == router_id).values(**gw))
    from neutrino.services import l3
    l3.schedule_router(conn, core, router_id)
    standard.emit(conn, "router", router_id, "create")
    return router_id


def update(core: Core, conn: Connection, ctx: RequestContext, router_id: str, data: dict[str, Any],
           if_match: str | None) -> None:
    row = fetch_locked(conn, ctx, router_id)
    guard_change(ctx, row.project_id, "update_router", row.revision_number, if_match)
    values = standard.columns_of(data, COLUMNS)
    gateway_changed = False
    if "external_gateway_info" in data:
        info = data["external_gateway_info"]
        check_gateway_policy(ctx, info, "update_router")  # also when it would change nothing, as Neutron
        same = (info and row.gw_network_id == info.get("network_id") and "external_fixed_ips" not in info
                and info.get("enable_snat", True) == row.enable_snat) or (not info and not row.gw_network_id)
        if not same:
            values.update(_set_gateway(core, conn, ctx, row, info, "update_router"))
            gateway_changed = True
    if "routes" in data:
        values["routes"] = _check_routes(conn, router_id, data["routes"])
    values = standard.changed(row, values)
    if not values and not gateway_changed:
        return
    standard.bump(conn, routers, router_id, values)
    standard.emit(conn, "router", router_id, "update")


def delete_(core: Core, conn: Connection, ctx: RequestContext, router_id: str, if_match: str | None) -> None:
    row = fetch_locked(conn, ctx, router_id)  # no interface added meanwhile
    guard_change(ctx, row.project_id, "delete_router", row.revision_number, if_match)
    if _router_ports(conn, router_id, INTERFACE):
        raise InUse(f"Router {router_id} still has ports", type="RouterInUse")
    from neutrino.services import l3
    l3.router_deleted(conn, router_id)
    rows.delete_ports(conn, _router_ports(conn, router_id, GATEWAY))
    standard.delete_tags(conn, [router_id])
    conn.execute(delete(routers).where(routers.c.id == router_id))
    standard.emit(conn, "router", router_id, "delete")


def view(conn: Connection, rows_: Sequence[Any], ctx: RequestContext) -> list[dict[str, Any]]:
    ids = [r.id for r in rows_]
    tag_map = standard.load_tags(conn, ids)
    gw_ports: dict[str, list[dict[str, str]]] = {}
    if ids:
        for chunk in (ids[i:i + standard.CHUNK] for i in range(0, len(ids), standard.CHUNK)):
            found = conn.execute(select(ports.c.device_id, ipallocations.c.subnet_id, ipallocations.c.ip_address)
                                 .join(ipallocations, ipallocations.c.port_id == ports.c.id)
                                 .where(ports.c.device_id.in_(chunk), ports.c.device_owner == GATEWAY)
                                 .order_by(ipallocations.c.position))
            for rid, sid, ip in found:
                gw_ports.setdefault(rid, []).append({"subnet_id": sid, "ip_address": ip})
    out = []
    for r in rows_:
        item = standard.standard_view(r, tag_map)
        gw = None
        if r.gw_network_id:
            gw = {"network_id": r.gw_network_id, "enable_snat": r.enable_snat,
                  "external_fixed_ips": gw_ports.get(r.id, [])}
        item.update({"admin_state_up": r.admin_state_up, "status": r.status, "external_gateway_info": gw,
                     "routes": list(r.routes), "distributed": False, "ha": False,
                     "availability_zone_hints": [], "availability_zones": [], "flavor_id": None})
        out.append(item)
    return out


# -- interfaces ----------------------------------------------------------------------------------------


def _interface_info(conn: Connection, router: Any, port_id: str) -> dict[str, Any]:
    port = conn.execute(select(ports.c.network_id).where(ports.c.id == port_id)).one()
    subnet_ids = [r.subnet_id for r in _port_subnets(conn, [port_id])]
    return {"id": router.id, "tenant_id": router.project_id, "project_id": router.project_id,
            "port_id": port_id, "network_id": port.network_id, "subnet_id": subnet_ids[0] if subnet_ids else None,
            "subnet_ids": subnet_ids}


def _body_ids(body: Any) -> tuple[str | None, str | None]:
    if not isinstance(body, dict):
        raise BadRequest("Body must be a JSON object.", type="HTTPBadRequest")
    subnet_id, port_id = body.get("subnet_id"), body.get("port_id")
    if subnet_id is not None and port_id is not None:
        raise bad_router("Cannot specify both subnet-id and port-id")
    if subnet_id is None and port_id is None:
        raise bad_router("Either subnet_id or port_id must be specified")
    for value in (subnet_id, port_id):
        if value is not None and not isinstance(value, str):
            raise BadRequest(f"Invalid input: '{value}' is not a valid UUID", type="HTTPBadRequest")
    return subnet_id, port_id


def _check_overlap(conn: Connection, router_id: str, new_subnets: Sequence[Any]) -> None:
    existing = _port_subnets(conn, [p.id for p in _router_ports(conn, router_id, INTERFACE)])
    for sub in new_subnets:
        net = ipaddress.ip_network(sub.cidr)
        for e in existing:
            if e.subnet_id == sub.id:
                raise bad_router(f"Router already has a port on subnet {sub.id}")
            other = ipaddress.ip_network(e.cidr)
            if other.version == net.version and other.overlaps(net):
                raise bad_router(f"Cidr {sub.cidr} of subnet {sub.id} overlaps with cidr {e.cidr} of subnet "
                                 f"{e.subnet_id}")


def add_interface(core: Core, conn: Connection, ctx: RequestContext, router_id: str, body: Any) -> dict[str, Any]:
    router = fetch_locked(conn, ctx, router_id)
    guard_change(ctx, router.project_id, "add_router_interface", router.revision_number, None)
    subnet_id, port_id = _body_ids(body)
    if subnet_id is not None:
        sub = subnet_service.fetch(conn, ctx, subnet_id)
        net = net_service.fetch(conn, ctx, sub.network_id)
        if not ctx.is_admin and net.project_id != ctx.project_id and not net.shared:
            raise PolicyNotAuthorized("rule:add_router_interface")
        if not sub.gateway_ip:
            raise bad_router("Subnet for router interface must have a gateway IP")
        _check_overlap(conn, router_id, [sub])
        taken = conn.execute(select(ports.c.device_id, ports.c.device_owner).join(
            ipallocations, ipallocations.c.port_id == ports.c.id).where(
            ipallocations.c.subnet_id == sub.id, ipallocations.c.ip_address == sub.gateway_ip)).first()
        if taken is not None:
            raise Conflict(f"IP address {sub.gateway_ip} already allocated in subnet {sub.id}",
                           type="IpAddressAlreadyAllocated")
        new_id = _new_port(core, conn, router, sub.network_id, [{"subnet_id": sub.id, "ip_address": sub.gateway_ip}],
                           INTERFACE)
    else:
        assert port_id is not None
        from neutrino.services import ports as port_service
        port = port_service.fetch(conn, ctx, port_id)
        if port.device_owner == INTERFACE and port.device_id == router_id:
            raise bad_router(f"Router already has a port on subnet of port {port_id}")
        if port.device_id or port.device_owner:
            raise InUse(f"Unable to complete operation on port {port_id} for network {port.network_id}. "
                        f"Port already has an attached device {port.device_id}.", type="PortInUse")
        subs = _port_subnets(conn, [port_id])
        if not subs:
            raise bad_router("Router port must have at least one fixed IP")
        if len({s.subnet_id for s in subs}) != len(subs):
            raise bad_router("Cannot have multiple IPv4 subnets on router port")
        sub_rows = conn.execute(select(subnets.c.id, subnets.c.cidr).where(
            subnets.c.id.in_([s.subnet_id for s in subs]))).all()
        _check_overlap(conn, router_id, sub_rows)
        standard.bump(conn, ports, port_id, {"device_id": router_id, "device_owner": INTERFACE})
        from neutrino.services import secgroups
        left = secgroups.of_ports(conn, [port_id]).get(port_id, [])
        if left:  # a router's port is the cloud's own device: in no group (as Neutron's trusted ports)
            secgroups.set_for_port(conn, port_id, [])
            secgroups.announce(conn, left)
        standard.emit(conn, "port", port_id, "update", network_id=port.network_id,
                      host=port.binding_host_id or None)
        from neutrino.services import l3
        l3.bind_ports(conn, core, router_id, l3.host_of(conn, router_id))  # now the router's: its host
        new_id = port_id
    standard.bump(conn, routers, router_id)
    standard.emit(conn, "router", router_id, "update")
    return _interface_info(conn, router, new_id)


def remove_interface(core: Core, conn: Connection, ctx: RequestContext, router_id: str,
                     body: Any) -> dict[str, Any]:
    router = fetch_locked(conn, ctx, router_id)  # its routes, checked below, as they are now
    guard_change(ctx, router.project_id, "remove_router_interface", router.revision_number, None)
    subnet_id, port_id = _body_ids(body)
    mine = _router_ports(conn, router_id, INTERFACE)
    by_subnet = _port_subnets(conn, [p.id for p in mine])
    if port_id is not None:
        target = [p for p in mine if p.id == port_id]
        if not target:
            raise NotFound(f"Router {router_id} does not have an interface with id {port_id}",
                           type="RouterInterfaceNotFound")
        if subnet_id is not None and not any(s.port_id == port_id and s.subnet_id == subnet_id for s in by_subnet):
            raise Conflict(f"Subnet {subnet_id} is not on port {port_id}", type="SubnetMismatchForPort")
    else:
        ids = {s.port_id for s in by_subnet if s.subnet_id == subnet_id}
        target = [p for p in mine if p.id in ids]
        if not target:
            raise NotFound(f"Router {router_id} has no interface on subnet {subnet_id}",
                           type="RouterInterfaceNotFoundForSubnet")
    port = target[0]
    if _routes_via(conn, router_id, port.id, router.routes):
        raise InUse(f"Router interface for subnet on router {router_id} cannot be deleted, as it is required "
                    "by one or more routes.", type="RouterInterfaceInUseByRoute")
    info = _interface_info(conn, router, port.id)
    from neutrino.services import floatingips
    floatingips.check_interface_removal(conn, router_id, [s.subnet_id for s in by_subnet if s.port_id == port.id])
    rows.delete_ports(conn, [port])
    standard.bump(conn, routers, router_id)
    standard.emit(conn, "router", router_id, "update")
    return info


def change_routes(core: Core, conn: Connection, ctx: RequestContext, router_id: str, body: Any,
                  add: bool) -> None:
    """add_extraroutes / remove_extraroutes: one atomic change of the router's routes (extraroute-atomic):
    applied to the routes the router has once this transaction holds it, so concurrent calls all count."""
    router = fetch_locked(conn, ctx, router_id)
    guard_change(ctx, router.project_id, "update_router", router.revision_number, None)
    current: list[dict[str, str]] = list(router.routes)
    given = body
    wanted = current + [r for r in given if r not in current] if add else [r for r in current if r not in given]
    wanted = _check_routes(conn, router_id, wanted)
    if wanted != current:
        standard.bump(conn, routers, router_id, {"routes": wanted})
        standard.emit(conn, "router", router_id, "update")


def has_gateway_on(conn: Connection, network_id: str) -> bool:
    return conn.execute(select(routers.c.id).where(routers.c.gw_network_id == network_id).limit(1)).first() \
        is not None
