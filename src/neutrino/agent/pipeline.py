"""The agent's pipeline: compile the host's one ``HostState``, then every plane converges its part.

Planes, in order: the host's nft tables (the instance ports' filter, in place before a tap is plugged),
links (namespaces, bridges, VXLAN, veths, addresses, FDB), sysctls (forwarding in router namespaces,
br_netfilter), routes (over those links), nft in other namespaces (routers' NAT), daemons (dnsmasq, RA).
Each plane observes, diffs and applies on its own; one that fails does not stop the next, and the pass
then counts as failed (the loop retries, the revision does not advance). A port is ready (ACTIVE) when
every plane that names it has it ready. Cleanup is the same pipeline run on the empty HostState: it
removes exactly what this neutrino made (dataplane/ownership.py).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from neutrino.agent.loop import AgentSettings, DriverResult, Watch
from neutrino.compile.l2 import compile_host
from neutrino.compile.state import HostState
from neutrino.dataplane import netlink as nl
from neutrino.dataplane import ownership as own
from neutrino.dataplane.daemons import RUN_ROOT, ExitWatch, Supervisor
from neutrino.dataplane.links import LinkPlane, NetlinkKernel
from neutrino.dataplane.nft import NftPlane
from neutrino.dataplane.plane import Made, Plane, PlaneResult
from neutrino.dataplane.routes import NetlinkRoutes, RoutesPlane
from neutrino.dataplane.sysctls import SysctlPlane
from neutrino.intent.model import PortId, Snapshot

log = logging.getLogger("neutrino.agent")
# Links of ours in the host's namespace whose changes wake the agent. ``ns-`` devices live in qdhcp
# namespaces, but each is a veth with a ``tap`` here: deleting either end deletes both.
WATCHED_LINKS = own.prefixes(own.Creator.AGENT, own.Scope.HOST)


class HostWatch:
    """What wakes the agent between passes: a link of ours changing in the host's namespace, or one of
    the daemons the last pass left running ending."""

    def __init__(self, daemons: Supervisor) -> None:
        self.daemons = daemons
        self.links = nl.LinkMonitor(WATCHED_LINKS)
        self.exits = ExitWatch()

    def rearm(self) -> bool:
        return self.exits.watch(self.daemons.pids().values())

    def fds(self) -> list[int]:
        return [self.links.fileno(), *self.exits.fds()]

    def drain(self, fd: int) -> bool:
        if fd == self.links.fileno():
            events = self.links.drain()
            if events:
                log.debug("woken by links: %s", ", ".join(
                    f"{e.name or '(events lost)'}{' gone' if e.gone else ''}" for e in events[:8]))
            return bool(events)
        if self.exits.drain(fd):
            log.debug("woken by a daemon ending")
            return True
        return False

    def close(self) -> None:
        self.links.close()
        self.exits.close()


def owner_of(settings: AgentSettings) -> str:
    return settings.owner or own.owner_id(settings.state_dir)


@dataclass
class Pipeline:
    """The agent's one driver: compile once per pass, then every plane."""
    settings: AgentSettings
    planes: list[Plane] = field(default_factory=list)
    name: str = "host"
    daemons: Supervisor = field(init=False)
    last_problems: tuple[str, ...] = ()
    # The last snapshot and what it compiled to: the passes between two fetches (the resync timer, kernel
    # events, a port's device awaited) reuse the snapshot object, and compiling is pure.
    _compiled: tuple[Snapshot, HostState] | None = field(default=None, init=False, repr=False)
    # By plane: the part of the desired state its last clean sync made, and the ports it found ready.
    _kept: dict[int, tuple[object, frozenset[PortId]]] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        s = self.settings
        owner = owner_of(s)
        if not self.planes:
            run_dir = s.run_dir or RUN_ROOT
            records = own.NamespaceRecords(s.state_dir)
            self.planes = [NftPlane(owner, memory=s.state_dir / "nft-host-tables.json", scope="host",
                                    name="nft-host"),
                           LinkPlane(NetlinkKernel(), owner, records),
                           SysctlPlane(),
                           RoutesPlane(NetlinkRoutes(), owner, records),
                           NftPlane(owner, memory=s.state_dir / "nft-tables.json", scope="namespaces"),
                           Supervisor(run_dir / owner, pointer=s.state_dir / "dhcp")]
        self.daemons = next((p for p in self.planes if isinstance(p, Supervisor)), Supervisor(Path("/nonexistent")))

    def watch(self) -> Watch:
        return HostWatch(self.daemons)

    def compile(self, snap: Snapshot) -> HostState:
        if self._compiled is not None and self._compiled[0] is snap:
            return self._compiled[1]
        s = self.settings
        desired = compile_host(snap, s.host, s.tunnel_ip, s.interface_mappings)
        self._compiled = (snap, desired)
        return desired

    def reconcile(self, snap: Snapshot, full: bool = True) -> DriverResult:
        desired = self.compile(snap)
        if desired.problems != self.last_problems:
            for problem in desired.problems:
                log.warning("cannot realise: %s", problem)
            self.last_problems = desired.problems
        return self.run(desired, full)

    def run(self, desired: HostState, full: bool = True) -> DriverResult:
        """Every plane syncs; in a pass that is not ``full`` (new intent, no kernel event heard since the
        last pass) a plane whose part of ``desired`` is what its last clean sync made, with nothing it
        depends on changed in this pass, is not looked at again: its last answer stands. The periodic and
        event passes are always full, so drift is still found within one resync."""
        changes, errors, skipped = 0, [], 0
        made: Made = frozenset()
        moved = 0  # changes so far by planes the later ones depend on
        named: dict[PortId, int] = {}
        ready: dict[PortId, int] = {}
        for i, plane in enumerate(self.planes):
            for p in plane.names(desired):
                named[p] = named.get(p, 0) + 1
            part = plane.part(desired)
            kept = self._kept.get(i)
            if not full and not made and not moved and kept is not None and kept[0] == part:
                result = PlaneResult(ready=kept[1])
                skipped += 1
            else:
                self._kept.pop(i, None)
                try:
                    result = plane.sync(desired, made)
                except Exception as exc:  # one plane's failure must not stop the others
                    log.warning("plane %s failed: %s", plane.name, exc)
                    errors.append(f"{plane.name}: {exc}")
                    moved += 1
                    continue
                self._kept[i] = (part, result.ready)
            changes += result.changes
            if not plane.leaf:
                moved += result.changes
            made = made | result.made
            for p in result.ready:
                ready[p] = ready.get(p, 0) + 1
        wired = frozenset(p for p, n in named.items() if ready.get(p, 0) == n)  # ready in every plane naming it
        return DriverResult(changes=changes, wired=wired, errors=tuple(errors), stats={
            "ports": len(desired.plugs) + len(desired.port_links), "dhcp_networks": len(desired.dhcp),
            "dhcp_ports": sum(len(d.hosts) for d in desired.dhcp), "routers": len(desired.routers),
            "router_ports": sum(1 for p in desired.port_links if p.namespace.startswith("qrouter-")),
            "ex_gw_ports": sum(1 for p in desired.port_links if p.peer.startswith("qg-")),
            "filtered_ports": len({p for t in desired.nft if t.namespace is None for p in t.ports})},
            skipped=skipped)


