"""The agent's ``IntentSource`` over HTTP: ``/agent-api/v1`` with an admin token (a remote ``neutrino
agent``). In ``neutrino up`` the server's own ``sync.channel.Channel`` is the source, in-process."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from neutrino.intent import codec
from neutrino.intent.model import Snapshot
from neutrino.intent.report import AgentReport, PortStatus


def client_for(url: str, timeout: float = 70) -> httpx.AsyncClient:
    """An HTTP client for ``http(s)://…`` or ``unix:/path/to.sock`` (the server's local socket)."""
    if url.startswith("unix:"):
        transport = httpx.AsyncHTTPTransport(uds=url.removeprefix("unix:"))
        return httpx.AsyncClient(transport=transport, base_url="http://neutrino", timeout=timeout)
    return httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout)


async def password_token(base: str, path: str, user: str, password: str, project: str) -> str:
    """A project-scoped token by Keystone v3 password auth at ``base`` + ``path`` + ``/auth/tokens``
    (``base`` is an http(s) URL or ``unix:/path.sock``; ``path`` e.g. ``/identity/v3`` or "")."""
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"name": "Default"}, "password": password}}},
        "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}}
    async with client_for(base, 30) as client:
        resp = await client.post(f"{path.rstrip('/')}/auth/tokens", json=body)
        resp.raise_for_status()
        return resp.headers["X-Subject-Token"]


class HttpSource:
    """A remote server; ``get_token`` returns a valid admin token and is asked again after a 401."""

    def __init__(self, url: str, get_token: Callable[[], Awaitable[str]]) -> None:
        self.client = client_for(url)
        self.get_token = get_token
        self.token = ""

    async def _json(self, method: str, path: str, **kw: Any) -> Any:
        for attempt in range(2):
            if not self.token:
                self.token = await self.get_token()
            resp = await self.client.request(method, path, headers={"X-Auth-Token": self.token}, **kw)
            if resp.status_code == 401 and attempt == 0:
                self.token = ""
                continue
            resp.raise_for_status()
            return resp.json()
        raise AssertionError("unreachable")

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

