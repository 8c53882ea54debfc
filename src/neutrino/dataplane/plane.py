"""What every plane of the agent's pipeline offers (links, nft, daemons; routes later).

A plane observes its part of the host (``part``), diffs it against the one compiled ``HostState`` and
applies the difference as typed operations of its own. ``names`` are the ports the plane has a say in; a port is
reported ACTIVE only when every plane that names it has it ready (intersection: e.g. never before its
filter exists). A plane that fails raises after attempting all its operations; the pipeline goes on with
the next plane.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

from neutrino.compile.state import HostState
from neutrino.intent.model import PortId

Made = frozenset[tuple[str | None, str]]  # (namespace, link) made anew by an earlier plane this pass


@dataclass(frozen=True, slots=True)
class PlaneResult:
    changes: int = 0
    ready: frozenset[PortId] = frozenset()
    made: Made = frozenset()
    stats: dict[str, Any] = field(default_factory=dict)


class Plane(Protocol):
    name: str

    # True when what this plane changes never matters to the planes after it (nft tables: no link, route,
    # sysctl or daemon depends on them), so its changes do not make them run in a quiet pass (Pipeline).
    leaf: bool

    def names(self, desired: HostState) -> Collection[PortId]: ...

    def part(self, desired: HostState) -> object:
        """What of ``desired`` this plane acts on (compared with ``==`` between passes)."""
        ...

    def sync(self, desired: HostState, made: Made) -> PlaneResult:
        """observe -> diff -> apply; raises (KernelError) when some of it failed."""
        ...
