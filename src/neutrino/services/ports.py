"""Ports: MAC and fixed-IP allocation, binding, port security (security groups, address pairs), DHCP options,
and their API view."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, or_, select, true

from neutrino.context import RequestContext
from neutrino.db.engine import lock_row
from neutrino.db.schema import floatingips, ipallocations, networks, ports, routers
from neutrino.errors import BadRequest, Conflict, InUse, PolicyNotAuthorized
from neutrino.intent.model import NETWORK_OWNER_PREFIX, AgentType, DeviceOwner
from neutrino.ipam.macs import random_mac
from neutrino.services import addresses, agents, quotas, rows, secgroups, standard
from neutrino.services import networks as net_service
from neutrino.services.core import Core, guard_change, require_writer
from neutrino.services.listing import invalid

VIF_DETAILS = {"port_filter": True, "connectivity": "l2"}


COLUMNS = {**standard.COLUMNS, **{attr: attr.replace(":", "_") for attr in (
    "network_id", "admin_state_up", "status", "mac_address", "device_id", "device_owner", "port_security_enabled",
    "allowed_address_pairs", "extra_dhcp_opts", "binding:host_id", "binding:vnic_type", "binding:vif_type",
    "binding:vif_details", "binding:profile")}}
MAX_SUBSTR_FILTERS = 64


def _on_fixed_ips(values: list[str]) -> Any:
    """``fixed_ips=ip_address=X`` / ``subnet_id=Y`` / ``ip_address_substr=Z`` as Neutron reads them: ports
    with one allocation matching every given key, repeated values of one key OR'd (IN, however many)."""
    by_key: dict[str, list[str]] = {}
    for value in values:
        key, sep, want = value.partition("=")
        if not sep or key not in ("ip_address", "subnet_id", "ip_address_substr"):
            raise invalid("fixed_ips", f"'{value}' is not of the form ip_address=... or subnet_id=...")
        by_key.setdefault(key, []).append(want)
    conds: list[Any] = []
    if "ip_address" in by_key:
        conds.append(ipallocations.c.ip_address.in_(by_key["ip_address"]))
    if "subnet_id" in by_key:
        conds.append(ipallocations.c.subnet_id.in_(by_key["subnet_id"]))
    if "ip_address_substr" in by_key:
        if len(by_key["ip_address_substr"]) > MAX_SUBSTR_FILTERS:
            raise invalid("fixed_ips", f"at most {MAX_SUBSTR_FILTERS} ip_address_substr values")
        conds.append(or_(*(ipallocations.c.ip_address.contains(want, autoescape=True)
                           for want in by_key["ip_address_substr"])))
    return ports.c.id.in_(select(ipallocations.c.port_id).where(*conds))


FILTERS = {"fixed_ips": _on_fixed_ips, "security_groups": secgroups.port_filter}


def scope(ctx: RequestContext) -> Any:
    if ctx.is_admin:
        return true()
    owned = select(networks.c.id).where(networks.c.project_id == ctx.project_id)
    return (ports.c.project_id == ctx.project_id) | ports.c.network_id.in_(owned)


def fetch(conn: Connection, ctx: RequestContext, port_id: str) -> Any:
    return standard.fetch_visible(conn, ports, scope(ctx), "Port", port_id)


def binding(conn: Connection, core: Core, host: str) -> dict[str, Any]:
    """vif_type/vif_details for a port bound to ``host`` ('' = unbound): a live L2 agent there binds it."""
    if not host:
        return {"binding_vif_type": "unbound", "binding_vif_details": {}}
    if not agents.alive_on_host(conn, core, host, AgentType.L2):
        return {"binding_vif_type": "binding_failed", "binding_vif_details": {}}
    return {"binding_vif_type": "bridge", "binding_vif_details": dict(VIF_DETAILS)}


def unique_mac(conn: Connection, core: Core, network_id: str, wanted: str | None) -> str:
    if wanted is not None:
        if conn.execute(select(ports.c.id).where(ports.c.network_id == network_id,
                                                 ports.c.mac_address == wanted)).first():
            raise Conflict(f"Unable to complete operation for network {network_id}. "
                           f"The mac address {wanted} is in use.", type="MacAddressInUse")
        return wanted
    for _ in range(16):
        mac = random_mac(core.cfg.network.base_mac)
        if not conn.execute(select(ports.c.id).where(ports.c.network_id == network_id,
                                                     ports.c.mac_address == mac)).first():
            return mac
    raise Conflict(f"Unable to generate unique mac on network {network_id}.", type="MacAddressGenerationFailure")


