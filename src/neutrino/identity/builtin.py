"""The builtin identity service: a Keystone v3 subset mounted at ``/identity``.

Enough of Keystone for the stock ``openstack`` CLI, keystoneauth and openstacksdk: version discovery,
password and token authentication with project scope, token validation and revocation, a catalog whose
network endpoint is this server, and the user/project/role calls an operator needs to add tenants
(``admin.py``). API requests are authenticated from an in-memory cache of validated tokens; an entry is
re-checked against the database after ``identity.cache_seconds`` (revocations made through another API
server on the same database show within that time, those made here at once) and never outlives its token.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount

from neutrino.config import Config
from neutrino.context import RequestContext
from neutrino.db.engine import Database
from neutrino.errors import Unauthorized
from neutrino.identity import credentials, store
from neutrino.identity.cache import Clock, TokenCache, token_key
from neutrino.identity.passwords import hash_password, verify_password
from neutrino.identity.tokens import Resolved, TokenIssuer
from neutrino.identity.wire import (
    KeystoneError,
    any_char,
    error_response,
    forbidden,
    header,
    json_body,
    json_response,
    route,
    unauthorized,
)

CACHE_SIZE = 10_000
VERSION_ID = "v3.14"
VERSION_UPDATED = "2020-04-07T00:00:00Z"


class BuiltinIdentity:
    def __init__(self, cfg: Config, db: Database, clock: Clock = time.time) -> None:
        self.cfg = cfg
        self.db = db
        self.tokens = TokenIssuer(cfg, db, clock)
        self.cache: TokenCache[RequestContext] = TokenCache(CACHE_SIZE, clock)
        self.recheck_seconds = float(cfg.identity.cache_seconds)
        mount = Mount("/identity", routes=self._routes())
        mount.path_regex = any_char(mount.path_regex)
        self.routes: BaseRoute | None = mount

    # -- the Identity protocol ---------------------------------------------------------------------------
    def bootstrap(self) -> None:
        """Standard roles, the admin project and user (the password in effect wins), expired tokens out.

        The password is the config's, else the one generated on the first start (``credentials``).
        """
        c = self.cfg.identity
        admin_password = credentials.ensure(self.cfg).value

        def run(conn: Connection) -> None:
            have = {r.name for r in store.list_roles(conn)}
            for name in store.STANDARD_ROLES:
                if name not in have:
                    store.insert_role(conn, name)
            found = store.list_projects(conn, name=c.admin_project, domain_id=store.DEFAULT_DOMAIN_ID)
            if found:
                project_id = found[0].id
            else:
                project_id = store.ProjectId(store.new_id())
                store.insert_project(conn, store.Project(project_id, c.admin_project, store.DEFAULT_DOMAIN_ID,
                                                         "Bootstrap project", True))
            users = store.list_users(conn, name=c.admin_user, domain_id=store.DEFAULT_DOMAIN_ID)
            if not users:
                user_id = store.UserId(store.new_id())
                store.insert_user(conn, store.User(user_id, c.admin_user, store.DEFAULT_DOMAIN_ID, True, project_id,
                                                   hash_password(admin_password)))
            else:
                user_id = users[0].id
                if not verify_password(admin_password, users[0].password_hash):
                    store.update_user(conn, user_id, password_hash=hash_password(admin_password))
                if not users[0].enabled:
                    store.update_user(conn, user_id, enabled=True)
            admin = store.list_roles(conn, name="admin")[0]
            store.grant(conn, user_id, project_id, admin.id)
            store.purge_expired_tokens(conn, self.tokens.now())

        self.db.write(run)

    async def authenticate(self, headers: Mapping[str, str]) -> RequestContext:
        ctx = await self.validate(header(headers, "X-Auth-Token"))
        if ctx is None:
            raise Unauthorized("The request you have made requires authentication.", type="HTTPUnauthorized")
        return ctx

    async def aclose(self) -> None:
        return None

    # -- validation ------------------------------------------------------------------------------------------
    async def validate(self, token: str) -> RequestContext | None:
        """The context of a valid token, from the cache when it can; None for any invalid token."""
        if not token:
            return None
        key = token_key(token)
        ctx = self.cache.get(key)
        if ctx is not None:
            return ctx
        resolved = await run_in_threadpool(self.tokens.lookup, token)
        if resolved is None:
            return None
        ctx = resolved.context(token)
        expires = resolved.record.expires_at.replace(tzinfo=dt.UTC).timestamp()
        self.cache.put(key, ctx, min(expires, self.cache.clock() + self.recheck_seconds))
        return ctx

    async def caller(self, request: Request) -> RequestContext:
        ctx = await self.validate(request.headers.get("x-auth-token", ""))
        if ctx is None:
            raise unauthorized()
        return ctx

    async def admin_caller(self, request: Request) -> RequestContext:
        ctx = await self.caller(request)
        if not ctx.is_admin:
            raise forbidden()
        return ctx

    def forget(self, token: str) -> None:
        self.cache.drop(token_key(token))

    def forget_all(self) -> None:
        """Grants, users or projects changed: every cached context may be stale."""
        self.cache.clear()

    # -- routes ----------------------------------------------------------------------------------------------
    def _routes(self) -> list[BaseRoute]:
        from neutrino.identity.admin import admin_routes

        return [
            route("/", {"GET": self._versions}),
            route("/v3", {"GET": self._version}),
            route("/v3/", {"GET": self._version}),
            route("/v3/auth/tokens", {"POST": self._issue, "GET": self._check, "HEAD": self._check,
                                      "DELETE": self._revoke}),
            route("/v3/auth/projects", {"GET": self._auth_projects}),
            route("/v3/auth/catalog", {"GET": self._auth_catalog}),
            *admin_routes(self),
            route("/{path:path}", fallback=self._unknown),
        ]

    def v3_url(self, request: Request) -> str:
        """Where clients reach ``/identity/v3``: the configured public URL, else the address they used."""
        base = self.cfg.api.public_url.rstrip("/") or f"{request.url.scheme}://{request.url.netloc}"
        return f"{base}/identity/v3"

    def _version_doc(self, request: Request) -> dict[str, Any]:
        return {"id": VERSION_ID, "status": "stable", "updated": VERSION_UPDATED,
                "links": [{"rel": "self", "href": f"{self.v3_url(request)}/"}],
                "media-types": [{"base": "application/json", "type": "application/vnd.openstack.identity-v3+json"}]}

    async def _versions(self, request: Request) -> Response:
        return json_response({"versions": {"values": [self._version_doc(request)]}}, 300)

    async def _version(self, request: Request) -> Response:
        return json_response({"version": self._version_doc(request)})

    async def _unknown(self, request: Request) -> Response:
        return error_response(KeystoneError(404, "The resource could not be found."))

    async def _issue(self, request: Request) -> Response:
        auth = await json_body(request, "auth")
        token, body = await run_in_threadpool(self.tokens.issue, auth)
        return json_response(body, 201, {"X-Subject-Token": token})

    async def _subject(self, request: Request) -> tuple[RequestContext, str, Resolved]:
        """The caller, and the token named by X-Subject-Token, which the caller must own unless admin."""
        caller = await self.caller(request)
        subject = request.headers.get("x-subject-token", "")
        resolved = await run_in_threadpool(self.tokens.lookup, subject) if subject else None
        if resolved is None:
            raise KeystoneError(404, "Could not find token.")
        if not caller.is_admin and caller.user_id != resolved.user.id:
            raise forbidden()
        return caller, subject, resolved

    async def _check(self, request: Request) -> Response:
        _, subject, resolved = await self._subject(request)
        if request.method == "HEAD":
            return Response(status_code=200, headers={"X-Subject-Token": subject})
        body = self.tokens.body(resolved, catalog="nocatalog" not in request.query_params)
        return json_response(body, headers={"X-Subject-Token": subject})

    async def _revoke(self, request: Request) -> Response:
        _, subject, _ = await self._subject(request)
        await run_in_threadpool(self.tokens.revoke, subject)
        self.forget(subject)
        return Response(status_code=204)

    async def _auth_projects(self, request: Request) -> Response:
        caller = await self.caller(request)

        def run() -> list[dict[str, Any]]:
            with self.db.read() as conn:
                return [_project_ref(p) for p in store.user_projects(conn, caller.user_id) if p.enabled]

        return json_response({"projects": await run_in_threadpool(run), "links": {"self": None, "next": None,
                                                                                    "previous": None}})

    async def _auth_catalog(self, request: Request) -> Response:
        caller = await self.caller(request)
        if not caller.project_id:
            raise forbidden()
        return json_response({"catalog": self.tokens.catalog(), "links": {"self": None}})


def _project_ref(p: store.Project) -> dict[str, Any]:
    return {"id": p.id, "name": p.name, "domain_id": p.domain_id, "enabled": p.enabled, "is_domain": False,
            "parent_id": p.domain_id, "description": p.description, "tags": [], "options": {}}

