"""Floating IPs: an address of an external network (held by a network:floatingip port, so IPAM never
hands it out twice), optionally mapped 1:1 to a fixed IP of a port behind a router with a gateway there."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, delete, insert, select, true

from neutrino.context import RequestContext
from neutrino.db.engine import lock_row
from neutrino.db.schema import agents, floatingips, ipallocations, networks, ports, router_bindings, routers
from neutrino.errors import BadRequest, Conflict, InUse, NotFound, PolicyNotAuthorized
from neutrino.intent.model import AgentType, DeviceOwner
from neutrino.services import addresses, quotas, rows, standard
from neutrino.services.core import Core, guard_change, require_writer

COLUMNS = {**standard.COLUMNS, **{a: a for a in (
    "floating_network_id", "floating_ip_address", "port_id", "fixed_ip_address", "router_id", "status")}}


def scope(ctx: RequestContext) -> Any:
    return true() if ctx.is_admin else floatingips.c.project_id == ctx.project_id


def fetch(conn: Connection, ctx: RequestContext, fip_id: str) -> Any:
    return standard.fetch_visible(conn, floatingips, scope(ctx), "FloatingIP", fip_id)


def _bad(reason: str) -> BadRequest:
    return BadRequest(f"Bad floatingip request: {reason}.", type="BadRequest")


def _association(conn: Connection, ctx: RequestContext, fip_id: str, network_id: str, port_id: str,
                 fixed_ip: str | None) -> dict[str, Any]:
    """The columns of an association of the floating IP with ``port_id`` (and one of its fixed IPs)."""
    from neutrino.services import ports as port_service
    port = port_service.fetch(conn, ctx, port_id)
    if port.network_id == network_id:
        raise _bad(f"Port {port_id} is on the external network {network_id}")
    held = conn.execute(select(ipallocations.c.subnet_id, ipallocations.c.ip_address)
                        .where(ipallocations.c.port_id == port_id).order_by(ipallocations.c.position)).all()
    if fixed_ip is not None:
        chosen = [h for h in held if h.ip_address == fixed_ip]
        if not chosen:
            raise _bad(f"Port {port_id} does not have fixed ip {fixed_ip}")
    else:
        chosen = [h for h in held if ipaddress.ip_address(h.ip_address).version == 4]
        if not chosen:
            raise _bad(f"Port {port_id} does not have any IPv4 address")
        if len(chosen) > 1:
            raise _bad(f"Port {port_id} has multiple fixed IPv4 addresses. Must provide a specific IPv4 "
                       "address when assigning a floating IP")
    subnet_id, ip = chosen[0].subnet_id, chosen[0].ip_address
    if ipaddress.ip_address(ip).version != 4:
        raise _bad(f"Cannot add floating IP to port {port_id} that has no fixed IPv4 addresses")
    router = _router_between(conn, network_id, subnet_id)
    if router is None:
        raise NotFound(f"External network {network_id} is not reachable from subnet {subnet_id}.  Therefore, "
                       f"cannot associate Port {port_id} with a Floating IP.",
                       type="ExternalGatewayForFloatingIPNotFound")
    other = conn.execute(select(floatingips.c.id).where(
        floatingips.c.port_id == port_id, floatingips.c.fixed_ip_address == ip,
        floatingips.c.floating_network_id == network_id, floatingips.c.id != fip_id)).first()
    if other is not None:
        raise Conflict(f"Cannot associate floating IP with port {port_id} using fixed IP {ip}, as that fixed IP "
                       f"already has a floating IP on external network {network_id}.",
                       type="FloatingIPPortAlreadyAssociated")
    return {"port_id": port_id, "fixed_ip_address": ip, "router_id": router.id}


def _router_between(conn: Connection, network_id: str, subnet_id: str) -> Any:
    """The router with a gateway on ``network_id`` and an interface on ``subnet_id``, held (row lock) so
    that neither goes while the association is made; read again once held (READ COMMITTED: a concurrent
    removal that committed meanwhile is seen)."""
    held: set[str] = set()
    while True:
        found = conn.execute(
            select(routers.c.id).join(ports, ports.c.device_id == routers.c.id)
            .join(ipallocations, ipallocations.c.port_id == ports.c.id)
            .where(routers.c.gw_network_id == network_id, ports.c.device_owner == DeviceOwner.ROUTER_INTERFACE,
                   ipallocations.c.subnet_id == subnet_id).order_by(routers.c.id)).first()
        if found is None or found.id in held:
            return found
        lock_row(conn, routers, found.id)
        held.add(found.id)


NO_ASSOCIATION = {"port_id": None, "fixed_ip_address": None, "router_id": None}


def create(core: Core, conn: Connection, ctx: RequestContext, data: dict[str, Any]) -> str:
    require_writer(ctx, "create_floatingip")
    if data.get("floating_ip_address") is not None and not ctx.is_admin:
        raise PolicyNotAuthorized("rule:create_floatingip:floating_ip_address")
    quotas.check(conn, core.cfg.quotas, data["project_id"], "floatingip")
    net = conn.execute(select(networks).where(networks.c.id == data["floating_network_id"])).first()
    if net is None:
        raise NotFound(f"Network {data['floating_network_id']} could not be found.", type="NetworkNotFound")
    if not net.router_external:
        raise _bad(f"The network {net.id} is not a valid external network")
    fip_id = str(uuid.uuid4())
    assoc = dict(NO_ASSOCIATION)
    if data.get("port_id"):
        assoc = _association(conn, ctx, fip_id, net.id, data["port_id"], data.get("fixed_ip_address"))
    elif data.get("fixed_ip_address"):
        raise _bad("fixed_ip_address cannot be specified without a port_id")
    from neutrino.services import ports as port_service
    lock_row(conn, networks, net.id)
    mac = port_service.unique_mac(conn, core, net.id, None)
    wanted: list[dict[str, Any]] | None = None
    if data.get("floating_ip_address") or data.get("subnet_id"):
        entry = {}
        if data.get("floating_ip_address"):
            entry["ip_address"] = data["floating_ip_address"]
        if data.get("subnet_id"):
            entry["subnet_id"] = data["subnet_id"]
        wanted = [entry]
    ips = addresses.allocate(core, conn, net.id, wanted, mac, DeviceOwner.FLOATINGIP)
    v4 = [(s, ip) for s, ip in ips if ipaddress.ip_address(ip).version == 4]
    if not v4:
        raise _bad(f"No IPv4 address available on external network {net.id}")
    port_id = rows.insert_port(conn, {
        "project_id": "", "name": "", "description": "", "network_id": net.id, "mac_address": mac,
        "admin_state_up": True, "status": "N/A", "device_id": fip_id, "device_owner": DeviceOwner.FLOATINGIP,
        "port_security_enabled": False, "allowed_address_pairs": [], "extra_dhcp_opts": [],
        "binding_host_id": "", "binding_vnic_type": "normal", "binding_profile": {},
        "binding_vif_type": "unbound", "binding_vif_details": {}}, v4[:1])
    conn.execute(insert(floatingips).values(**standard.stamp_new({
        "id": fip_id, "project_id": data["project_id"], "name": "", "description": data["description"],
        "floating_network_id": net.id, "floating_ip_address": v4[0][1], "floating_port_id": port_id,
        "status": "DOWN", **assoc})))
    _touch_router(conn, assoc["router_id"])
    standard.emit(conn, "floatingip", fip_id, "create", network_id=net.id)
    return fip_id


def _touch_router(conn: Connection, router_id: str | None) -> None:
    if router_id:
        standard.bump(conn, routers, router_id)
        standard.emit(conn, "router", router_id, "update")


def update(core: Core, conn: Connection, ctx: RequestContext, fip_id: str, data: dict[str, Any],
           if_match: str | None) -> None:
    row = fetch(conn, ctx, fip_id)
    guard_change(ctx, row.project_id, "update_floatingip", row.revision_number, if_match)
    values = standard.columns_of({k: v for k, v in data.items() if k in ("description",)}, COLUMNS)
    if "port_id" in data:
        if data["port_id"]:
            values.update(_association(conn, ctx, fip_id, row.floating_network_id, data["port_id"],
                                       data.get("fixed_ip_address")))
        else:
            values.update(NO_ASSOCIATION)
        if values.get("port_id") != row.port_id:
            values["status"] = "DOWN"
    elif data.get("fixed_ip_address"):
        raise _bad("fixed_ip_address cannot be specified without a port_id")
    values = standard.changed(row, values)
    if not values:
        return
    standard.bump(conn, floatingips, fip_id, values)
    for rid in {row.router_id, values.get("router_id", row.router_id)}:
        _touch_router(conn, rid)
    standard.emit(conn, "floatingip", fip_id, "update", network_id=row.floating_network_id)


def delete_(core: Core, conn: Connection, ctx: RequestContext, fip_id: str, if_match: str | None) -> None:
    row = fetch(conn, ctx, fip_id)
    guard_change(ctx, row.project_id, "delete_floatingip", row.revision_number, if_match)
    conn.execute(delete(floatingips).where(floatingips.c.id == fip_id))
    rows.delete_ports(conn, conn.execute(select(ports.c.id, ports.c.network_id, ports.c.binding_host_id)
                                         .where(ports.c.id == row.floating_port_id)).all())
    standard.delete_tags(conn, [fip_id])
    _touch_router(conn, row.router_id)
    standard.emit(conn, "floatingip", fip_id, "delete", network_id=row.floating_network_id)


def view(conn: Connection, rows_: Sequence[Any], ctx: RequestContext) -> list[dict[str, Any]]:
    tag_map = standard.load_tags(conn, [r.id for r in rows_])
    out = []
    for r in rows_:
        item = standard.standard_view(r, tag_map)
        item.pop("name", None)
        item.update({"floating_network_id": r.floating_network_id, "floating_ip_address": r.floating_ip_address,
                     "port_id": r.port_id, "fixed_ip_address": r.fixed_ip_address, "router_id": r.router_id,
                     "status": r.status})
        out.append(item)
    return out


def of_host(conn: Connection, host: str) -> list[str]:
    """The floating IPs on routers scheduled to the L3 agent of ``host``."""
    hosted = select(router_bindings.c.router_id).join(agents, agents.c.id == router_bindings.c.agent_id).where(
        agents.c.host == host, agents.c.agent_type == AgentType.L3.value)
    return [r[0] for r in conn.execute(select(floatingips.c.id).where(floatingips.c.router_id.in_(hosted)))]


def set_floatingip_status(conn: Connection, fip_id: str, status: str) -> bool:
    """The L3 agent reports a floating IP applied (ACTIVE) or not (DOWN); True when it changed."""
    row = conn.execute(select(floatingips.c.status).where(floatingips.c.id == fip_id)).first()
    if row is None or row.status == status:
        return False
    standard.bump(conn, floatingips, fip_id, {"status": status})
    return True


def check_interface_removal(conn: Connection, router_id: str, subnet_ids: Sequence[str]) -> None:
    """An interface whose subnet carries floating IPs through this router cannot go."""
    used = conn.execute(select(floatingips.c.id).join(ipallocations, (ipallocations.c.port_id == floatingips.c.port_id)
                                                      & (ipallocations.c.ip_address == floatingips.c.fixed_ip_address))
                        .where(floatingips.c.router_id == router_id,
                               ipallocations.c.subnet_id.in_(list(subnet_ids))).limit(1)).first()
    if used is not None:
        raise InUse(f"Router interface for subnet {subnet_ids[0]} on router {router_id} cannot be deleted, as it "
                    "is required by one or more floating IPs.", type="RouterInterfaceInUseByFloatingIP")


def check_gateway_removal(conn: Connection, router_id: str) -> None:
    if conn.execute(select(floatingips.c.id).where(floatingips.c.router_id == router_id).limit(1)).first():
        raise InUse(f"Gateway cannot be updated for router {router_id}, since a gateway to external network is "
                    "required by one or more floating IPs.", type="RouterExternalGatewayInUseByFloatingIp")