def _check_pairs(port_security: bool, pairs: list[dict[str, Any]]) -> None:
    if pairs and not port_security:
        raise Conflict("Port Security must be enabled in order to have allowed address pairs on a port.",
                       type="AddressPairAndPortSecurityRequired")


def _groups_need_port_security() -> BadRequest:
    return BadRequest("Port security must be enabled and port must have an IP address in order to use "
                      "security groups.", type="PortSecurityAndIPRequiredForSecurityGroups")


def _groups_for_new_port(conn: Connection, data: dict[str, Any], port_security: bool) -> list[str]:
    """Neutron's rules: groups need port security; none given (absent, not ``[]``) on a port with port
    security means the project's default group; the cloud's own devices (network:*) are never in one."""
    given = data.get("security_groups")
    if given and not port_security:
        raise _groups_need_port_security()
    if secgroups.trusted(data["device_owner"]):
        return []
    if given is None:
        return [secgroups.ensure_default(conn, data["project_id"])] if port_security else []
    return secgroups.check_for_port(conn, data["project_id"], given)


def _groups_for_update(conn: Connection, row: Any, data: dict[str, Any], current: list[str]) -> list[str]:
    """The port's groups after an update (validated when given), refusing port security off with groups."""
    port_security = data.get("port_security_enabled", row.port_security_enabled)
    given = data.get("security_groups")
    if given and not port_security:
        raise _groups_need_port_security()
    if secgroups.trusted(data.get("device_owner", row.device_owner)):
        return []  # become (or are) the cloud's own device: in no group
    if given is not None:
        return secgroups.check_for_port(conn, row.project_id, given)
    if current and not port_security:
        raise Conflict("Port has security group associated. Cannot disable port security or IP address until "
                       "security group is removed", type="PortSecurityPortHasSecurityGroup")
    return current


def _check_network_owner_attrs(ctx: RequestContext, net: Any, data: dict[str, Any], action: str) -> None:
    """Neutron's default policy: on a network it does not own (a shared one), a project may not pick
    addresses or a MAC, add address pairs, switch port security off or pose as a network device:
    each of these would let it claim another tenant's traffic."""
    if ctx.is_admin or net.project_id == ctx.project_id:
        return
    if any("ip_address" in f for f in data.get("fixed_ips") or []):
        raise PolicyNotAuthorized(f"rule:{action}:fixed_ips:ip_address")
    if data.get("mac_address") is not None:
        raise PolicyNotAuthorized(f"rule:{action}:mac_address")
    if data.get("allowed_address_pairs"):
        raise PolicyNotAuthorized(f"rule:{action}:allowed_address_pairs")
    if data.get("port_security_enabled") is False:
        raise PolicyNotAuthorized(f"rule:{action}:port_security_enabled")
    if str(data.get("device_owner", "")).startswith(NETWORK_OWNER_PREFIX):
        raise PolicyNotAuthorized(f"rule:{action}:device_owner")


