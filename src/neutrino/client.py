"""The REST client of neutrino's own tools: the CLI, lab instances and a remote agent's ``HttpSource``.

One ``Client`` per server: an ``http(s)://…`` URL or ``unix:/path/neutrino.sock`` (the local socket of
``neutrino up``), a Keystone v3 password token fetched on first use and once more after a 401, and every
failure turned into one ``ClientError`` whose message is a single line fit for a terminal: the server
down, the credentials refused, a Neutron fault body (``{"NeutronError": {"message": …}}``), a timeout.

Nothing here imports server code: a remote agent loads this module alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import orjson

from neutrino.errors import ClientError

if TYPE_CHECKING:
    from neutrino.config import Config

TokenSource = Callable[[], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Credentials:
    """Keystone v3 password auth, project-scoped, in the Default domain."""

    username: str
    password: str
    project: str
    auth_url: str  # the identity endpoint, e.g. http://127.0.0.1:9696/identity/v3 or unix:/…sock + path
    auth_path: str = ""  # appended to auth_url (a unix socket URL carries no path)


def client_for(url: str, timeout: float = 70) -> httpx.AsyncClient:
    """An HTTP client for ``http(s)://…`` or ``unix:/path/to.sock`` (the server's local socket)."""
    if url.startswith("unix:"):
        transport = httpx.AsyncHTTPTransport(uds=url.removeprefix("unix:"))
        return httpx.AsyncClient(transport=transport, base_url="http://neutrino", timeout=timeout)
    return httpx.AsyncClient(base_url=url.rstrip("/"), timeout=timeout)


def _unreachable(url: str, exc: httpx.TransportError) -> ClientError:
    if isinstance(exc, httpx.TimeoutException):
        why = "no answer in time"
    elif isinstance(exc, httpx.ConnectError):
        why = "cannot connect (is the server running?)"
    else:
        why = type(exc).__name__
    detail = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
    return ClientError(f"server at {url}: {why}" + (f": {detail}" if detail and detail not in why else ""))


def fault_message(resp: httpx.Response) -> str:
    """The one-line message of an error response: Neutron's and Keystone's fault bodies, else the text."""
    try:
        body = resp.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        for key in ("NeutronError", "error"):  # Neutron, Keystone
            fault = body.get(key)
            if isinstance(fault, dict) and fault.get("message"):
                return " ".join(str(fault["message"]).split())
    text = " ".join(resp.text.split())
    return text[:200] or resp.reason_phrase


async def password_token(creds: Credentials, timeout: float = 30) -> str:
    """A project-scoped token for ``creds``; a refusal is a ClientError naming the user and project."""
    body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
        "name": creds.username, "domain": {"name": "Default"}, "password": creds.password}}},
        "scope": {"project": {"name": creds.project, "domain": {"name": "Default"}}}}}
    path = f"{creds.auth_path.rstrip('/')}/auth/tokens"
    async with client_for(creds.auth_url, timeout) as client:
        try:
            resp = await client.post(path, json=body)
        except httpx.TransportError as exc:
            raise _unreachable(creds.auth_url, exc) from None
    if resp.status_code == 401:
        raise ClientError(f"identity at {creds.auth_url}: user {creds.username!r} (project {creds.project!r}) "
                          f"was refused: wrong password? ({fault_message(resp)})", 401)
    if resp.status_code >= 400 or "X-Subject-Token" not in resp.headers:
        raise ClientError(f"identity at {creds.auth_url}: {resp.status_code} {fault_message(resp)}",
                          resp.status_code)
    return resp.headers["X-Subject-Token"]


class Client:
    """Calls to one server. ``auth``: credentials, a coroutine giving a token, or None (noauth)."""

    def __init__(self, url: str, auth: Credentials | TokenSource | None, timeout: float = 70) -> None:
        self.url = url
        self.http = client_for(url, timeout)
        self._auth = auth
        self.token = ""

    async def _token(self) -> str:
        if isinstance(self._auth, Credentials):
            return await password_token(self._auth)
        assert self._auth is not None
        return await self._auth()

    async def call(self, method: str, path: str, *, anonymous: bool = False, **kw: Any) -> Any:
        """The decoded JSON answer (None when empty); any failure is a one-line ClientError.
        ``anonymous``: send no token (version discovery needs none)."""
        for attempt in range(2):
            if self._auth is not None and not self.token and not anonymous:
                self.token = await self._token()
            headers = {"X-Auth-Token": self.token} if self.token and not anonymous else {}
            try:
                resp = await self.http.request(method, path, headers=headers, **kw)
            except httpx.TransportError as exc:
                raise _unreachable(self.url, exc) from None
            if resp.status_code == 401 and attempt == 0 and self._auth is not None and not anonymous:
                self.token = ""  # expired or revoked: authenticate once more
                continue
            if resp.status_code >= 400:
                raise ClientError(f"{method} {path}: {resp.status_code} {fault_message(resp)}", resp.status_code)
            try:
                return orjson.loads(resp.content) if resp.content else None  # a snapshot: megabytes, often
            except ValueError:
                raise ClientError(f"{method} {path}: the server's answer is not JSON") from None
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


def agent_credentials(cfg: Config, server_url: str | None = None) -> Credentials:
    """The credentials a remote agent (and the tools next to it) use: ``agent.username/password/project``
    at ``agent.auth_url``, else the identity service of the server it talks to (``server_url``: the first
    of ``agent.server_url`` unless given; every server shares the database, and so the identity)."""
    a = cfg.agent
    if a.auth_url:
        return Credentials(a.username, a.password, a.project, a.auth_url)
    url = server_url if server_url is not None else (a.server_urls() or [""])[0]
    return Credentials(a.username, a.password, a.project, url, "/identity/v3")


def for_config(cfg: Config, server_url: str | None = None) -> Client:
    """A client for this configuration's server: ``server_url``, else the first of ``agent.server_url`` when
    set (with the agent's credentials), else the local ``neutrino up`` (its unix socket when present, else
    its public URL) as the identity admin (``identity.admin_password``, or the password generated in the
    state dir)."""
    if server_url is None and cfg.agent.server_url:
        server_url = cfg.agent.server_urls()[0]
    if server_url:
        return Client(server_url, None if cfg.identity.mode == "noauth" else agent_credentials(cfg, server_url))
    sock = Path(cfg.state_dir).resolve() / cfg.api.socket if cfg.api.socket else None
    url = f"unix:{sock}" if sock is not None and sock.exists() else cfg.public_url
    if cfg.identity.mode == "noauth":
        return Client(url, None)
    auth_url, auth_path = (cfg.agent.auth_url, "") if cfg.agent.auth_url else (url, "/identity/v3")

    async def admin_token() -> str:
        # Looked up only when needed, and lazily imported: the agent side never loads identity code.
        from neutrino.identity.credentials import admin_password

        i = cfg.identity
        return await password_token(Credentials(i.admin_user, admin_password(cfg), i.admin_project, auth_url,
                                                auth_path))

    return Client(url, admin_token)
