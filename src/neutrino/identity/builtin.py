"""The builtin identity service: a Keystone v3 subset at ``/identity``.

Enough of Keystone for the stock ``openstack`` CLI and openstacksdk: version discovery, password and
token authentication with project scope, token validation and revocation, a service catalog whose
network endpoint is this server, and the user/project/role calls an operator needs to add tenants.
Tokens are random; only their SHA-256 is stored, so validation is one indexed lookup, cached in memory.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import secrets
import time
import uuid
from collections.abc import Mapping
from typing import Any

import orjson
from sqlalchemy import Connection, delete, insert, select, update
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route

from neutrino.config import Config
from neutrino.context import RequestContext
from neutrino.db.engine import Database
from neutrino.errors import Unauthorized
from neutrino.identity.passwords import hash_password, verify_password
from neutrino.identity.schema import assignments, projects, roles, tokens, users

DEFAULT_DOMAIN = {"id": "default", "name": "Default"}
STANDARD_ROLES = ("admin", "member", "reader")
CACHE_SECONDS = 10.0  # how long a validated token is trusted without looking at the DB again


class KeystoneError(Exception):
    def __init__(self, code: int, title: str, message: str) -> None:
        super().__init__(message)
        self.code, self.title, self.message = code, title, message


def _json(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def _ts(value: dt.datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S.000000Z")


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _domain_ok(ref: Mapping[str, Any] | None) -> bool:
    if not ref:
        return True
    return bool(ref.get("id", "default") == "default" and ref.get("name", "Default") == "Default")


class BuiltinIdentity:
    def __init__(self, cfg: Config, db: Database) -> None:
        self.cfg = cfg
        self.db = db
        self.public = cfg.public_url
        self._cache: dict[str, tuple[RequestContext, float, float]] = {}  # hash -> (ctx, expires, checked)
        self.routes: BaseRoute | None = Mount("/identity", routes=self._routes())

    # -- bootstrap --------------------------------------------------------------------------------------
    def bootstrap(self) -> None:
        c = self.cfg.identity

        def run(conn: Connection) -> None:
            for name in STANDARD_ROLES:
                if conn.execute(select(roles.c.id).where(roles.c.name == name)).first() is None:
                    conn.execute(insert(roles).values(id=uuid.uuid4().hex, name=name))
            project = conn.execute(select(projects.c.id).where(projects.c.name == c.admin_project)).scalar()
            if project is None:
                project = uuid.uuid4().hex
                conn.execute(insert(projects).values(id=project, name=c.admin_project, domain_id="default",
                                                     description="Bootstrap project", enabled=True))
            user = conn.execute(select(users).where(users.c.name == c.admin_user)).first()
            if user is None:
                user_id = uuid.uuid4().hex
                conn.execute(insert(users).values(id=user_id, name=c.admin_user, domain_id="default",
                                                  password_hash=hash_password(c.admin_password),
                                                  default_project_id=project, enabled=True))
            else:
                user_id = user.id
                if not verify_password(c.admin_password, user.password_hash):  # the config is authoritative
                    conn.execute(update(users).where(users.c.id == user_id)
                                 .values(password_hash=hash_password(c.admin_password)))
            for name in STANDARD_ROLES:
                role_id = conn.execute(select(roles.c.id).where(roles.c.name == name)).scalar_one()
                if conn.execute(select(assignments).where(assignments.c.user_id == user_id,
                                                          assignments.c.project_id == project,
                                                          assignments.c.role_id == role_id)).first() is None:
                    conn.execute(insert(assignments).values(user_id=user_id, project_id=project, role_id=role_id))
            conn.execute(delete(tokens).where(tokens.c.expires_at < _now()))

        self.db.write(run)

    async def aclose(self) -> None:
        return None

    # -- authentication of API requests -----------------------------------------------------------------
    async def authenticate(self, headers: Mapping[str, str]) -> RequestContext:
        token = headers.get("x-auth-token")
        if not token:
            raise Unauthorized("The request you have made requires authentication.", type="HTTPUnauthorized")
        ctx = await self.validate(token)
        if ctx is None:
            raise Unauthorized("The request you have made requires authentication.", type="HTTPUnauthorized")
        return ctx

    async def validate(self, token: str) -> RequestContext | None:
        key = _hash(token)
        now = time.time()
        hit = self._cache.get(key)
        if hit is not None and hit[1] > now and now - hit[2] < CACHE_SECONDS:
            return hit[0]
        found = await run_in_threadpool(self._lookup, key)
        if found is None:
            self._cache.pop(key, None)
            return None
        ctx, expires = found
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[key] = (ctx, expires, now)
        return ctx

    def _lookup(self, key: str) -> tuple[RequestContext, float] | None:
        with self.db.read() as conn:
            row = conn.execute(select(tokens).where(tokens.c.token_hash == key)).first()
            if row is None or row.revoked or row.expires_at <= _now():
                return None
            return self._context(conn, row.user_id, row.project_id), \
                row.expires_at.replace(tzinfo=dt.UTC).timestamp()

    def _context(self, conn: Connection, user_id: str, project_id: str | None) -> RequestContext:
        user = conn.execute(select(users).where(users.c.id == user_id)).one()
        project = conn.execute(select(projects).where(projects.c.id == project_id)).first() if project_id else None
        return RequestContext(user_id=user_id, user_name=user.name, project_id=project_id or "",
                              project_name=project.name if project else "",
                              roles=frozenset(self._roles(conn, user_id, project_id)))

    def _roles(self, conn: Connection, user_id: str, project_id: str | None) -> list[str]:
        if not project_id:
            return []
        names = [r[0] for r in conn.execute(
            select(roles.c.name).join(assignments, assignments.c.role_id == roles.c.id)
            .where(assignments.c.user_id == user_id, assignments.c.project_id == project_id))]
        # Keystone's implied roles: admin implies member, member implies reader.
        if "admin" in names:
            names += ["member", "reader"]
        if "member" in names:
            names.append("reader")
        return sorted(set(names))

    # -- token issue --------------------------------------------------------------------------------------
    def _issue(self, body: Any) -> tuple[str, dict[str, Any]]:
        try:
            auth = body["auth"]
            ident = auth["identity"]
            methods = list(ident["methods"])
        except (KeyError, TypeError):
            raise KeystoneError(400, "Bad Request", "Expecting to find auth identity methods in request.") from None
        with self.db.read() as conn:
            if "password" in methods:
                user = self._password_user(conn, ident.get("password", {}).get("user", {}))
                project_id = None
            elif "token" in methods:
                row = conn.execute(select(tokens).where(
                    tokens.c.token_hash == _hash(str(ident.get("token", {}).get("id", ""))))).first()
                if row is None or row.revoked or row.expires_at <= _now():
                    raise KeystoneError(401, "Unauthorized", "The request you have made requires authentication.")
                user = conn.execute(select(users).where(users.c.id == row.user_id)).one()
                project_id = row.project_id
            else:
                raise KeystoneError(401, "Unauthorized", f"Unsupported authentication methods {methods}.")
            scope = auth.get("scope")
            if scope is not None and scope != "unscoped":
                project_id = self._scope_project(conn, scope)
            elif project_id is None and user.default_project_id:
                project_id = user.default_project_id
            if project_id and not self._roles(conn, user.id, project_id):
                raise KeystoneError(401, "Unauthorized", "User has no access to project.")
        token = secrets.token_urlsafe(32)
        issued = _now()
        expires = issued + dt.timedelta(seconds=self.cfg.identity.token_ttl_seconds)
        audit = secrets.token_urlsafe(16)[:22]

        def store(conn: Connection) -> dict[str, Any]:
            conn.execute(insert(tokens).values(token_hash=_hash(token), user_id=user.id, project_id=project_id,
                                               methods=",".join(methods), audit_id=audit, issued_at=issued,
                                               expires_at=expires, revoked=False))
            return self._token_body(conn, user.id, project_id, methods, issued, expires, audit)

        return token, self.db.write(store)

    def _password_user(self, conn: Connection, ref: Mapping[str, Any]) -> Any:
        stmt = select(users)
        if "id" in ref:
            stmt = stmt.where(users.c.id == ref["id"])
        elif "name" in ref and _domain_ok(ref.get("domain")):
            stmt = stmt.where(users.c.name == ref["name"])
        else:
            raise KeystoneError(401, "Unauthorized", "The request you have made requires authentication.")
        user = conn.execute(stmt).first()
        if user is None or not user.enabled or not verify_password(str(ref.get("password", "")), user.password_hash):
            raise KeystoneError(401, "Unauthorized", "The request you have made requires authentication.")
        return user

    def _scope_project(self, conn: Connection, scope: Any) -> str:
        ref = scope.get("project") if isinstance(scope, dict) else None
        if not isinstance(ref, dict):
            raise KeystoneError(401, "Unauthorized", "Only project scope is supported.")
        stmt = select(projects.c.id, projects.c.enabled)
        if "id" in ref:
            stmt = stmt.where(projects.c.id == ref["id"])
        elif "name" in ref and _domain_ok(ref.get("domain")):
            stmt = stmt.where(projects.c.name == ref["name"])
        else:
            raise KeystoneError(401, "Unauthorized", "Could not find project.")
        row = conn.execute(stmt).first()
        if row is None or not row.enabled:
            raise KeystoneError(401, "Unauthorized", "Could not find project.")
        return str(row.id)

    def _token_body(self, conn: Connection, user_id: str, project_id: str | None, methods: list[str],
                    issued: dt.datetime, expires: dt.datetime, audit: str) -> dict[str, Any]:
        user = conn.execute(select(users).where(users.c.id == user_id)).one()
        body: dict[str, Any] = {
            "methods": methods, "audit_ids": [audit], "issued_at": _ts(issued), "expires_at": _ts(expires),
            "user": {"id": user.id, "name": user.name, "domain": DEFAULT_DOMAIN, "password_expires_at": None},
        }
        if project_id:
            project = conn.execute(select(projects).where(projects.c.id == project_id)).one()
            role_rows = conn.execute(select(roles).where(roles.c.name.in_(self._roles(conn, user_id, project_id))))
            body.update({
                "project": {"id": project.id, "name": project.name, "domain": DEFAULT_DOMAIN},
                "is_domain": False,
                "roles": [{"id": r.id, "name": r.name} for r in role_rows],
                "catalog": self.catalog(),
            })
        return {"token": body}

    def catalog(self) -> list[dict[str, Any]]:
        region = self.cfg.identity.region

        def endpoints(url: str, service: str) -> list[dict[str, str]]:
            return [{"id": uuid.uuid5(uuid.NAMESPACE_URL, f"{service}-{iface}").hex, "interface": iface,
                     "region": region, "region_id": region, "url": url} for iface in ("public", "internal", "admin")]

        return [
            {"id": uuid.uuid5(uuid.NAMESPACE_URL, "network").hex, "type": "network", "name": "neutron",
             "endpoints": endpoints(self.public, "network")},
            {"id": uuid.uuid5(uuid.NAMESPACE_URL, "identity").hex, "type": "identity", "name": "keystone",
             "endpoints": endpoints(f"{self.public}/identity/v3", "identity")},
        ]

    # -- routes ---------------------------------------------------------------------------------------------
    def _routes(self) -> list[BaseRoute]:
        from neutrino.identity.admin import admin_routes

        def version() -> dict[str, Any]:
            return {"id": "v3.14", "status": "stable", "updated": "2020-04-07T00:00:00Z",
                    "links": [{"rel": "self", "href": f"{self.public}/identity/v3/"}],
                    "media-types": [{"base": "application/json",
                                     "type": "application/vnd.openstack.identity-v3+json"}]}

        async def versions(request: Request) -> Response:
            return _json({"versions": {"values": [version()]}}, 300)

        async def v3(request: Request) -> Response:
            return _json({"version": version()})

        async def auth_tokens(request: Request) -> Response:
            try:
                if request.method == "POST":
                    try:
                        body = orjson.loads(await request.body())
                    except orjson.JSONDecodeError:
                        raise KeystoneError(400, "Bad Request", "Malformed request body.") from None
                    token, data = await run_in_threadpool(self._issue, body)
                    return _json(data, 201, {"X-Subject-Token": token})
                caller = await self.validate(request.headers.get("x-auth-token", ""))
                if caller is None:
                    raise KeystoneError(401, "Unauthorized", "The request you have made requires authentication.")
                subject = request.headers.get("x-subject-token", "")
                return await run_in_threadpool(self._subject, request.method, caller, subject)
            except KeystoneError as exc:
                return error(exc)

        return [
            Route("/", versions, methods=["GET"]),
            Route("/v3", v3, methods=["GET"]),
            Route("/v3/", v3, methods=["GET"]),
            Route("/v3/auth/tokens", auth_tokens, methods=["GET", "HEAD", "POST", "DELETE"]),
            *admin_routes(self),
        ]

    def _subject(self, method: str, caller: RequestContext, subject: str) -> Response:
        key = _hash(subject)
        with self.db.read() as conn:
            row = conn.execute(select(tokens).where(tokens.c.token_hash == key)).first()
            if row is None or row.revoked or row.expires_at <= _now():
                raise KeystoneError(404, "Not Found", "Could not find token.")
            if not caller.is_admin and caller.user_id != row.user_id:
                raise KeystoneError(403, "Forbidden", "You are not authorized to perform the requested action.")
            if method == "GET":
                return _json(self._token_body(conn, row.user_id, row.project_id, row.methods.split(","),
                                              row.issued_at, row.expires_at, row.audit_id),
                             headers={"X-Subject-Token": subject})
        if method == "HEAD":
            return Response(status_code=200)
        self.db.write(lambda conn: conn.execute(update(tokens).where(tokens.c.token_hash == key).values(revoked=True)))
        self._cache.pop(key, None)
        return Response(status_code=204)


def error(exc: KeystoneError) -> Response:
    return _json({"error": {"code": exc.code, "title": exc.title, "message": exc.message}}, exc.code)
