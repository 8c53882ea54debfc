"""Security group rules: Neutron's validation (protocol names and numbers, port ranges or ICMP type/code,
ethertype against prefix and protocol, remote prefix or remote group), duplicates refused, and the view.

A rule is stored as the API shows it: ``protocol`` a lower-case name or a number as text (the legacy
IPv6 spellings "icmp"/"icmpv6"/"1" become "ipv6-icmp"/"58"), ``remote_ip_prefix`` normalised (host bits
cleared). ``number`` turns a stored protocol into the IP protocol number the agents filter on.
"""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, delete, insert, select, true

from neutrino.context import RequestContext
from neutrino.db.schema import securitygrouprules, securitygroups
from neutrino.errors import BadRequest, InUse, NotFound
from neutrino.services import quotas, secgroups, standard
from neutrino.services.core import Core, guard_change, require_writer

rules = securitygrouprules
COLUMNS = {**{k: v for k, v in standard.COLUMNS.items() if k != "name"}, **{a: a for a in (
    "security_group_id", "remote_group_id", "direction", "ethertype", "protocol", "port_range_min",
    "port_range_max", "remote_ip_prefix")}}

# IANA protocol names a rule may use (lower case), as Neutron accepts them.
PROTOCOLS = {
    "ah": 51, "dccp": 33, "egp": 8, "esp": 50, "gre": 47, "icmp": 1, "icmpv6": 58, "igmp": 2, "ipip": 4,
    "ipv6-encap": 41, "ipv6-frag": 44, "ipv6-icmp": 58, "ipv6-nonxt": 59, "ipv6-opts": 60, "ipv6-route": 43,
    "ospf": 89, "pgm": 113, "rsvp": 46, "sctp": 132, "tcp": 6, "udp": 17, "udplite": 136, "vrrp": 112,
}
ANY = ("any", "0")                                  # spellings of "every protocol" (stored as null)
PORT_PROTOCOLS = {6: "TCP", 17: "UDP", 33: "DCCP", 132: "SCTP", 136: "UDPLITE"}
ICMP = (1, 58)
IPV6_ONLY = {41, 43, 44, 58, 59, 60}
LEGACY_ICMPV6 = ("icmp", "icmpv6", "1")


def bad(message: str, type_: str) -> BadRequest:
    return BadRequest(message, type=type_)


# -- attribute converters (the API's validators call these) -------------------------------------------
def convert_protocol(value: Any) -> str | None:
    """A name (any case), a number 0-255 (int or digits), "any" or null -> the stored form."""
    if value is None:
        return None
    text = str(value).strip().lower() if isinstance(value, str | int) and not isinstance(value, bool) else None
    if text is not None and text.isascii() and text.isdigit() and len(text) <= 3 and int(text) <= 255:
        text = str(int(text))
    elif text not in PROTOCOLS and text not in ANY:
        shown = ", ".join(sorted(PROTOCOLS))
        raise bad(f"Security group rule protocol {value} not supported. Only protocol values [None, {shown}] "
                  "and integer representations [0 to 255] are supported.", "SecurityGroupRuleInvalidProtocol")
    return None if text in ANY else text


def convert_port(value: Any) -> int | None:
    if value is None:
        return None
    text = value.strip() if isinstance(value, str) else None
    if isinstance(value, bool) or not isinstance(value, int | str) or \
            (text is not None and not (text.isascii() and text.isdigit() and len(text) <= 5)):
        raise bad(f"Invalid value for port {value}.", "SecurityGroupInvalidPortValue")
    port = int(value)
    if not 0 <= port <= 65535:
        raise bad(f"Invalid value for port {value}.", "SecurityGroupInvalidPortValue")
    return port


def convert_ethertype(value: Any) -> str:
    if isinstance(value, str) and value.lower() in ("ipv4", "ipv6"):
        return "IPv4" if value.lower() == "ipv4" else "IPv6"
    raise ValueError(f"'{value}' is not in [IPv4, IPv6]")


