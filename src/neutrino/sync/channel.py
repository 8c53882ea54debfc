"""The server side of the agent channel, in one place: register/heartbeat (with scheduling), wait for the
feed, the host's snapshot, port status.

``/agent-api/v1`` serves it over HTTP to remote agents, and ``neutrino up``'s own agent uses it directly
as its ``IntentSource`` — the same code either way.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy import Connection

from neutrino.intent.model import AgentType, NetworkId, Snapshot
from neutrino.intent.report import AgentReport, PortStatus
from neutrino.services import agents, dhcp, floatingips, l3, ports
from neutrino.services.core import Core
from neutrino.sync import snapshot
from neutrino.sync.feed import Feed

T = TypeVar("T")
Run = Callable[[Callable[[Connection], Any]], Awaitable[Any]]


def register(conn: Connection, core: Core, rep: AgentReport) -> str:
    """Register or refresh an agent; a new or restarted one gets work scheduled and its ports bound."""
    agent_id, new = agents.report(conn, rep)
    if new or rep.start_flag:
        if rep.agent_type is AgentType.DHCP:
            dhcp.schedule_unscheduled(conn, core)
        elif rep.agent_type is AgentType.L3:
            l3.schedule_unscheduled(conn, core)
        else:
            ports.rebind_host(conn, core, rep.host)
    return agent_id


def set_status(conn: Connection, status: PortStatus) -> int:
    """An agent's report: its ports' status, and its routers' floating IPs' (only those of routers
    scheduled to its host: another host's report cannot flip them)."""
    changed = ports.set_status(conn, status.host, status.active, status.down)
    mine = set(floatingips.of_host(conn, status.host))
    for fip_ids, state in ((status.active_floating_ips, "ACTIVE"), (status.down_floating_ips, "DOWN")):
        changed += sum(floatingips.set_floatingip_status(conn, f, state) for f in fip_ids if f in mine)
    return changed


class Channel:
    """``read``/``write`` run a function in one read or write transaction (off the event loop); a write
    wakes the feed."""

    def __init__(self, core: Core, read: Run, write: Run, feed: Feed) -> None:
        self.core = core
        self._read = read
        self._write = write
        self.feed = feed
        self.memo = snapshot.Memo()  # what the snapshots of one revision share (a wake burst's)

    async def report(self, rep: AgentReport) -> str:
        agent_id: str = await self._write(lambda conn: register(conn, self.core, rep))
        return agent_id

    async def wait(self, after: int, timeout: float, host: str = "") -> int:
        return await self.feed.wait(after, timeout, host or None)

    async def snapshot(self, host: str, base: Snapshot | None = None) -> Snapshot:
        """The host's snapshot (``base`` is for remote agents' deltas: in-process, nothing is copied)."""
        down_after = self.core.cfg.agent.agent_down_seconds
        found: Snapshot = await self._read(lambda conn: snapshot.build(conn, host, down_after, self.memo))
        return found

    async def delta(self, host: str, since: int) -> tuple[Snapshot, frozenset[NetworkId]]:
        """The host's snapshot and which of its networks an agent holding revision ``since`` keeps
        (intent/delta.py)."""
        down_after = self.core.cfg.agent.agent_down_seconds

        def read(conn: Connection) -> tuple[Snapshot, frozenset[NetworkId]]:
            snap = snapshot.build(conn, host, down_after, self.memo)
            return snap, snapshot.unchanged(conn, snap, host, since)
        found: tuple[Snapshot, frozenset[NetworkId]] = await self._read(read)
        return found

    async def port_status(self, status: PortStatus) -> int:
        """How many of the host's ports and floating IPs changed status."""
        changed: int = await self._write(lambda conn: set_status(conn, status))
        return changed

    async def aclose(self) -> None:
        return None
