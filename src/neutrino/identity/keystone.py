"""External Keystone: validate each caller's token against a real Keystone, with a small cache.

neutrino logs in with the configured service credentials, then asks ``GET /v3/auth/tokens``
(``X-Subject-Token``) about callers' tokens: 200 is a valid token, 404 an invalid one (-> Unauthorized).
A validated token is trusted for ``identity.cache_seconds`` and never past its own expiry; an invalid one
is remembered as invalid for as long (a token never becomes valid again). Concurrent requests with the
same uncached token share one validation. Keystone being unreachable or refusing neutrino's own
credentials is a 503, not the caller's fault. Roles map as everywhere: admin > member > reader.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Mapping
from typing import Any

import httpx
from starlette.routing import BaseRoute

from neutrino.config import Config
from neutrino.context import RequestContext
from neutrino.errors import ServiceUnavailable, Unauthorized
from neutrino.identity.cache import Clock, TokenCache, token_key
from neutrino.identity.store import expand_roles
from neutrino.identity.wire import header

log = logging.getLogger(__name__)

CACHE_SIZE = 10_000
SERVICE_TOKEN_MARGIN = 60.0  # renew neutrino's own token this long before it expires


def _expiry(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def v3_url(auth_url: str) -> str:
    url = auth_url.rstrip("/")
    return url if url.endswith("/v3") else f"{url}/v3"


def context_from_token(data: Mapping[str, Any], token: str = "") -> RequestContext:
    """A request context from the body of a Keystone token (``{"token": ...}``'s inside)."""
    project = data.get("project") or {}
    user = data.get("user") or {}
    return RequestContext(user_id=str(user.get("id", "")), user_name=str(user.get("name", "")),
                          project_id=str(project.get("id", "")), project_name=str(project.get("name", "")),
                          roles=expand_roles(str(r.get("name", "")) for r in data.get("roles", [])),
                          auth_token=token)


def _unauthorized() -> Unauthorized:
    return Unauthorized("The request you have made requires authentication.", type="HTTPUnauthorized")


class KeystoneIdentity:
    routes: BaseRoute | None = None

    def __init__(self, cfg: Config, client: httpx.AsyncClient | None = None, clock: Clock = time.time) -> None:
        self.cfg = cfg.identity
        self.url = v3_url(self.cfg.auth_url)
        self.client = client or httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=5.0))
        self.clock = clock
        self.valid: TokenCache[RequestContext] = TokenCache(CACHE_SIZE, clock)
        self.invalid: TokenCache[bool] = TokenCache(CACHE_SIZE, clock)
        self.validations = 0  # token validations sent to Keystone (for status and tests)
        self._inflight: dict[str, asyncio.Future[RequestContext | None]] = {}
        self._service_token = ""
        self._service_until = 0.0
        self._service_lock = asyncio.Lock()

    def bootstrap(self) -> None:
        return None

    async def aclose(self) -> None:
        await self.client.aclose()

    async def authenticate(self, headers: Mapping[str, str]) -> RequestContext:
        token = header(headers, "X-Auth-Token")
        if not token:
            raise _unauthorized()
        key = token_key(token)
        ctx = self.valid.get(key)
        if ctx is not None:
            return ctx
        if self.invalid.get(key):
            raise _unauthorized()
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._fetch(token, key))
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        ctx = await asyncio.shield(task)
        if ctx is None:
            raise _unauthorized()
        return ctx

    async def _fetch(self, token: str, key: str) -> RequestContext | None:
        data = await self._validate(token)
        now = self.clock()
        if data is None:
            self.invalid.put(key, True, now + self.cfg.cache_seconds)
            return None
        ctx = context_from_token(data, token)
        self.valid.put(key, ctx, min(now + self.cfg.cache_seconds, _expiry(str(data["expires_at"]))))
        return ctx

    async def _validate(self, token: str) -> dict[str, Any] | None:
        """Keystone's view of the token: its body, or None if Keystone says it is not a valid token."""
        for attempt in range(2):
            service = await self._service(renew=attempt > 0)
            try:
                resp = await self.client.get(f"{self.url}/auth/tokens",
                                             headers={"X-Auth-Token": service, "X-Subject-Token": token})
            except httpx.HTTPError as exc:
                raise ServiceUnavailable(f"Keystone at {self.url} cannot be reached: {exc}") from exc
            self.validations += 1
            if resp.status_code == 200:
                body: dict[str, Any] = resp.json()["token"]
                return body
            if resp.status_code == 404:
                return None
            if resp.status_code == 401 and attempt == 0:
                continue  # neutrino's own token expired or was revoked: log in again and retry once
            raise ServiceUnavailable(f"Keystone refused to validate tokens for neutrino: HTTP {resp.status_code}")
        raise AssertionError("unreachable")

    async def _service(self, renew: bool = False) -> str:
        async with self._service_lock:
            if renew or self.clock() >= self._service_until:
                self._service_token, self._service_until = await self._login()
            return self._service_token

    async def _login(self) -> tuple[str, float]:
        c = self.cfg
        body = {"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": c.service_user, "domain": {"name": c.service_user_domain}, "password": c.service_password}}},
            "scope": {"project": {"name": c.service_project, "domain": {"name": c.service_project_domain}}}}}
        try:
            resp = await self.client.post(f"{self.url}/auth/tokens", json=body)
        except httpx.HTTPError as exc:
            raise ServiceUnavailable(f"Keystone at {self.url} cannot be reached: {exc}") from exc
        if resp.status_code != 201:
            log.error("cannot log in to Keystone as %s: HTTP %s", c.service_user, resp.status_code)
            raise ServiceUnavailable(f"neutrino cannot log in to Keystone as {c.service_user}: "
                                     f"HTTP {resp.status_code}")
        until = _expiry(resp.json()["token"]["expires_at"]) - SERVICE_TOKEN_MARGIN
        return resp.headers["X-Subject-Token"], until