def convert_prefix(value: Any) -> str | None:
    """An address or a CIDR; host bits cleared (10.0.0.5/24 -> 10.0.0.0/24), an address -> /32 or /128."""
    if value is None or value == "":
        return None
    try:
        if not isinstance(value, str) or "%" in value or value != value.strip() or not value.isprintable():
            raise ValueError
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        raise bad(f"Invalid CIDR {value} given as IP prefix.", "InvalidCIDR") from None


def number(protocol: str | None) -> int | None:
    """The IP protocol number of a stored protocol (None: any)."""
    if protocol is None:
        return None
    return PROTOCOLS[protocol] if protocol in PROTOCOLS else int(protocol)


# -- validation ---------------------------------------------------------------------------------------
def _canonical_icmpv6(rule: dict[str, Any]) -> None:
    if rule["ethertype"] == "IPv6" and rule["protocol"] in LEGACY_ICMPV6:
        rule["protocol"] = "ipv6-icmp" if rule["protocol"] != "1" else "58"


def _check_ports(rule: dict[str, Any]) -> None:
    lo, hi = rule["port_range_min"], rule["port_range_max"]
    if lo is None and hi is None:
        return
    proto = number(rule["protocol"])
    if proto is None:
        raise bad("Must also specify protocol if port range is given.", "SecurityGroupProtocolRequiredWithPorts")
    if proto in PORT_PROTOCOLS:
        if lo == 0 or hi == 0:
            raise bad("Invalid value for port 0.", "SecurityGroupInvalidPortValue")
        if lo is None or hi is None or lo > hi:
            raise bad("For TCP/UDP protocols, port_range_min must be <= port_range_max",
                      "SecurityGroupInvalidPortRange")
    elif proto in ICMP:
        for attr, field in (("port_range_min", "type"), ("port_range_max", "code")):
            if rule[attr] is not None and not 0 <= rule[attr] <= 255:
                raise bad(f"Invalid value for ICMP {field} ({attr}) {rule[attr]}. It must be 0 to 255.",
                          "SecurityGroupInvalidIcmpValue")
        if lo is None:
            raise bad(f"ICMP code (port-range-max) {hi} is provided but ICMP type (port-range-min) is missing.",
                      "SecurityGroupMissingIcmpType")
    else:
        valid = ", ".join(PORT_PROTOCOLS.values())
        raise bad(f"Invalid protocol {proto} for port range, only supported for {valid} protocols.",
                  "SecurityGroupInvalidProtocolForPort")


def _check_addresses(rule: dict[str, Any]) -> None:
    prefix = rule["remote_ip_prefix"]
    if prefix is not None and rule["ethertype"] != f"IPv{ipaddress.ip_network(prefix).version}":
        raise bad(f"Conflicting value ethertype {rule['ethertype']} for CIDR {prefix}",
                  "SecurityGroupRuleParameterConflict")
    if rule["ethertype"] == "IPv4" and number(rule["protocol"]) in IPV6_ONLY:
        raise bad(f"Invalid ethertype {rule['ethertype']} for protocol {rule['protocol']}.",
                  "SecurityGroupEthertypeConflictWithProtocol")
    if prefix is not None and rule["remote_group_id"] is not None:
        raise bad("Only remote_ip_prefix or remote_group_id may be provided.",
                  "SecurityGroupRemoteGroupAndRemoteIpPrefix")


def _key(rule: Any) -> tuple[Any, ...]:
    """What makes two rules of a group the same (Neutron's comparison): a protocol by name or number alike,
    a prefix of everything alike with none."""
    prefix = rule["remote_ip_prefix"]
    return (rule["direction"], rule["ethertype"], number(rule["protocol"]), rule["port_range_min"],
            rule["port_range_max"], rule["remote_group_id"], None if prefix in ("0.0.0.0/0", "::/0") else prefix)


# -- CRUD -----------------------------------------------------------------------------------------------
def scope(ctx: RequestContext) -> Any:
    """A rule is visible to its own project and to the project owning its group; to an admin all are."""
    if ctx.is_admin:
        return true()
    owned = select(securitygroups.c.id).where(securitygroups.c.project_id == ctx.project_id)
    return (rules.c.project_id == ctx.project_id) | rules.c.security_group_id.in_(owned)