def _merge_dhcp_opts(current: list[dict[str, Any]], given: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Neutron's semantics: options are keyed by (opt_name, ip_version); a given option replaces the one
    with its key, a null opt_value removes it, the others stay."""
    merged = {(o["opt_name"], o.get("ip_version", 4)): o.get("opt_value") for o in current}
    for o in given:
        merged[(o["opt_name"], o.get("ip_version", 4))] = o.get("opt_value")
    return [{"opt_name": name, "opt_value": value, "ip_version": version}
            for (name, version), value in sorted(merged.items()) if value is not None]


def create(core: Core, conn: Connection, ctx: RequestContext, data: dict[str, Any]) -> str:
    require_writer(ctx, "create_port")
    net = net_service.fetch(conn, ctx, data["network_id"])
    net_service.check_can_use(net, ctx, "port")
    _check_network_owner_attrs(ctx, net, data, "create_port")
    quotas.check(conn, core.cfg.quotas, data["project_id"], "port")
    lock_row(conn, networks, net.id)  # allocations on one network queue instead of colliding
    port_security = data.get("port_security_enabled", net.port_security_enabled)
    _check_pairs(port_security, data["allowed_address_pairs"])
    groups = _groups_for_new_port(conn, data, port_security)
    mac = unique_mac(conn, core, net.id, data.get("mac_address"))
    ips = addresses.allocate(core, conn, net.id, data.get("fixed_ips"), mac, data["device_owner"])
    host = data["binding:host_id"]
    port_id = rows.insert_port(conn, {
        "project_id": data["project_id"], "name": data["name"],
        "description": data["description"], "network_id": net.id, "mac_address": mac,
        "admin_state_up": data["admin_state_up"], "status": "DOWN", "device_id": data["device_id"],
        "device_owner": data["device_owner"], "port_security_enabled": port_security,
        "allowed_address_pairs": data["allowed_address_pairs"],
        "extra_dhcp_opts": _merge_dhcp_opts([], data["extra_dhcp_opts"]),
        "binding_host_id": host, "binding_vnic_type": data["binding:vnic_type"],
        "binding_profile": data["binding:profile"], **binding(conn, core, host),
    }, ips)
    if groups:
        secgroups.set_for_port(conn, port_id, groups)
        secgroups.announce(conn, groups)  # new members: every host filtering by these groups
    return port_id


def update(core: Core, conn: Connection, ctx: RequestContext, port_id: str, data: dict[str, Any],
           if_match: str | None) -> None:
    row = fetch(conn, ctx, port_id)
    guard_change(ctx, row.project_id, "update_port", row.revision_number, if_match,
                 owner_only=False)
    net = conn.execute(select(networks.c.id, networks.c.project_id).where(networks.c.id == row.network_id)).one()
    held = {r[0] for r in conn.execute(select(ipallocations.c.ip_address).where(ipallocations.c.port_id == port_id))}
    asked = {k: v for k, v in data.items() if k != "mac_address"}  # MACs: admin only, checked below
    if "fixed_ips" in asked:  # naming the addresses the port holds (to keep them) picks nothing new
        asked["fixed_ips"] = [f for f in asked["fixed_ips"] if f.get("ip_address") not in held]
    _check_network_owner_attrs(ctx, net, asked, "update_port")
    if "extra_dhcp_opts" in data:
        data["extra_dhcp_opts"] = _merge_dhcp_opts(row.extra_dhcp_opts, data["extra_dhcp_opts"])
    if "mac_address" in data and data["mac_address"] != row.mac_address:
        if not ctx.is_admin:
            raise PolicyNotAuthorized("rule:update_port:mac_address")
        data["mac_address"] = unique_mac(conn, core, row.network_id, data["mac_address"])
    values = standard.columns_of(data, COLUMNS)
    _check_pairs(values.get("port_security_enabled", row.port_security_enabled),
                 values.get("allowed_address_pairs", row.allowed_address_pairs))
    current_groups = secgroups.of_ports(conn, [port_id]).get(port_id, [])
    groups = _groups_for_update(conn, row, data, current_groups)
    if "binding:host_id" in data:
        values.update(binding(conn, core, data["binding:host_id"]))
        if data["binding:host_id"] != row.binding_host_id:
            values["status"] = "DOWN"
    values = standard.changed(row, values)
    ips_changed = False
    if "fixed_ips" in data:
        current = [(r.subnet_id, r.ip_address) for r in conn.execute(
            select(ipallocations.c.subnet_id, ipallocations.c.ip_address)
            .where(ipallocations.c.port_id == port_id).order_by(ipallocations.c.position))]
        requested = _keep_current(data["fixed_ips"], current)
        owner = values.get("device_owner", row.device_owner)
        ips = addresses.allocate(core, conn, row.network_id, requested, values.get("mac_address", row.mac_address),
                                 owner, keep=current)
        if ips != current:
            rows.replace_ips(conn, port_id, row.network_id, ips)
            ips_changed = True
    groups_changed = groups != current_groups
    if groups_changed:
        secgroups.set_for_port(conn, port_id, groups)
    if not values and not ips_changed and not groups_changed:
        return
    standard.bump(conn, ports, port_id, values)
    standard.emit(conn, "port", port_id, "update", network_id=row.network_id,
                  host=values.get("binding_host_id", row.binding_host_id) or None)
    if groups_changed or ips_changed or "allowed_address_pairs" in values:
        # The members of these groups (old and new) changed: every host filtering by them must hear it.
        secgroups.announce(conn, set(groups) | set(current_groups))


def _keep_current(requested: list[dict[str, Any]], current: list[tuple[str, str]]) -> list[dict[str, Any]]:
    """A request naming only a subnet the port already has an address on keeps that address (one entry
    per address: a further subnet-only entry asks for a new one)."""
    out = []
    used = {entry["ip_address"] for entry in requested if "ip_address" in entry}
    for entry in requested:
        if "ip_address" not in entry:
            for sid, ip in current:
                if sid == entry.get("subnet_id") and ip not in used:
                    entry = {"subnet_id": sid, "ip_address": ip}
                    used.add(ip)
                    break
        out.append(entry)
    return out


def delete_(core: Core, conn: Connection, ctx: RequestContext, port_id: str, if_match: str | None) -> None:
    row = fetch(conn, ctx, port_id)
    guard_change(ctx, row.project_id, "delete_port", row.revision_number, if_match,
                 owner_only=False)
    if row.device_owner in L3_OWNERS and row.device_id and _l3_device_exists(conn, row.device_owner, row.device_id):
        raise InUse(f"Port {port_id} cannot be deleted directly via the port API: has device owner "
                    f"{row.device_owner}.", type="L3PortInUse")
    rows.delete_ports(conn, [row])


L3_OWNERS = frozenset({DeviceOwner.ROUTER_INTERFACE, DeviceOwner.ROUTER_GATEWAY, DeviceOwner.FLOATINGIP})


def _l3_device_exists(conn: Connection, owner: str, device_id: str) -> bool:
    table = floatingips if owner == DeviceOwner.FLOATINGIP else routers
    return conn.execute(select(table.c.id).where(table.c.id == device_id)).first() is not None


def load_fixed_ips(conn: Connection, ids: Sequence[str]) -> dict[str, list[dict[str, str]]]:
    """fixed_ips of the given ports; a big page reads the table once instead of in IN-chunks."""
    out: dict[str, list[dict[str, str]]] = {}
    cols = (ipallocations.c.port_id, ipallocations.c.subnet_id, ipallocations.c.ip_address)
    order = (ipallocations.c.port_id, ipallocations.c.position)
    if len(ids) > standard.CHUNK:
        wanted = set(ids)
        for pid, sid, ip in conn.execute(select(*cols).order_by(*order)):
            if pid in wanted:
                out.setdefault(pid, []).append({"subnet_id": sid, "ip_address": ip})
        return out
    for pid, sid, ip in conn.execute(select(*cols).where(ipallocations.c.port_id.in_(ids)).order_by(*order)):
        out.setdefault(pid, []).append({"subnet_id": sid, "ip_address": ip})
    return out


def view(conn: Connection, rows: Sequence[Any], ctx: RequestContext) -> list[dict[str, Any]]:
    ids = [r.id for r in rows]
    tag_map = standard.load_tags(conn, ids)
    ips = load_fixed_ips(conn, ids)
    groups = secgroups.of_ports(conn, ids)
    out = []
    for r in rows:
        item = standard.standard_view(r, tag_map)
        item.update({
            "network_id": r.network_id, "admin_state_up": r.admin_state_up, "status": r.status,
            "mac_address": r.mac_address, "fixed_ips": ips.get(r.id, []), "device_id": r.device_id,
            "device_owner": r.device_owner, "security_groups": groups.get(r.id, []),
            "port_security_enabled": r.port_security_enabled, "allowed_address_pairs": [
                {"ip_address": p["ip_address"], "mac_address": p.get("mac_address", r.mac_address)}
                for p in r.allowed_address_pairs],
            "extra_dhcp_opts": [{"opt_name": o["opt_name"], "opt_value": o["opt_value"],
                                 "ip_version": o.get("ip_version", 4)} for o in r.extra_dhcp_opts],
            "binding:vnic_type": r.binding_vnic_type,
        })
        if ctx.is_admin:
            item.update({"binding:host_id": r.binding_host_id, "binding:vif_type": r.binding_vif_type,
                         "binding:vif_details": r.binding_vif_details, "binding:profile": r.binding_profile})
        out.append(item)
    return out


def set_status(conn: Connection, host: str, active: Sequence[str], down: Sequence[str]) -> int:
    """An agent reports which of its ports are wired (ACTIVE) or not (DOWN); returns how many changed."""
    changed = 0
    for status, ids in (("ACTIVE", active), ("DOWN", down)):
        if not ids:
            continue
        rows = conn.execute(select(ports.c.id).where(ports.c.id.in_(list(ids)), ports.c.binding_host_id == host,
                                                     ports.c.status != status)).all()
        for (pid,) in rows:
            standard.bump(conn, ports, pid, {"status": status})
        changed += len(rows)
    return changed


def rebind_host(conn: Connection, core: Core, host: str) -> None:
    """An L2 agent appeared on ``host``: ports that failed to bind there bind now."""
    rows = conn.execute(select(ports.c.id, ports.c.network_id).where(
        ports.c.binding_host_id == host, ports.c.binding_vif_type == "binding_failed")).all()
    for pid, network_id in rows:
        standard.bump(conn, ports, pid, binding(conn, core, host))
        standard.emit(conn, "port", pid, "update", network_id=network_id, host=host)
