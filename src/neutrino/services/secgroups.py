"""Security groups: each project's ``default`` group (made on first need, race-safe), create/update/delete
with Neutron's refusals, port membership (the ``securitygroupportbindings`` link table), and the
change-feed entries that tell the agents a group changed. Rules are ``services/sgrules``.

Which hosts a group concerns: those with a port in it, and those with a port in a group that names it as
remote (their filters match its members). Its rules, its members' addresses and its existence are what
those hosts' snapshots carry, so every change of one of them is announced (``announce``) to exactly
these hosts — one feed entry per host.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Connection, delete, insert, select, true

from neutrino.context import RequestContext
from neutrino.db.schema import (
    default_security_groups,
    ports,
    securitygroupportbindings,
    securitygrouprules,
    securitygroups,
)
from neutrino.errors import Conflict, InUse, NotFound
from neutrino.intent.model import NETWORK_OWNER_PREFIX
from neutrino.services import quotas, standard
from neutrino.services.core import Core, guard_change, require_writer

COLUMNS = {**standard.COLUMNS, "stateful": "stateful"}
DEFAULT = "default"
links = securitygroupportbindings


def not_found(group_id: str) -> NotFound:
    return NotFound(f"Security group {group_id} does not exist", type="SecurityGroupNotFound")


def scope(ctx: RequestContext) -> Any:
    """Members see their project's groups (no RBAC sharing of groups here); an admin sees all."""
    return true() if ctx.is_admin else securitygroups.c.project_id == ctx.project_id


def fetch(conn: Connection, ctx: RequestContext, group_id: str) -> Any:
    row = conn.execute(select(securitygroups).where(securitygroups.c.id == group_id, scope(ctx))).first()
    if row is None:
        raise not_found(group_id)
    return row


def _in_use(conn: Connection, group_id: str) -> bool:
    return conn.execute(select(links.c.port_id).where(links.c.security_group_id == group_id).limit(1)).first() \
        is not None


def is_default(conn: Connection, group_id: str) -> bool:
    return conn.execute(select(default_security_groups.c.project_id).where(
        default_security_groups.c.security_group_id == group_id)).first() is not None


# -- the feed -----------------------------------------------------------------------------------------
def concerned_hosts(conn: Connection, group_ids: Sequence[str]) -> dict[str, set[str]]:
    """group -> the hosts whose snapshot carries it: a port there is in it, or in a group naming it as
    remote. Two set-based queries, however many ports."""
    out: dict[str, set[str]] = {g: set() for g in group_ids}
    if not group_ids:
        return out
    ids = list(group_ids)
    direct = select(links.c.security_group_id, ports.c.binding_host_id).join(ports, ports.c.id == links.c.port_id) \
        .where(links.c.security_group_id.in_(ids), ports.c.binding_host_id != "").distinct()
    for gid, host in conn.execute(direct):
        out[gid].add(host)
    remote = select(securitygrouprules.c.remote_group_id, ports.c.binding_host_id) \
        .join(links, links.c.security_group_id == securitygrouprules.c.security_group_id) \
        .join(ports, ports.c.id == links.c.port_id) \
        .where(securitygrouprules.c.remote_group_id.in_(ids), ports.c.binding_host_id != "").distinct()
    for gid, host in conn.execute(remote):
        out[gid].add(host)
    return out


def announce(conn: Connection, group_ids: Iterable[str], op: str = "update",
             hosts: dict[str, set[str]] | None = None) -> None:
    """Feed entries for groups whose rules, members or existence changed: one per concerned host (one
    without a host when no host carries the group). ``hosts``: computed before a change that removes
    what they are derived from (a delete)."""
    ids = sorted(set(group_ids))
    found = hosts if hosts is not None else concerned_hosts(conn, ids)
    for gid in ids:
        targets: list[str | None] = [*sorted(found.get(gid, ()))] or [None]
        for host in targets:
            standard.emit(conn, "security_group", gid, op, host=host)


def announce_members(conn: Connection, port_ids: Sequence[str]) -> None:
    """These ports' addresses changed: so did the members of their groups."""
    announce(conn, {g for groups in of_ports(conn, port_ids).values() for g in groups})


