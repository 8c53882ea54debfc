"""The agent's ``IntentSource`` over HTTP: ``/agent-api/v1`` with an admin token (a remote ``neutrino
agent``). In ``neutrino up`` the server's own ``sync.channel.Channel`` is the source, in-process."""

from __future__ import annotations

from typing import Any

from neutrino.client import Client, Credentials, TokenSource
from neutrino.intent import codec
from neutrino.intent.model import Snapshot
from neutrino.intent.report import AgentReport, PortStatus


class HttpSource:
    """A remote server (``neutrino.client``: a token from ``auth``, asked again after a 401)."""

    def __init__(self, url: str, auth: Credentials | TokenSource) -> None:
        self.client = Client(url, auth)

    async def _json(self, method: str, path: str, **kw: Any) -> Any:
        return await self.client.call(method, path, **kw)

    async def report(self, rep: AgentReport) -> str:
        return str((await self._json("POST", "/agent-api/v1/report", json=codec.encode(rep)))["id"])

    async def wait(self, after: int, timeout: float) -> int:
        data = await self._json("GET", "/agent-api/v1/wait", params={"after": after, "timeout": timeout})
        return int(data["revision"])

    async def snapshot(self, host: str) -> Snapshot:
        return codec.decode(Snapshot, await self._json("GET", "/agent-api/v1/snapshot", params={"host": host}))

    async def port_status(self, status: PortStatus) -> int:
        return int((await self._json("POST", "/agent-api/v1/port-status", json=codec.encode(status)))["changed"])

    async def aclose(self) -> None:
        await self.client.aclose()