def fetch(conn: Connection, ctx: RequestContext, rule_id: str) -> Any:
    row = conn.execute(select(rules).where(rules.c.id == rule_id, scope(ctx))).first()
    if row is None:
        raise NotFound(f"Security group rule {rule_id} does not exist", type="SecurityGroupRuleNotFound")
    return row


def of_groups(conn: Connection, group_ids: Sequence[str]) -> list[Any]:
    """The rules of these groups, in a stable order."""
    if not group_ids:
        return []
    stmt = select(rules).order_by(rules.c.security_group_id, rules.c.created_at, rules.c.id)
    if len(group_ids) > standard.CHUNK:
        wanted = set(group_ids)
        return [r for r in conn.execute(stmt) if r.security_group_id in wanted]
    return list(conn.execute(stmt.where(rules.c.security_group_id.in_(list(group_ids)))).all())


def create(core: Core, conn: Connection, ctx: RequestContext, data: dict[str, Any]) -> str:
    require_writer(ctx, "create_security_group_rule")
    rule = {k: data.get(k) for k in ("direction", "ethertype", "protocol", "port_range_min", "port_range_max",
                                     "remote_ip_prefix", "remote_group_id")}
    _canonical_icmpv6(rule)
    _check_ports(rule)
    _check_addresses(rule)
    group = secgroups.fetch(conn, ctx, data["security_group_id"])   # 404 unless the caller sees it
    if rule["remote_group_id"] is not None:
        secgroups.fetch(conn, ctx, rule["remote_group_id"])
    quotas.check(conn, core.cfg.quotas, data["project_id"], "security_group_rule")
    wanted = _key(rule)
    for existing in conn.execute(select(rules).where(rules.c.security_group_id == group.id)).mappings():
        if _key(existing) == wanted:
            raise InUse(f"Security group rule already exists. Rule id is {existing['id']}.",
                        type="SecurityGroupRuleExists")
    rule_id = str(uuid.uuid4())
    conn.execute(insert(rules).values(**standard.stamp_new({
        **rule, "id": rule_id, "project_id": data["project_id"], "security_group_id": group.id,
        "description": data["description"]})))
    standard.bump(conn, securitygroups, group.id)
    standard.emit(conn, "security_group_rule", rule_id, "create")
    secgroups.announce(conn, [group.id])
    return rule_id


def update(core: Core, conn: Connection, ctx: RequestContext, rule_id: str, data: dict[str, Any],
           if_match: str | None) -> None:
    """Rules are immutable (every attribute is create-only): an empty update only checks who may ask."""
    row = fetch(conn, ctx, rule_id)
    guard_change(ctx, row.project_id, "update_security_group_rule", row.revision_number, if_match, owner_only=False)


def delete_(core: Core, conn: Connection, ctx: RequestContext, rule_id: str, if_match: str | None) -> None:
    row = fetch(conn, ctx, rule_id)
    guard_change(ctx, row.project_id, "delete_security_group_rule", row.revision_number, if_match, owner_only=False)
    conn.execute(delete(rules).where(rules.c.id == rule_id))
    standard.bump(conn, securitygroups, row.security_group_id)
    standard.emit(conn, "security_group_rule", rule_id, "delete")
    secgroups.announce(conn, [row.security_group_id])


def rule_view(r: Any) -> dict[str, Any]:
    return {"id": r.id, "security_group_id": r.security_group_id, "direction": r.direction,
            "ethertype": r.ethertype, "protocol": r.protocol, "port_range_min": r.port_range_min,
            "port_range_max": r.port_range_max, "remote_ip_prefix": r.remote_ip_prefix,
            "remote_group_id": r.remote_group_id, "description": r.description, "project_id": r.project_id,
            "tenant_id": r.project_id, "revision_number": r.revision_number, "created_at": r.created_at,
            "updated_at": r.updated_at}


def view(conn: Connection, rows_: Sequence[Any], ctx: RequestContext) -> list[dict[str, Any]]:
    return [rule_view(r) for r in rows_]
