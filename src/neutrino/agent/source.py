"""Where an agent gets its intent from and reports back to: the server, in-process or over HTTP.

Both implement ``IntentSource``; the agent loop cannot tell them apart. ``LocalSource`` calls the API's
own functions (``neutrino up``); ``HttpSource`` speaks ``/agent-api/v1`` with an admin token (a remote
``neutrino agent``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import httpx

from neutrino.agent.model import Snapshot
from neutrino.services.agents import AgentReport
from neutrino.services.ports import set_status
from neutrino.sync import snapshot

if TYPE_CHECKING:
    from neutrino.api.app import Api


class IntentSource(Protocol):
    async def report(self, rep: AgentReport) -> str: ...
    async def wait(self, after: int, timeout: float) -> int: ...
    async def snapshot(self, host: str) -> Snapshot: ...
    async def port_status(self, host: str, active: list[str], down: list[str]) -> None: ...
    async def aclose(self) -> None: ...


class LocalSource:
    """The in-process server (``neutrino up``)."""

    def __init__(self, api: Api) -> None:
        self.api = api

    async def report(self, rep: AgentReport) -> str:
        result: str = await self.api.write(lambda conn: self.api.agent_report(conn, rep))
        return result

    async def wait(self, after: int, timeout: float) -> int:
        return await self.api.feed.wait(after, timeout)

    async def snapshot(self, host: str) -> Snapshot:
        down_after = self.api.cfg.agent.agent_down_seconds
        result: Snapshot = await self.api.read(lambda conn: snapshot.build(conn, host, down_after))
        return result

    async def port_status(self, host: str, active: list[str], down: list[str]) -> None:
        await self.api.write(lambda conn: set_status(conn, host, active, down))

    async def aclose(self) -> None:
        return None


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
        body = {"host": rep.host, "agent_type": rep.agent_type.value, "configurations": rep.configurations,
                "start_flag": rep.start_flag}
        return str((await self._json("POST", "/agent-api/v1/report", json=body))["id"])

    async def wait(self, after: int, timeout: float) -> int:
        data = await self._json("GET", "/agent-api/v1/wait", params={"after": after, "timeout": timeout})
        return int(data["revision"])

    async def snapshot(self, host: str) -> Snapshot:
        return snapshot.from_json(await self._json("GET", "/agent-api/v1/snapshot", params={"host": host}))

    async def port_status(self, host: str, active: list[str], down: list[str]) -> None:
        await self._json("POST", "/agent-api/v1/port-status", json={"host": host, "active": active, "down": down})

    async def aclose(self) -> None:
        await self.client.aclose()