# -- the default group --------------------------------------------------------------------------------
def _insert(conn: Connection, project_id: str, name: str, description: str, stateful: bool,
            default: bool) -> str:
    """A group with Neutron's initial rules: egress anywhere over IPv4 and IPv6, and for the default
    group ingress from its own members too."""
    group_id = str(uuid.uuid4())
    conn.execute(insert(securitygroups).values(**standard.stamp_new({
        "id": group_id, "project_id": project_id, "name": name, "description": description,
        "stateful": stateful})))
    rules = []
    for ethertype in ("IPv4", "IPv6"):
        kinds = [("ingress", group_id), ("egress", None)] if default else [("egress", None)]
        for direction, remote in kinds:
            rules.append(standard.stamp_new({
                "id": str(uuid.uuid4()), "project_id": project_id, "security_group_id": group_id,
                "remote_group_id": remote, "direction": direction, "ethertype": ethertype, "protocol": None,
                "port_range_min": None, "port_range_max": None, "remote_ip_prefix": None, "description": ""}))
    conn.execute(insert(securitygrouprules), rules)
    return group_id


def default_of(conn: Connection, project_id: str) -> str | None:
    return conn.execute(select(default_security_groups.c.security_group_id).where(
        default_security_groups.c.project_id == project_id)).scalar()


def ensure_default(conn: Connection, project_id: str) -> str:
    """The project's ``default`` group, made now if it has none. Two first requests racing both insert;
    the key on ``default_security_groups.project_id`` fails the second, whose transaction the database
    layer retries whole — and then finds the first one's group."""
    found = default_of(conn, project_id)
    if found is not None:
        return found
    group_id = _insert(conn, project_id, DEFAULT, "Default security group", True, default=True)
    conn.execute(insert(default_security_groups).values(project_id=project_id, security_group_id=group_id))
    announce(conn, [group_id], "create", hosts={})
    return group_id


def needs_default(conn: Connection, ctx: RequestContext) -> bool:
    """Listing groups or rules is a first need of the caller's project's default group (as in Neutron)."""
    return bool(ctx.project_id) and default_of(conn, ctx.project_id) is None


def make_default(core: Core, conn: Connection, ctx: RequestContext) -> None:
    ensure_default(conn, ctx.project_id)


# -- groups -------------------------------------------------------------------------------------------
def _name_not_default(data: dict[str, Any]) -> None:
    if data.get("name") == DEFAULT:
        raise InUse("Default security group already exists.", type="SecurityGroupDefaultAlreadyExists")


def create(core: Core, conn: Connection, ctx: RequestContext, data: dict[str, Any]) -> str:
    require_writer(ctx, "create_security_group")
    _name_not_default(data)
    project_id = data["project_id"]
    ensure_default(conn, project_id)
    quotas.check(conn, core.cfg.quotas, project_id, "security_group")
    quotas.check(conn, core.cfg.quotas, project_id, "security_group_rule", adding=2)
    group_id = _insert(conn, project_id, data["name"], data["description"], data["stateful"], default=False)
    announce(conn, [group_id], "create", hosts={})
    return group_id


def update(core: Core, conn: Connection, ctx: RequestContext, group_id: str, data: dict[str, Any],
           if_match: str | None) -> None:
    row = fetch(conn, ctx, group_id)
    guard_change(ctx, row.project_id, "update_security_group", row.revision_number, if_match)
    values = standard.changed(row, standard.columns_of(data, COLUMNS))
    if "name" in values:
        if is_default(conn, group_id):
            raise InUse("Updating default security group not allowed.", type="SecurityGroupCannotUpdateDefault")
        _name_not_default(values)
    if "stateful" in values and _in_use(conn, group_id):
        # Flipping conntrack under live ports would drop or let through their established flows (and
        # could leave a port in stateful and stateless groups at once, which ports refuse).
        raise InUse(f"Security Group {group_id} in use: cannot change 'stateful' of a group with ports.",
                    type="SecurityGroupInUse")
    if not values:
        return
    standard.bump(conn, securitygroups, group_id, values)
    announce(conn, [group_id])


