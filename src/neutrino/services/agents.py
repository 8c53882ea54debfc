"""Agents: registration and heartbeats from hosts, liveness, and their admin API view."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, delete, false, insert, select, true
from sqlalchemy import update as sql_update

from neutrino.context import RequestContext
from neutrino.db.schema import agents
from neutrino.errors import MethodNotAllowed
from neutrino.intent.model import AgentType
from neutrino.intent.report import AgentReport
from neutrino.services import standard
from neutrino.services.core import Core

BINARY = "neutrino-agent"


TOPICS = {AgentType.DHCP: "dhcp_agent", AgentType.L2: "N/A", AgentType.L3: "l3_agent"}
# API attribute -> column (see standard.COLUMNS)
COLUMNS = {c: c for c in ("id", "agent_type", "binary", "topic", "host", "admin_state_up", "description",
                          "availability_zone", "configurations", "created_at", "started_at", "heartbeat_timestamp")}


def scope(ctx: RequestContext) -> Any:
    """Agents are the admin's to see (Neutron's get_agent): others list none and find none."""
    return true() if ctx.is_admin else false()


def fetch(conn: Connection, ctx: RequestContext, agent_id: str) -> Any:
    return standard.fetch_visible(conn, agents, scope(ctx), "Agent", agent_id)


def report(conn: Connection, rep: AgentReport) -> tuple[str, bool]:
    """Insert or refresh an agent row; returns its id and whether it is new."""
    now = standard.now()
    row = conn.execute(select(agents.c.id).where(agents.c.host == rep.host,
                                                 agents.c.agent_type == rep.agent_type.value)).first()
    if row is None:
        agent_id = str(uuid.uuid4())
        conn.execute(insert(agents).values(
            id=agent_id, agent_type=rep.agent_type.value, binary=BINARY, topic=TOPICS[rep.agent_type],
            host=rep.host, availability_zone=rep.availability_zone, admin_state_up=True, description="",
            configurations=rep.configurations, created_at=now, started_at=now, heartbeat_timestamp=now,
            revision=rep.revision or None))
        standard.emit(conn, "agent", agent_id, "create", host=rep.host)
        return agent_id, True
    values: dict[str, Any] = {"heartbeat_timestamp": now, "configurations": rep.configurations}
    if rep.start_flag:
        values["started_at"] = now
    if rep.revision:
        values["revision"] = rep.revision
    conn.execute(sql_update(agents).where(agents.c.id == row.id).values(**values))
    return str(row.id), False


def is_alive(row: Any, down_after: float, now: dt.datetime | None = None) -> bool:
    now = now or standard.now()
    return bool((now - row.heartbeat_timestamp).total_seconds() < down_after)


def alive_on_host(conn: Connection, core: Core, host: str, agent_type: AgentType) -> bool:
    row = conn.execute(select(agents).where(agents.c.host == host,
                                            agents.c.agent_type == agent_type.value)).first()
    return row is not None and is_alive(row, core.cfg.agent.agent_down_seconds)


def create(core: Core, conn: Connection, ctx: RequestContext, data: dict[str, Any]) -> str:
    raise MethodNotAllowed("Agents register themselves; they cannot be created through the API.")


def update(core: Core, conn: Connection, ctx: RequestContext, agent_id: str, data: dict[str, Any],
           if_match: str | None) -> None:
    fetch(conn, ctx, agent_id)
    values = standard.columns_of(data, COLUMNS)
    conn.execute(sql_update(agents).where(agents.c.id == agent_id).values(**values))
    standard.emit(conn, "agent", agent_id, "update")


def delete_(core: Core, conn: Connection, ctx: RequestContext, agent_id: str, if_match: str | None) -> None:
    row = fetch(conn, ctx, agent_id)
    conn.execute(delete(agents).where(agents.c.id == agent_id))
    standard.emit(conn, "agent", agent_id, "delete", host=row.host)


def make_view(down_after: float) -> Any:
    def view(conn: Connection, rows: Sequence[Any], ctx: RequestContext) -> list[dict[str, Any]]:
        now = standard.now()
        return [{
            "id": r.id, "agent_type": r.agent_type, "binary": r.binary, "topic": r.topic, "host": r.host,
            "admin_state_up": r.admin_state_up, "alive": is_alive(r, down_after, now),
            "availability_zone": r.availability_zone, "description": r.description,
            "configurations": r.configurations, "created_at": r.created_at, "started_at": r.started_at,
            "heartbeat_timestamp": r.heartbeat_timestamp, "resources_synced": None,
        } for r in rows]
    return view
