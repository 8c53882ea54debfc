"""What an agent tells the server: who it is (every heartbeat) and which of its ports are wired."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from neutrino.intent.model import AgentType, FloatingIpId, PortId


@dataclass(frozen=True, slots=True)
class AgentReport:
    """What a host's agent says about itself on every heartbeat."""
    host: str
    agent_type: AgentType
    configurations: dict[str, Any] = field(default_factory=dict)
    availability_zone: str | None = "nova"
    start_flag: bool = False  # the agent (re)started: started_at moves
    # The feed revision of the last snapshot the agent applied in full (0: none yet); the server keeps the
    # change feed above the lowest of the live agents'.
    revision: int = 0


@dataclass(frozen=True, slots=True)
class PortStatus:
    """An agent's ports on its host: wired (ACTIVE) and not (DOWN); and the floating IPs of its routers:
    applied (ACTIVE: their router's NAT table is in place as compiled) or not (DOWN)."""
    host: str
    active: tuple[PortId, ...] = ()
    down: tuple[PortId, ...] = ()
    active_floating_ips: tuple[FloatingIpId, ...] = ()
    down_floating_ips: tuple[FloatingIpId, ...] = ()
