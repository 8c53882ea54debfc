"""Per-project quotas: limits from the DB over defaults from config, enforced inside the write transaction."""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select

from neutrino.config import QuotaConfig
from neutrino.db.schema import (
    floatingips,
    networks,
    ports,
    quotas,
    routers,
    securitygrouprules,
    securitygroups,
    subnets,
)
from neutrino.errors import Conflict, OverQuota

COUNTED = {"network": networks, "subnet": subnets, "port": ports, "router": routers, "floatingip": floatingips,
           "security_group": securitygroups, "security_group_rule": securitygrouprules}


def defaults(cfg: QuotaConfig) -> dict[str, int]:
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}


def limits(conn: Connection, cfg: QuotaConfig, project_id: str) -> dict[str, int]:
    out = defaults(cfg)
    for resource, hard in conn.execute(select(quotas.c.resource, quotas.c.hard_limit)
                                       .where(quotas.c.project_id == project_id)):
        out[resource] = hard
    return out


def usage(conn: Connection, project_id: str) -> dict[str, int]:
    return {name: conn.execute(select(func.count()).select_from(t).where(t.c.project_id == project_id)).scalar_one()
            for name, t in COUNTED.items()}


def check(conn: Connection, cfg: QuotaConfig, project_id: str, resource: str, adding: int = 1) -> None:
    """Refuse with 409 OverQuota if ``adding`` more would pass the project's limit (-1: unlimited)."""
    row = conn.execute(select(quotas.c.hard_limit).where(quotas.c.project_id == project_id,
                                                         quotas.c.resource == resource)).first()
    limit = row[0] if row is not None else getattr(cfg, resource)
    if limit < 0:
        return
    table = COUNTED[resource]
    used = conn.execute(select(func.count()).select_from(table).where(table.c.project_id == project_id)).scalar_one()
    if used + adding > limit:
        raise OverQuota([resource])


def projects_with_limits(conn: Connection) -> list[str]:
    return sorted({r[0] for r in conn.execute(select(quotas.c.project_id))})


def check_not_below_usage(conn: Connection, project_id: str, values: dict[str, int]) -> None:
    """409 InvalidQuotaValue if a new limit (not unlimited) is below what the project already uses."""
    used = usage(conn, project_id)
    under = sorted(r for r, hard in values.items() if 0 <= hard < used.get(r, 0))
    if under:
        raise Conflict("Quota limit is lower than current usage for: " + ", ".join(
            f"{r} (limit {values[r]}, used {used[r]})" for r in under), type="InvalidQuotaValue")


def set_limits(conn: Connection, project_id: str, values: dict[str, int]) -> None:
    for resource, hard in values.items():
        conn.execute(delete(quotas).where(quotas.c.project_id == project_id, quotas.c.resource == resource))
        conn.execute(insert(quotas).values(project_id=project_id, resource=resource, hard_limit=hard))


def reset(conn: Connection, project_id: str) -> None:
    conn.execute(delete(quotas).where(quotas.c.project_id == project_id))


def details(conn: Connection, cfg: QuotaConfig, project_id: str) -> dict[str, Any]:
    lim = limits(conn, cfg, project_id)
    used = usage(conn, project_id)
    return {r: {"limit": lim[r], "used": used.get(r, 0), "reserved": 0} for r in lim}
