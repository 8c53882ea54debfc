"""Start an agent: in-process next to the API server (``neutrino up``) or alone (``neutrino agent``)."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

from neutrino.agent.loop import Agent, AgentSettings, Driver
from neutrino.agent.source import HttpSource
from neutrino.client import Client, agent_credentials
from neutrino.config import Config
from neutrino.dataplane import ownership as own
from neutrino.intent.source import IntentSource

log = logging.getLogger("neutrino.agent")


def default_tunnel_ip() -> str:
    """The source address this host would use to reach the outside: its VXLAN endpoint by default."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET address: nothing is sent for a UDP connect
            return str(s.getsockname()[0])
        except OSError:
            return "127.0.0.1"


def settings(cfg: Config) -> AgentSettings:
    return AgentSettings(
        host=cfg.agent.host or socket.gethostname(),
        tunnel_ip=cfg.agent.local_ip or default_tunnel_ip(),
        interface_mappings=dict(cfg.agent.physical_interface_mappings),
        state_dir=Path(cfg.state_dir).resolve() / "agent",
        owner=own.owner_id(Path(cfg.state_dir).resolve()),
        heartbeat_seconds=cfg.agent.heartbeat_seconds,
        resync_seconds=cfg.agent.resync_seconds,
    )


def drivers(cfg: Config, s: AgentSettings) -> list[Driver]:
    from neutrino.agent.pipeline import build_pipeline

    return [build_pipeline(s)]


def build(cfg: Config, source: IntentSource | None = None) -> Agent:
    """The agent of this host, reading from ``source`` (the server in-process, ``neutrino up``) or, when
    none is given, from ``agent.server_url`` over HTTP (a stand-alone ``neutrino agent``; several URLs: it
    fails over between them)."""
    s = settings(cfg)
    if source is None:
        urls = cfg.agent.server_urls()
        if not urls:
            raise ValueError("agent.server_url is required for a stand-alone agent")
        source = HttpSource([Client(u, agent_credentials(cfg, u)) for u in urls])
    return Agent(source, s, drivers(cfg, s))


async def run(agent: Agent, stop: asyncio.Event) -> None:
    log.info("agent for host %s (tunnel %s) starting", agent.settings.host, agent.settings.tunnel_ip)
    try:
        await agent.run(stop)
    finally:
        await agent.source.aclose()
