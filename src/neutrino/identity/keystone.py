"""External Keystone: validate each caller's token against a real Keystone, with a small cache.

neutrino authenticates itself with the configured service credentials, then asks
``GET /v3/auth/tokens`` (X-Subject-Token) about callers' tokens. A validated token is trusted for
``identity.cache_seconds`` (and never past its own expiry); Keystone's roles admin/member/reader map
onto the same policy defaults as the builtin identity.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import time
from collections.abc import Mapping
from typing import Any

import httpx
from starlette.routing import BaseRoute

from neutrino.config import Config
from neutrino.context import RequestContext
from neutrino.errors import Unauthorized

MAX_CACHE = 10_000


def _expiry(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class KeystoneIdentity:
    routes: BaseRoute | None = None

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg.identity
        self.auth_url = self.cfg.auth_url.rstrip("/")
        self.client = httpx.AsyncClient(timeout=10)
        self._service_token = ""
        self._cache: dict[str, tuple[RequestContext, float]] = {}  # hash -> (ctx, valid until)
        self.validations = 0  # calls made to Keystone (observable for tests and status)

    def bootstrap(self) -> None:
        return None

    async def aclose(self) -> None:
        await self.client.aclose()

    async def _service(self, refresh: bool = False) -> str:
        if self._service_token and not refresh:
            return self._service_token
        c = self.cfg
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": c.service_user, "domain": {"name": c.service_user_domain}, "password": c.service_password}}},
            "scope": {"project": {"name": c.service_project, "domain": {"name": c.service_project_domain}}}}}
        resp = await self.client.post(f"{self.auth_url}/auth/tokens", json=body)
        if resp.status_code != 201:
            raise Unauthorized(f"neutrino cannot authenticate to Keystone as {c.service_user}: HTTP "
                               f"{resp.status_code}", type="ServiceUnavailable")
        self._service_token = resp.headers["X-Subject-Token"]
        return self._service_token

    async def authenticate(self, headers: Mapping[str, str]) -> RequestContext:
        token = headers.get("x-auth-token")
        if not token:
            raise Unauthorized("The request you have made requires authentication.", type="HTTPUnauthorized")
        key = hashlib.sha256(token.encode()).hexdigest()
        hit = self._cache.get(key)
        if hit is not None and hit[1] > time.time():
            return hit[0]
        data = await self._validate(token)
        if data is None:
            self._cache.pop(key, None)
            raise Unauthorized("The request you have made requires authentication.", type="HTTPUnauthorized")
        ctx = self._context(data)
        if len(self._cache) >= MAX_CACHE:
            self._cache.clear()
        self._cache[key] = (ctx, min(time.time() + self.cfg.cache_seconds, _expiry(data["expires_at"])))
        return ctx

    async def _validate(self, token: str) -> dict[str, Any] | None:
        for attempt in range(2):
            service = await self._service(refresh=attempt > 0)
            self.validations += 1
            resp = await self.client.get(f"{self.auth_url}/auth/tokens",
                                         headers={"X-Auth-Token": service, "X-Subject-Token": token})
            if resp.status_code == 200:
                body: dict[str, Any] = resp.json()["token"]
                return body
            if resp.status_code == 401 and attempt == 0:
                continue  # our own token expired: get a new one and ask again
            return None
        return None

    @staticmethod
    def _context(data: dict[str, Any]) -> RequestContext:
        project = data.get("project") or {}
        names = {r["name"].lower() for r in data.get("roles", [])}
        if "admin" in names:
            names |= {"member", "reader"}
        if "member" in names:
            names.add("reader")
        return RequestContext(user_id=data["user"]["id"], user_name=data["user"].get("name", ""),
                              project_id=project.get("id", ""), project_name=project.get("name", ""),
                              roles=frozenset(names))
