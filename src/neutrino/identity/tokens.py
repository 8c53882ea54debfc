"""Builtin tokens: issue (password or token method), resolve, revoke; the token body and the catalog.

A token is 32 random bytes (URL-safe base64); the database keeps only its SHA-256, with scope, expiry
and a revoked flag. Resolution re-reads the user, the project and the grants, so disabling a user or a
project, or removing a user's last role on the project, ends its tokens as in Keystone. Everything here
is synchronous and does database I/O: call it from a thread.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
import threading
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection

from neutrino.config import Config
from neutrino.context import RequestContext
from neutrino.db.engine import Database
from neutrino.identity import store
from neutrino.identity.cache import Clock, token_key, utc
from neutrino.identity.passwords import burn_time, verify_password
from neutrino.identity.store import Project, ProjectId, Role, TokenRecord, User
from neutrino.identity.wire import bad_request, timestamp, unauthorized

PURGE_EVERY_SECONDS = 3600.0
SUPPORTED_METHODS = frozenset({"password", "token"})
DOMAIN_REF = {"id": store.DEFAULT_DOMAIN_ID, "name": store.DEFAULT_DOMAIN_NAME}


@dataclass(frozen=True, slots=True)
class Resolved:
    """A valid token with everything a request context or a token body needs."""

    record: TokenRecord
    user: User
    project: Project | None
    roles: tuple[Role, ...]

    def context(self, token: str = "") -> RequestContext:
        return RequestContext(user_id=self.user.id, user_name=self.user.name,
                              project_id=self.project.id if self.project else "",
                              project_name=self.project.name if self.project else "",
                              roles=frozenset(r.name for r in self.roles), auth_token=token)


def mapping(value: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise bad_request(f"Expecting to find {what} in request body.")
    return value


def text(ref: Mapping[str, Any], key: str, what: str) -> str:
    """``ref[key]`` when it is a string, else 400: an id or name of another type names nothing."""
    value = ref[key]
    if not isinstance(value, str):
        raise bad_request(f"Invalid input for field '{key}' of {what}: expected a string.")
    return value


def domain_id(ref: Any) -> str | None:
    """The id of the domain a ``{"id"}`` or ``{"name"}`` reference names, or None if there is no such domain.

    Names match case-insensitively, as they do on a Keystone backed by MySQL.
    """
    if ref is None:
        return store.DEFAULT_DOMAIN_ID
    ref = mapping(ref, "domain")
    if "id" in ref:
        return store.DEFAULT_DOMAIN_ID if text(ref, "id", "domain") == store.DEFAULT_DOMAIN_ID else None
    if "name" in ref:
        return store.DEFAULT_DOMAIN_ID if text(ref, "name", "domain").lower() == "default" else None
    raise bad_request("Expecting to find id or name in domain.")


class TokenIssuer:
    def __init__(self, cfg: Config, db: Database, clock: Clock = time.time) -> None:
        self.cfg = cfg
        self.db = db
        self.clock = clock
        self.ttl = dt.timedelta(seconds=cfg.identity.token_ttl_seconds)
        self._purged = time.monotonic()  # bootstrap has just purged
        self._purge_lock = threading.Lock()

    # -- issue -------------------------------------------------------------------------------------------
    def issue(self, auth: Any) -> tuple[str, dict[str, Any]]:
        """``POST /v3/auth/tokens`` with the ``auth`` object: the new token and its body."""
        auth = mapping(auth, "auth")
        ident = mapping(auth.get("identity"), "identity")
        methods = ident.get("methods")
        if not isinstance(methods, list) or not methods or not all(isinstance(m, str) for m in methods):
            raise bad_request("Expecting to find methods in identity.")
        if not set(methods) <= SUPPORTED_METHODS:
            raise unauthorized(f"Unsupported authentication method(s): {', '.join(sorted(set(methods)))}.")
        methods = list(dict.fromkeys(methods))  # ["password", "password"] is one method
        now = self.now()
        parent: Resolved | None = None
        with self.db.read() as conn:
            if "password" in methods:
                user, project_id = self._password(conn, mapping(ident.get("password"), "password")), None
            else:
                parent = self._parent(conn, mapping(ident.get("token"), "token"), now)
                user, project_id = parent.user, parent.project.id if parent.project else None
            project_id = self._scope(conn, user, auth, project_id)
        token = secrets.token_urlsafe(32)
        record = self._record(token_key(token), user, project_id, methods, parent, now)

        def save(conn: Connection) -> dict[str, Any]:
            store.insert_token(conn, record)
            resolved = self.resolve(conn, record.token_hash, now)
            if resolved is None:  # the grant vanished between the read and the write
                raise unauthorized()
            return self.body(resolved)

        body = self.db.write(save)
        self._maybe_purge()
        return token, body

    def _password(self, conn: Connection, password: Mapping[str, Any]) -> User:
        ref = mapping(password.get("user"), "user")
        secret = ref.get("password")
        if not isinstance(secret, str):
            raise bad_request("Expecting to find password in user.")
        user: User | None = None
        if "id" in ref:
            user = store.get_user(conn, text(ref, "id", "user"))
        elif "name" in ref:
            domain = domain_id(ref.get("domain"))
            found = store.list_users(conn, name=text(ref, "name", "user"), domain_id=domain) if domain else []
            user = found[0] if found else None
        else:
            raise bad_request("Expecting to find id or name in user.")
        if user is None:
            burn_time(secret)
            raise unauthorized()
        if not verify_password(secret, user.password_hash) or not user.enabled:
            raise unauthorized()
        return user

    def _parent(self, conn: Connection, token: Mapping[str, Any], now: dt.datetime) -> Resolved:
        value = token.get("id")
        if not isinstance(value, str):
            raise bad_request("Expecting to find id in token.")
        parent = self.resolve(conn, token_key(value), now)
        if parent is None:
            raise unauthorized()
        return parent

    def _scope(self, conn: Connection, user: User, auth: Mapping[str, Any],
               current: ProjectId | None) -> ProjectId | None:
        """The project the new token is scoped to, or None for an unscoped token."""
        scope = auth.get("scope")
        if scope == "unscoped":
            return None
        if scope is None:
            if current is not None:
                return current  # re-issuing a scoped token keeps its scope
            default = user.default_project_id
            return default if default and self._may_use(conn, user.id, default) else None
        scope = mapping(scope, "scope")
        if "project" not in scope:
            raise unauthorized("Only project scope is supported by this identity service.")
        ref = mapping(scope["project"], "project")
        if "id" in ref:
            project = store.get_project(conn, text(ref, "id", "project"))
        elif "name" in ref:
            domain = domain_id(ref.get("domain"))
            found = store.list_projects(conn, name=text(ref, "name", "project"), domain_id=domain) if domain else []
            project = found[0] if found else None
        else:
            raise bad_request("Expecting to find id or name in project.")
        if project is None or not self._may_use(conn, user.id, project.id):
            raise unauthorized(f"User {user.id} has no access to project {ref.get('id') or ref.get('name')}.")
        return project.id

    @staticmethod
    def _may_use(conn: Connection, user_id: str, project_id: str) -> bool:
        project = store.get_project(conn, project_id)
        return project is not None and project.enabled and bool(store.assigned_roles(conn, user_id, project_id))

    def _record(self, token_hash: str, user: User, project_id: ProjectId | None, methods: list[str],
                parent: Resolved | None, now: dt.datetime) -> TokenRecord:
        record = TokenRecord(token_hash, user.id, project_id, tuple(methods), secrets.token_urlsafe(16)[:22],
                             now, now + self.ttl, False)
        if parent is None:
            return record
        # A re-scoped token never outlives the token it came from.
        return dataclasses.replace(record, methods=tuple(dict.fromkeys([*methods, *parent.record.methods])),
                                   expires_at=min(record.expires_at, parent.record.expires_at))

    def _maybe_purge(self) -> None:
        if time.monotonic() - self._purged < PURGE_EVERY_SECONDS or not self._purge_lock.acquire(blocking=False):
            return
        try:
            self._purged = time.monotonic()
            self.db.write(lambda conn: store.purge_expired_tokens(conn, self.now()))
        finally:
            self._purge_lock.release()

    def now(self) -> dt.datetime:
        return utc(self.clock)

    # -- resolve and revoke ----------------------------------------------------------------------------
    def resolve(self, conn: Connection, token_hash: str, now: dt.datetime) -> Resolved | None:
        record = store.get_token(conn, token_hash)
        if record is None or not record.valid_at(now):
            return None
        user = store.get_user(conn, record.user_id)
        if user is None or not user.enabled:
            return None
        if record.project_id is None:
            return Resolved(record, user, None, ())
        project = store.get_project(conn, record.project_id)
        roles = store.effective_roles(conn, user.id, record.project_id)
        if project is None or not project.enabled or not roles:
            return None
        return Resolved(record, user, project, tuple(roles))

    def lookup(self, token: str) -> Resolved | None:
        with self.db.read() as conn:
            return self.resolve(conn, token_key(token), self.now())

    def revoke(self, token: str) -> None:
        self.db.write(lambda conn: store.revoke_token(conn, token_key(token)))

    # -- wire shapes -----------------------------------------------------------------------------------
    def body(self, resolved: Resolved, catalog: bool = True) -> dict[str, Any]:
        r, user = resolved.record, resolved.user
        body: dict[str, Any] = {
            "methods": list(r.methods), "audit_ids": [r.audit_id],
            "issued_at": timestamp(r.issued_at), "expires_at": timestamp(r.expires_at),
            "user": {"id": user.id, "name": user.name, "domain": DOMAIN_REF, "password_expires_at": None},
        }
        if resolved.project is not None:
            p = resolved.project
            body.update({
                "project": {"id": p.id, "name": p.name, "domain": DOMAIN_REF},
                "is_domain": False,
                "roles": [{"id": role.id, "name": role.name} for role in resolved.roles],
            })
            if catalog:
                body["catalog"] = self.catalog()
        return {"token": body}

    def catalog(self) -> list[dict[str, Any]]:
        region = self.cfg.identity.region
        public = self.cfg.public_url

        def service(kind: str, name: str, url: str) -> dict[str, Any]:
            endpoints = [{"id": uuid.uuid5(uuid.NAMESPACE_URL, f"{url}#{iface}").hex, "interface": iface,
                          "region": region, "region_id": region, "url": url}
                         for iface in ("public", "internal", "admin")]
            return {"id": uuid.uuid5(uuid.NAMESPACE_URL, f"{public}#{kind}").hex, "type": kind, "name": name,
                    "endpoints": endpoints}

        return [service("network", "neutron", public), service("identity", "keystone", f"{public}/identity/v3")]
