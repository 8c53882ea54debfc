"""The agent's level-triggered loop: snapshot -> every driver reconciles -> report -> wait.

A pass runs when the server's intent moves (the change feed), when something of ours changed in the
kernel (a driver's ``Watch``: link events, a dnsmasq ending), while a port waits for its device, and at
least every ``resync_seconds`` regardless. Events only wake the loop; each pass works from the complete
snapshot of the host's intent, so a restart, a missed wake-up, a killed daemon and a fresh host all take
the same path. A driver that fails leaves its objects dirty and the next pass (after a backoff that
neither events nor the resync timer shorten) tries again; the other drivers go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from neutrino.intent.model import AgentType, DeviceOwner, FloatingIpId, PortId, Snapshot
from neutrino.intent.report import AgentReport, PortStatus
from neutrino.intent.source import MAX_WAIT_SECONDS, IntentSource

log = logging.getLogger("neutrino.agent")
# A port bound here whose device is not there yet (an instance's tap about to appear) is looked for
# again soon, then less and less often (a port whose VM never comes must not keep the agent busy).
PENDING_POLL = 0.05
PENDING_POLL_MAX = 5.0
# Kernel events start a pass after a short pause, so a burst (a deleted bridge: one event per port) is one
# pass. A pass that changed something hears its own changes and confirms with one more pass; a pass that
# changed nothing makes no events, so the chain ends there. Event-woken passes draw from a bucket of
# EVENT_BURST refilled every EVENT_GAP: events from outside that never stop (a foreign tap flapping) cost
# at most 1/EVENT_GAP passes a second.
EVENT_DEBOUNCE = 0.02
EVENT_BURST = 3
EVENT_GAP = 0.1
# Passes that keep changing something at the same revision (an object the kernel will not keep as asked)
# hear their own changes every time: from the second one on, the next event-woken pass waits 0.2, 0.4,
# 0.8 s ... up to the resync interval, so a non-converging object costs one pass per resync, not a loop.
CHURN_WARN = 5
# After a failed pass the next one waits BACKOFF_MIN, doubling up to BACKOFF_MAX.
BACKOFF_MIN = 0.2
BACKOFF_MAX = 10.0


@dataclass(frozen=True, slots=True)
class DriverResult:
    """What a pass of one driver did: how many kernel/daemon changes, which of this host's ports it has
    wired (for ACTIVE status), and figures for the agent's configurations."""
    changes: int = 0
    wired: frozenset[PortId] = frozenset()
    stats: dict[str, Any] = field(default_factory=dict)
    errors: tuple[str, ...] = ()  # parts that failed (the pass fails; ``wired`` still counts)
    skipped: int = 0  # parts not looked at: a quiet pass found their intent unchanged


class Watch(Protocol):
    """Where a driver hears that its objects may have drifted between passes: file descriptors the loop
    listens on (in its own thread). Hearing something only wakes the loop."""

    def rearm(self) -> bool:
        """After a pass: listen to what it left (e.g. the processes now running); True if some of it is
        already gone."""
        ...

    def fds(self) -> Collection[int]: ...

    def drain(self, fd: int) -> bool:
        """Consume what ``fd`` has (never blocks); True when it concerns this driver's objects."""
        ...

    def close(self) -> None: ...


class Driver(Protocol):
    name: str

    def reconcile(self, snap: Snapshot, full: bool = True) -> DriverResult:
        """compile -> observe -> diff -> apply, blocking; raises on failure (the loop retries). Not ``full``:
        nothing was heard from the kernel since the last pass, only the intent moved; what that leaves
        unchanged for the driver need not be looked at again."""
        ...

    def watch(self) -> Watch | None:
        """What wakes the loop for this driver's objects (None: only the timers and the feed)."""
        ...


@dataclass
class AgentSettings:
    host: str
    tunnel_ip: str
    interface_mappings: dict[str, str]
    state_dir: Path
    heartbeat_seconds: float = 10.0
    resync_seconds: float = 2.0
    owner: str = ""              # this neutrino's owner id (dataplane/ownership.py); '' -> from state_dir
    run_dir: Path | None = None  # where daemons keep their files (None: /run/neutrino)


