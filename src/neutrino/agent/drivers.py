"""The agent's drivers, in the order a pass runs them (L2 first: dnsmasq lives in namespaces L2 plugs in)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from neutrino.agent.loop import AgentSettings, Driver, DriverResult, Watch
from neutrino.compile.l2 import compile_host
from neutrino.compile.state import HostState
from neutrino.config import Config
from neutrino.dataplane import l2
from neutrino.dataplane import netlink as nl
from neutrino.dataplane.dnsmasq import DnsmasqSupervisor, ExitWatch
from neutrino.errors import KernelError
from neutrino.intent.model import PortId, Snapshot

log = logging.getLogger("neutrino.agent")
# Links of ours in the host's namespace whose changes wake the agent. ``ns-`` devices live in qdhcp
# namespaces, but each is a veth with a ``tap`` here: deleting either end deletes both.
WATCHED_LINKS = ("brq", "vxlan-", "tap")


class HostWatch:
    """What wakes the agent between passes: a link of ours changing in the host's namespace, or one of
    the dnsmasq processes the last pass left running ending."""

    def __init__(self, dnsmasq: DnsmasqSupervisor) -> None:
        self.dnsmasq = dnsmasq
        self.links = nl.LinkMonitor(WATCHED_LINKS)
        self.exits = ExitWatch()

    def rearm(self) -> bool:
        return self.exits.watch(self.dnsmasq.pids().values())

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
            log.debug("woken by a dnsmasq ending")
            return True
        return False

    def close(self) -> None:
        self.links.close()
        self.exits.close()


@dataclass
class HostDriver:
    """Compile the host's state once per pass, then converge L2 and the DHCP servers to it."""
    settings: AgentSettings
    name: str = "host"
    dnsmasq: DnsmasqSupervisor = field(init=False)
    last_problems: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.dnsmasq = DnsmasqSupervisor(self.settings.state_dir)

    def watch(self) -> Watch:
        return HostWatch(self.dnsmasq)

    def compile(self, snap: Snapshot) -> HostState:
        s = self.settings
        return compile_host(snap, s.host, s.tunnel_ip, s.interface_mappings)

    def reconcile(self, snap: Snapshot) -> DriverResult:
        desired = self.compile(snap)
        if desired.problems != self.last_problems:
            for problem in desired.problems:
                log.warning("cannot realise: %s", problem)
            self.last_problems = desired.problems
        errors = []
        observed = l2.observe(desired)
        ops = l2.diff(desired, observed)
        changes = 0
        if ops:
            log.debug("applying %s", ops)
            try:
                changes += l2.apply(ops)
            except KernelError as exc:
                errors.append(str(exc))
            observed = l2.observe(desired)
        wired: set[PortId] = {PortId(p) for p in l2.wired(desired, observed)}
        # A dnsmasq serving one interface binds its DHCP socket to that device: when the agent had to make
        # the DHCP port's veth again (deleted behind its back), that dnsmasq must start again to serve it.
        made = {op.obj for op in ops if op.action == "veth-add"}
        remade = {pl.port_id for pl in desired.port_links if pl.device in made}
        changes += self._dhcp(desired, remade, errors)
        if errors:
            raise KernelError("; ".join(errors))
        return DriverResult(changes=changes, wired=frozenset(wired), stats={
            "ports": len(desired.plugs) + len(desired.port_links), "dhcp_networks": len(desired.dhcp),
            "dhcp_ports": sum(len(d.hosts) for d in desired.dhcp)})

    def _dhcp(self, desired: HostState, remade: set[PortId], errors: list[str]) -> int:
        changes = 0
        wanted = {d.network_id for d in desired.dhcp}
        fixed: list[Path] = []
        if desired.dhcp:
            try:
                fixed = self.dnsmasq.make_traversable()
            except OSError as exc:
                errors.append(f"dnsmasq state directory: {exc}")
            if fixed:
                log.info("made %s searchable for dnsmasq; running ones reread their files",
                         ", ".join(map(str, fixed)))
        reread = bool(fixed)
        for spec in desired.dhcp:
            try:
                if self.dnsmasq.ensure(spec, restart=spec.port_id in remade, reload=reread):
                    changes += 1
            except (KernelError, OSError) as exc:
                errors.append(f"dnsmasq for {spec.network_id}: {exc}")
        for network_id in sorted(set(self.dnsmasq.observe()) - wanted):
            self.dnsmasq.stop(network_id)
            changes += 1
        return changes


def build_drivers(cfg: Config, settings: AgentSettings) -> list[Driver]:
    return [HostDriver(settings)]