def delete_(core: Core, conn: Connection, ctx: RequestContext, group_id: str, if_match: str | None) -> None:
    row = fetch(conn, ctx, group_id)
    guard_change(ctx, row.project_id, "delete_security_group", row.revision_number, if_match)
    if _in_use(conn, group_id):
        raise InUse(f"Security Group {group_id} in use.", type="SecurityGroupInUse")
    if not ctx.is_admin and is_default(conn, group_id):
        raise InUse("Removing default security group not allowed.", type="SecurityGroupCannotRemoveDefault")
    # Rules of other groups naming this one as remote go with it (as in Neutron): those groups change.
    naming = sorted({r[0] for r in conn.execute(select(securitygrouprules.c.security_group_id).where(
        securitygrouprules.c.remote_group_id == group_id, securitygrouprules.c.security_group_id != group_id))})
    hosts = concerned_hosts(conn, [group_id])
    conn.execute(delete(securitygrouprules).where(securitygrouprules.c.remote_group_id == group_id))
    conn.execute(delete(securitygrouprules).where(securitygrouprules.c.security_group_id == group_id))
    for other in naming:
        standard.bump(conn, securitygroups, other)
    conn.execute(delete(default_security_groups).where(default_security_groups.c.security_group_id == group_id))
    standard.delete_tags(conn, [group_id])
    conn.execute(delete(securitygroups).where(securitygroups.c.id == group_id))
    announce(conn, [group_id], "delete", hosts=hosts)
    announce(conn, naming)


def view(conn: Connection, rows_: Sequence[Any], ctx: RequestContext) -> list[dict[str, Any]]:
    from neutrino.services import sgrules
    ids = [r.id for r in rows_]
    tag_map = standard.load_tags(conn, ids)
    rules: dict[str, list[dict[str, Any]]] = {}
    for rule in sgrules.of_groups(conn, ids):
        rules.setdefault(rule.security_group_id, []).append(sgrules.rule_view(rule))
    out = []
    for r in rows_:
        item = standard.standard_view(r, tag_map)
        item.update({"stateful": r.stateful, "security_group_rules": rules.get(r.id, [])})
        out.append(item)
    return out


# -- port membership ----------------------------------------------------------------------------------
def trusted(device_owner: str) -> bool:
    """The cloud's own devices (DHCP, routers, floating IPs) are never filtered by groups."""
    return device_owner.startswith(NETWORK_OWNER_PREFIX)


def check_for_port(conn: Connection, project_id: str, wanted: Sequence[str]) -> list[str]:
    """The groups a port of ``project_id`` asks for, sorted: each must exist and be that project's (an
    admin cannot put a port into another project's group either: membership is what other projects'
    rules would then let in), and all of them stateful or all stateless. 404 SecurityGroupNotFound
    naming the others; 409 SecurityGroupConflict for a mix."""
    ids = sorted(set(wanted))
    if not ids:
        return []
    found = dict(conn.execute(select(securitygroups.c.id, securitygroups.c.stateful).where(
        securitygroups.c.id.in_(ids), securitygroups.c.project_id == project_id)).tuples().all())
    missing = [g for g in ids if g not in found]
    if missing:
        raise not_found(", ".join(missing))
    if len(set(found.values())) > 1:  # a port is filtered with conntrack or without it, not both
        raise Conflict("Error Cannot apply both stateful and stateless security groups on the same port at the "
                       "same time. while attempting the operation.", type="SecurityGroupConflict")
    return ids


def of_ports(conn: Connection, port_ids: Sequence[str]) -> dict[str, list[str]]:
    """port -> its groups (sorted); a big page reads the (small) link table once instead of in IN-chunks."""
    out: dict[str, list[str]] = {}
    if not port_ids:
        return out
    cols = select(links.c.port_id, links.c.security_group_id).order_by(links.c.port_id, links.c.security_group_id)
    if len(port_ids) > standard.CHUNK:
        wanted = set(port_ids)
        rows = [(p, g) for p, g in conn.execute(cols) if p in wanted]
    else:
        rows = list(conn.execute(cols.where(links.c.port_id.in_(list(port_ids)))).tuples())
    for pid, gid in rows:
        out.setdefault(pid, []).append(gid)
    return out


def set_for_port(conn: Connection, port_id: str, groups: Sequence[str]) -> None:
    conn.execute(delete(links).where(links.c.port_id == port_id))
    if groups:
        conn.execute(insert(links), [{"port_id": port_id, "security_group_id": g} for g in groups])


def port_filter(values: list[str]) -> Any:
    """``security_groups=<id>`` on ports: the ports in any of these groups."""
    return ports.c.id.in_(select(links.c.port_id).where(links.c.security_group_id.in_(values)))