def applied_floating_ips(snap: Snapshot, mine: set[PortId], wired: set[PortId]) -> dict[FloatingIpId, bool]:
    """Each floating IP of this host's routers, and whether it is applied: its router's gateway port is
    ready in every plane naming it (the router's NAT table, holding the floating IP's rules, is in place as
    compiled)."""
    out: dict[FloatingIpId, bool] = {}
    if not snap.routers:
        return out
    gateways = {p.device_id: p.id for p in snap.ports.values()  # one look at the ports, not one per router
                if p.device_owner == DeviceOwner.ROUTER_GATEWAY and p.id in mine}
    for router in snap.routers.values():
        gateway = gateways.get(router.id)
        if gateway is None:
            continue
        for fip in router.floating_ips:
            out[fip.id] = router.admin_state_up and gateway in wired
    return out


class Agent:
    def __init__(self, source: IntentSource, settings: AgentSettings, drivers: Sequence[Driver]) -> None:
        self.source = source
        self.settings = settings
        self.drivers = list(drivers)
        self.revision_file = settings.state_dir / "agent-revision"
        self.revision = self._load_revision()
        self.reported: dict[PortId, bool] = {}
        self.reported_fips: dict[FloatingIpId, bool] = {}
        self.stats: dict[str, Any] = {}
        self.passes = 0
        self.skipped = 0  # parts of the last pass not looked at (Driver.reconcile, not full)
        self.churn = 0  # consecutive passes that changed something at the same revision
        self.reasons: Counter[str] = Counter()  # passes by what started them
        self.last_error: str | None = None
        self.in_sync = asyncio.Event()
        self.pending = False  # some of this host's ports are not wired yet (e.g. a tap still to appear)
        self.snapshot: Snapshot | None = None  # the intent of the last pass, reused until the feed moves
        self.feed_revision = -1  # the newest revision the change feed announced
        self._fetched = 0.0  # when self.snapshot came from the server (time.monotonic)
        self._whole_at = 0.0  # when the server last sent it whole
        self._pass_end = 0.0
        self._event_at: float | None = None  # first kernel event not covered by a pass yet
        self._tokens, self._tokens_at = float(EVENT_BURST), 0.0  # the event-pass bucket, as of _tokens_at
        self._wake = asyncio.Event()
        self._watches: list[Watch] = []
        self._fds: dict[int, Watch] = {}

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
        l3 = {"agent_mode": "legacy", "routers": self.stats.get("routers", 0),
              "ex_gw_ports": self.stats.get("ex_gw_ports", 0), "interfaces": self.stats.get("router_ports", 0),
              "gateway_external_network_id": "", "external_network_bridge": "",
              "interface_driver": "linuxbridge"}
        for agent_type, conf in ((AgentType.L2, l2), (AgentType.DHCP, dhcp), (AgentType.L3, l3)):
            await self.source.report(AgentReport(host=s.host, agent_type=agent_type, configurations=conf,
                                                 start_flag=start, revision=self.revision))

    def reconcile(self, snap: Snapshot, full: bool = True) -> tuple[int, set[PortId], list[str]]:
        changes, errors = 0, []
        wired: set[PortId] = set()
        self.skipped = 0
        for driver in self.drivers:
            try:
                result = driver.reconcile(snap, full)
            except Exception as exc:  # one driver's failure must not stop the others
                log.exception("driver %s failed; will retry", driver.name)
                errors.append(f"{driver.name}: {exc}")
                continue
            changes += result.changes
            wired |= result.wired
            self.skipped += result.skipped
            self.stats.update(result.stats)
            errors += [f"{driver.name}: {e}" for e in result.errors]
        return changes, wired, errors

    async def _report_ports(self, snap: Snapshot, wired: set[PortId]) -> None:
        mine = {pid for pid, p in snap.ports.items() if p.host == self.settings.host}
        # Waiting only on ports that should come up: an administratively down port stays DOWN.
        self.pending = any(snap.ports[p].admin_state_up for p in mine - wired)
        active = sorted(p for p in mine & wired if self.reported.get(p) is not True)
        down = sorted(p for p in mine - wired if self.reported.get(p) is not False)
        fips = applied_floating_ips(snap, mine, wired)
        fip_up = sorted(f for f, up in fips.items() if up and self.reported_fips.get(f) is not True)
        fip_down = sorted(f for f, up in fips.items() if not up and self.reported_fips.get(f) is not False)
        if active or down or fip_up or fip_down:
            await self.source.port_status(PortStatus(self.settings.host, tuple(active), tuple(down),
                                                     tuple(fip_up), tuple(fip_down)))
        self.reported = {p: p in wired for p in mine}
        self.reported_fips = fips

    async def run_once(self, fetch: bool = True, reason: str = "intent") -> Snapshot:
        """One pass. ``fetch``: ask the server for the snapshot (else reuse the last one: the intent has not
        moved, only the kernel may have)."""
        if fetch or self.snapshot is None:
            now = time.monotonic()
            # New intent between two heartbeats: the networks nothing touched come from the snapshot held
            # (intent/delta.py); the first, a retry's and at least every heartbeat's are whole.
            whole = (self.snapshot is None or reason in ("start", "retry")
                     or now - self._whole_at >= self.settings.heartbeat_seconds)
            self.snapshot = await self.source.snapshot(self.settings.host, None if whole else self.snapshot)
            self._fetched = now
            if whole:
                self._whole_at = now
        snap = self.snapshot
        quiet = self._event_at is None
        if self._consume_all():  # what happened until now, this pass observes
            quiet = False
        self._event_at = None
        full = not (quiet and reason == "intent")
        self.reasons[reason] += 1
        started = time.perf_counter()
        try:
            changes, wired, errors = await asyncio.to_thread(self.reconcile, snap, full)
        finally:
            self._pass_end = time.monotonic()
            self._rearm()
        await self._report_ports(snap, wired)
        self.passes += 1
        self.churn = self.churn + 1 if changes and snap.revision == self.revision and self.passes > 1 else 0
        if self.churn == CHURN_WARN:
            log.warning("%d passes in a row changed something at revision %d (something does not stay as "
                        "applied); passes woken by events slow down to one per %.1f s", self.churn, snap.revision,
                        self.settings.resync_seconds)
        self.last_error = "; ".join(errors) or None
        if not errors:
            if snap.revision != self.revision:
                self.revision = snap.revision
                self._save_revision(snap.revision)
            self.in_sync.set()
        log.log(logging.INFO if changes or errors or self.passes == 1 else logging.DEBUG,
                "pass %d at revision %d: %d changes in %.0f ms (%s%s)%s", self.passes, snap.revision, changes,
                (time.perf_counter() - started) * 1000, reason,
                f"; {self.skipped} parts unchanged, not looked at" if self.skipped else "",
                f" (errors: {self.last_error})" if errors else "")
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

    # -- what wakes the loop: the feed (a task of its own) and the drivers' watches (reader callbacks) ----
    async def _follow_feed(self, stop: asyncio.Event) -> None:
        """Long-poll the change feed for changes that concern this host; one newer than the last snapshot
        wakes the loop."""
        while not stop.is_set():
            after = max(self.feed_revision, self.snapshot.revision if self.snapshot is not None else 0, 0)
            try:
                # A long heartbeat interval must not ask for a longer wait than servers hold (they refuse it).
                rev = await self.source.wait(after, min(self.settings.heartbeat_seconds, MAX_WAIT_SECONDS),
                                             self.settings.host)
            except Exception as exc:
                if stop.is_set():
                    return
                log.warning("waiting for changes failed: %s", exc)
                await _sleep_or_stop(stop, 1.0)
                continue
            if rev > after:
                self.feed_revision = rev
                self._wake.set()

    def _open_watches(self) -> None:
        for driver in self.drivers:
            try:
                watch = driver.watch()
            except Exception as exc:  # the periodic pass still repairs, only later
                log.warning("driver %s: cannot watch the kernel (%s); relying on the periodic pass",
                            driver.name, exc)
                continue
            if watch is not None:
                self._watches.append(watch)
        self._rearm()

    def _close_watches(self) -> None:
        self._unlisten(list(self._fds))
        for watch in self._watches:
            watch.close()
        self._watches.clear()

    def _listen(self) -> None:
        """Register every watch's current descriptors (level-triggered: nothing is lost while one is
        briefly unregistered)."""
        loop = asyncio.get_running_loop()
        for watch in self._watches:
            for fd in watch.fds():
                if fd not in self._fds:
                    self._fds[fd] = watch
                    loop.add_reader(fd, self._readable, fd)

    def _unlisten(self, fds: list[int]) -> None:
        loop = asyncio.get_running_loop()
        for fd in fds:
            loop.remove_reader(fd)
            self._fds.pop(fd, None)

    def _rearm(self) -> None:
        """After a pass: listen to what it left, and take note of what it heard (its own changes too)."""
        self._unlisten(list(self._fds))  # a watch may close descriptors it no longer needs
        for watch in self._watches:
            if watch.rearm():
                self._note()
        self._listen()
        if self._consume_all():
            self._note()

    def _consume(self, fd: int) -> bool:
        watch = self._fds.get(fd)
        if watch is None:
            return False
        self._unlisten([fd])  # before drain(): it may close fd
        try:
            hit = watch.drain(fd)
        except Exception as exc:  # a broken watch must not spin; the periodic pass still repairs
            log.warning("stopped watching (%s); relying on the periodic pass", exc)
            self._unlisten([f for f, w in self._fds.items() if w is watch])
            self._watches.remove(watch)
            watch.close()
            return True
        self._listen()
        return hit

    def _consume_all(self) -> bool:
        return any([self._consume(fd) for fd in list(self._fds)])

    def _readable(self, fd: int) -> None:
        if self._consume(fd):
            self._note()

    def _note(self) -> None:
        if self._event_at is None:
            self._event_at = time.monotonic()
        self._wake.set()

    # -- the loop -----------------------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self._open_watches()
        feed = asyncio.create_task(self._follow_feed(stop))
        try:
            await self._run(stop)
        finally:
            feed.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await feed
            self._close_watches()

    async def _run(self, stop: asyncio.Event) -> None:
        s = self.settings
        registered = await self._beat(False)
        next_beat = time.monotonic() + s.heartbeat_seconds
        backoff = BACKOFF_MIN
        seen = -1
        poll = PENDING_POLL
        reason = "start"
        while not stop.is_set():
            if not registered or time.monotonic() >= next_beat:  # also while passes keep failing
                registered = await self._beat(registered)
                next_beat = time.monotonic() + s.heartbeat_seconds
            snap = self.snapshot
            # A new snapshot when the feed moved, after a failure, and every heartbeat (what the snapshot
            # says about other hosts' liveness changes without a revision).
            fetch = (snap is None or reason in ("start", "retry") or self.feed_revision > snap.revision
                     or time.monotonic() - self._fetched >= s.heartbeat_seconds)
            try:
                snap = await self.run_once(fetch, reason)
            except Exception as exc:
                log.warning("agent pass failed (%s); retrying in %.1f s", exc, backoff)
                # Whatever happens meanwhile (events, the resync timer, new intent) waits for the retry:
                # a failing object must not turn into a hot loop.
                await _sleep_or_stop(stop, backoff)
                backoff = min(backoff * 2, BACKOFF_MAX)
                reason = "retry"
                continue
            backoff = BACKOFF_MIN
            if snap.revision != seen:
                poll = PENDING_POLL
            seen = snap.revision
            next_resync = self._pass_end + max(0.05, s.resync_seconds)
            # While a port waits for its device (an instance's tap), look again soon, then less often.
            next_poll = self._pass_end + poll if self.pending else math.inf
            if self.pending:
                poll = min(poll * 2, PENDING_POLL_MAX)
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_beat:
                    registered = await self._beat(registered)
                    next_beat = time.monotonic() + s.heartbeat_seconds
                    continue
                due, reason = min((next_resync, "resync"), (next_poll, "pending"))
                if self._event_at is not None:
                    due, reason = min((due, reason), (self._event_due(now), "event"))
                if self.feed_revision > snap.revision:
                    reason = "intent"
                    break
                if now >= due:
                    if reason == "event":
                        self._tokens, self._tokens_at = self._bucket(now) - 1, now
                    break
                self._wake.clear()
                await _wait_any(min(due, next_beat) - now, stop, self._wake)


    def _bucket(self, now: float) -> float:
        return min(float(EVENT_BURST), self._tokens + (now - self._tokens_at) / EVENT_GAP)

    def _event_due(self, now: float) -> float:
        """When the pass for the pending kernel events may start."""
        assert self._event_at is not None
        tokens = self._bucket(now)
        due = max(self._event_at + EVENT_DEBOUNCE, now + (1 - tokens) * EVENT_GAP if tokens < 1 else 0.0)
        if self.churn >= 2:
            due = max(due, self._pass_end + min(EVENT_GAP * 2 ** (self.churn - 1), self.settings.resync_seconds))
        return due


async def _wait_any(timeout: float, *events: asyncio.Event) -> None:
    waiters = [asyncio.create_task(e.wait()) for e in events]
    try:
        await asyncio.wait(waiters, timeout=max(0.0, timeout), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
