"""Where an agent gets its intent from and reports back to; the agent cannot tell the server's
in-process implementation from the HTTP one."""

from __future__ import annotations

from typing import Protocol

from neutrino.intent.model import Snapshot
from neutrino.intent.report import AgentReport, PortStatus

# The longest wait for changes a server holds (below common proxy idle timeouts); an agent asks again.
MAX_WAIT_SECONDS = 55.0


class IntentSource(Protocol):
    async def report(self, rep: AgentReport) -> str:
        """Register or refresh the agent; returns its id."""
        ...

    async def wait(self, after: int, timeout: float, host: str = "") -> int:
        """The revision of the newest change after ``after`` that concerns ``host`` (any change: ''), as
        soon as there is one; ``after`` when ``timeout`` runs out first."""
        ...

    async def snapshot(self, host: str, base: Snapshot | None = None) -> Snapshot:
        """The complete intent of ``host``. ``base``: the snapshot the caller holds, which a remote source
        may take unchanged networks from (intent/delta.py) instead of fetching them."""
        ...

    async def port_status(self, status: PortStatus) -> int:
        """Report which of the host's ports are wired; returns how many changed."""
        ...

    async def aclose(self) -> None: ...
