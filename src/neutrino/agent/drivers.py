"""The agent's drivers, in the order a pass runs them (L2 first: DHCP namespaces plug into its bridges)."""

from __future__ import annotations

from neutrino.agent.loop import AgentSettings, Driver
from neutrino.config import Config


def build_drivers(cfg: Config, settings: AgentSettings) -> list[Driver]:
    return []
