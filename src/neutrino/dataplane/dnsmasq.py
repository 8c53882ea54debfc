"""Read-only view of this neutrino's dnsmasq processes, for ``neutrino status``.

dnsmasq is a ``DaemonSpec`` kind (compile/dhcp.py) run by the generic supervisor (dataplane/daemons.py);
``<state>/agent/dhcp`` points at its directories. Kept for callers outside the agent (cli.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from neutrino.dataplane.daemons import RealProcesses


@dataclass(frozen=True, slots=True)
class DnsmasqState:
    network_id: str
    pid: int | None


class DnsmasqSupervisor:
    def __init__(self, state_dir: Path) -> None:
        self.root = state_dir / "dhcp"

    def observe(self) -> dict[str, DnsmasqState]:
        if not self.root.is_dir():
            return {}
        out = {}
        for d in sorted(p for p in self.root.iterdir() if p.is_dir()):
            pid: int | None = None
            try:
                found = int((d / "pid").read_text().strip())
                cmdline = RealProcesses().cmdline(found) or ()
                if any(str(d.resolve()) + "/" in a for a in cmdline):
                    pid = found
            except (OSError, ValueError):
                pass
            out[d.name] = DnsmasqState(d.name, pid)
        return out
