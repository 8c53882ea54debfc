"""The agent's level-triggered loop: snapshot -> every driver reconciles -> report -> wait for the feed.

Events only wake the loop; each pass works from the complete snapshot of the host's intent, so a
restart, a missed wake-up and a fresh host all take the same path. A driver that fails leaves its
objects dirty and the next pass (soon, with backoff) tries again; the other drivers go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from neutrino.agent.model import PortId, Snapshot
from neutrino.agent.source import IntentSource
from neutrino.services.agents import AgentReport, AgentType

log = logging.getLogger("neutrino.agent")
# A port bound here whose device is not there yet (an instance's tap about to appear) is looked for
# again soon, then less and less often (a port whose VM never comes must not keep the agent busy).
PENDING_POLL = 0.05
PENDING_POLL_MAX = 5.0


@dataclass(frozen=True, slots=True)
class DriverResult:
    """What a pass of one driver did: how many kernel/daemon changes, which of this host's ports it has
    wired (for ACTIVE status), and figures for the agent's configurations."""
    changes: int = 0
    wired: frozenset[PortId] = frozenset()
    stats: dict[str, Any] = field(default_factory=dict)


class Driver(Protocol):
    name: str

    def reconcile(self, snap: Snapshot) -> DriverResult:
        """compile -> observe -> diff -> apply, blocking; raises on failure (the loop retries)."""
        ...


@dataclass
class AgentSettings:
    host: str
    tunnel_ip: str
    interface_mappings: dict[str, str]
    state_dir: Path
    heartbeat_seconds: float = 10.0


class Agent:
    def __init__(self, source: IntentSource, settings: AgentSettings, drivers: Sequence[Driver]) -> None:
        self.source = source
        self.settings = settings
        self.drivers = list(drivers)
        self.revision_file = settings.state_dir / "agent-revision"
        self.revision = self._load_revision()
        self.reported: dict[PortId, bool] = {}
        self.stats: dict[str, Any] = {}
        self.passes = 0
        self.last_error: str | None = None
        self.in_sync = asyncio.Event()
        self.pending = False  # some of this host's ports are not wired yet (e.g. a tap still to appear)

    def _load_revision(self) -> int:
        try:
            return int(self.revision_file.read_text().strip())
        except (OSError, ValueError):
            return 0

    def _save_revision(self, revision: int) -> None:
        self.settings.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.revision_file.with_suffix(".tmp")
        tmp.write_text(f"{revision}\n")
        tmp.replace(self.revision_file)

    async def heartbeat(self, start: bool = False) -> None:
        s = self.settings
        l2 = {"tunneling_ip": s.tunnel_ip, "tunnel_types": ["vxlan"], "interface_mappings": s.interface_mappings,
              "devices": self.stats.get("ports", 0)}
        dhcp = {"dhcp_driver": "dnsmasq", "networks": self.stats.get("dhcp_networks", 0),
                "ports": self.stats.get("dhcp_ports", 0)}
        for agent_type, conf in ((AgentType.L2, l2), (AgentType.DHCP, dhcp)):
            await self.source.report(AgentReport(host=s.host, agent_type=agent_type, configurations=conf,
                                                 start_flag=start))

    def reconcile(self, snap: Snapshot) -> tuple[int, set[PortId], list[str]]:
        changes, errors = 0, []
        wired: set[PortId] = set()
        for driver in self.drivers:
            try:
                result = driver.reconcile(snap)
            except Exception as exc:  # one driver's failure must not stop the others
                log.exception("driver %s failed; will retry", driver.name)
                errors.append(f"{driver.name}: {exc}")
                continue
            changes += result.changes
            wired |= result.wired
            self.stats.update(result.stats)
        return changes, wired, errors

    async def _report_ports(self, snap: Snapshot, wired: set[PortId]) -> None:
        mine = {pid for pid, p in snap.ports.items() if p.host == self.settings.host}
        # Waiting only on ports that should come up: an administratively down port stays DOWN.
        self.pending = any(snap.ports[p].admin_state_up for p in mine - wired)
        active = sorted(p for p in mine & wired if self.reported.get(p) is not True)
        down = sorted(p for p in mine - wired if self.reported.get(p) is not False)
        if active or down:
            await self.source.port_status(self.settings.host, list(active), list(down))
        self.reported = {p: p in wired for p in mine}

    async def run_once(self) -> Snapshot:
        snap = await self.source.snapshot(self.settings.host)
        started = time.perf_counter()
        changes, wired, errors = await asyncio.to_thread(self.reconcile, snap)
        await self._report_ports(snap, wired)
        self.passes += 1
        self.last_error = "; ".join(errors) or None
        if not errors:
            self.revision = snap.revision
            self._save_revision(snap.revision)
            self.in_sync.set()
        log.log(logging.INFO if changes or errors or self.passes == 1 else logging.DEBUG,
                "pass %d at revision %d: %d changes in %.0f ms%s", self.passes, snap.revision, changes,
                 (time.perf_counter() - started) * 1000, f" (errors: {self.last_error})" if errors else "")
        if errors:
            raise RuntimeError(self.last_error)
        return snap

    async def _beat(self, registered: bool) -> bool:
        """Heartbeat (the first one registers); a server that cannot be reached is logged, not fatal."""
        try:
            await self.heartbeat(start=not registered)
        except Exception as exc:
            log.warning("cannot report to the server: %s", exc)
            return registered
        return True

    async def run(self, stop: asyncio.Event) -> None:
        registered = await self._beat(False)
        next_beat = time.monotonic() + self.settings.heartbeat_seconds
        backoff = 0.2
        seen = -1
        poll = PENDING_POLL
        while not stop.is_set():
            if not registered or time.monotonic() >= next_beat:  # also while passes keep failing
                registered = await self._beat(registered)
                next_beat = time.monotonic() + self.settings.heartbeat_seconds
            try:
                snap = await self.run_once()
                if snap.revision != seen:
                    poll = PENDING_POLL
                seen = snap.revision
                backoff = 0.2
            except Exception as exc:
                log.warning("agent pass failed (%s); retrying in %.1f s", exc, backoff)
                await _sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, 10.0)
                continue
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_beat:
                    registered = await self._beat(registered)
                    next_beat = now + self.settings.heartbeat_seconds
                # While a port waits for its device (an instance's tap), look again soon; else sleep until
                # the next change or heartbeat.
                timeout = min(poll, max(0.05, next_beat - now)) if self.pending else max(0.1, next_beat - now)
                poll = min(poll * 2, PENDING_POLL_MAX)
                waiter = asyncio.create_task(self.source.wait(seen, timeout))
                stopper = asyncio.create_task(stop.wait())
                done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                stopper.cancel()
                if waiter not in done:
                    waiter.cancel()
                    break
                if self.pending:
                    break
                try:
                    if waiter.result() > seen:
                        break
                except Exception as exc:
                    log.warning("waiting for changes failed: %s", exc)
                    await _sleep_or_stop(stop, 1.0)
                    break


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