def sweep_legacy(state_dir: Path) -> int:
    """dnsmasq of a neutrino before the daemon plane: ``<state>/agent/dhcp/<network>/`` was a real
    directory. Stop those processes (recognised by pid file and command line) and remove the directory,
    so the pointer to the new place can take its name. Returns how many were stopped."""
    old = state_dir / "dhcp"
    if old.is_symlink() or not old.is_dir():
        return 0
    stopped = 0
    procs = Supervisor(old).procs
    for d in sorted(p for p in old.iterdir() if p.is_dir()):
        with contextlib.suppress(OSError, ValueError):
            pid = int((d / "pid").read_text().strip())
            cmdline = procs.cmdline(pid) or ()
            if f"--dhcp-hostsfile={d / 'hosts'}" in cmdline:
                procs.kill(pid)
                stopped += 1
    shutil.rmtree(old, ignore_errors=True)
    return stopped


@dataclass(frozen=True, slots=True)
class CleanupReport:
    daemons: int
    changes: int
    errors: tuple[str, ...]


def cleanup(settings: AgentSettings) -> CleanupReport:
    """Run the pipeline on the empty HostState: everything this neutrino made on this host goes (links
    and namespaces with its mark or record, its routes, its nft tables, its daemons); nothing of anyone
    else."""
    legacy = sweep_legacy(settings.state_dir)
    pipeline = Pipeline(settings)
    daemons = len(pipeline.daemons.observe(HostState()).daemons)
    result = pipeline.run(HostState())
    return CleanupReport(daemons + legacy, result.changes, result.errors)


def build_pipeline(settings: AgentSettings) -> Pipeline:
    sweep_legacy(settings.state_dir)
    return Pipeline(settings)
