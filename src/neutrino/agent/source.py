"""The agent's ``IntentSource`` over HTTP: ``/agent-api/v1`` with an admin token (a remote ``neutrino
agent``). In ``neutrino up`` the server's own ``sync.channel.Channel`` is the source, in-process.

Given several servers (they share one database, so any of them answers the same), the agent stays with
the one that works and moves to the next when it cannot be reached, answers 5xx (503: it is shutting
down) or times out; the call is then made again there. A 4xx is an answer, not a reason to move.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from neutrino.client import Client
from neutrino.errors import ClientError
from neutrino.intent import codec, delta
from neutrino.intent.model import NetworkId, Snapshot
from neutrino.intent.report import AgentReport, PortStatus

log = logging.getLogger("neutrino.agent")
WAIT_MARGIN = 15.0  # seconds a long poll may take beyond its own timeout before the server counts as gone


class HttpSource:
    """Remote servers, one ``neutrino.client.Client`` each (its own token, asked again after a 401)."""

    def __init__(self, clients: Sequence[Client]) -> None:
        if not clients:
            raise ValueError("no server to talk to")
        self.clients = list(clients)
        self.current = 0
        self.failovers = 0
        self.kept = 0  # networks taken from the snapshot held instead of the wire (intent/delta.py)

    @property
    def client(self) -> Client:
        return self.clients[self.current]

    async def _json(self, method: str, path: str, **kw: Any) -> Any:
        last: ClientError | None = None
        for _ in range(len(self.clients)):
            at = self.current
            client = self.clients[at]
            try:
                return await client.call(method, path, **kw)
            except ClientError as exc:
                if exc.status is not None and exc.status < 500:
                    raise
                last = exc
                if len(self.clients) == 1:
                    break
                # Calls made at once (the long poll, a snapshot, a heartbeat) fail at once when their server
                # dies: the first moves the agent on, the others follow it instead of moving it again.
                if self.current == at:
                    self.current = (at + 1) % len(self.clients)
                    self.failovers += 1
                    log.warning("server %s: %s; moving to %s", client.url, exc, self.clients[self.current].url)
        assert last is not None
        raise last

    async def report(self, rep: AgentReport) -> str:
        return str((await self._json("POST", "/agent-api/v1/report", json=codec.encode(rep)))["id"])

    async def wait(self, after: int, timeout: float, host: str = "") -> int:
        params: dict[str, Any] = {"after": after, "timeout": timeout}
        if host:
            params["host"] = host
        data = await self._json("GET", "/agent-api/v1/wait", params=params, timeout=timeout + WAIT_MARGIN)
        return int(data["revision"])

    async def snapshot(self, host: str, base: Snapshot | None = None) -> Snapshot:
        path = "/agent-api/v1/snapshot"
        if base is None:
            return codec.decode(Snapshot, await self._json("GET", path, params={"host": host}))
        data = await self._json("GET", path, params={"host": host, "since": base.revision})
        kept = [NetworkId(n) for n in data.pop("kept", ())]
        merged = delta.merge(base, codec.decode(Snapshot, data), kept, host)
        if merged is None:
            log.info("snapshot at revision %s: cannot keep %d networks from mine; fetching all of it",
                     data.get("revision"), len(kept))
            return await self.snapshot(host)
        self.kept += len(kept)
        return merged

    async def port_status(self, status: PortStatus) -> int:
        return int((await self._json("POST", "/agent-api/v1/port-status", json=codec.encode(status)))["changed"])

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()

