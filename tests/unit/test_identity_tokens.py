"""The builtin token lifecycle on a real SQLite file, without HTTP: issue, validate, cache, revoke, expire.

Time is a fake clock the tests advance: expiry and cache rules are checked to the second, never by sleeping.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from neutrino.config import Config
from neutrino.db.engine import Database
from neutrino.db.schema import metadata
from neutrino.errors import Unauthorized
from neutrino.identity import schema, store
from neutrino.identity.builtin import BuiltinIdentity
from neutrino.identity.cache import token_key
from neutrino.identity.wire import KeystoneError


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'identity.db'}")
    metadata.create_all(database.engine)
    try:
        yield database
    finally:
        database.dispose()


@dataclass
class FakeClock:
    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def make(db: Database, clock: FakeClock | None = None, **identity: Any) -> BuiltinIdentity:
    cfg = Config()
    cfg.identity.admin_password = "pw"
    for key, value in identity.items():
        setattr(cfg.identity, key, value)
    ident = BuiltinIdentity(cfg, db, clock or FakeClock())
    ident.bootstrap()
    return ident


def password(user: str = "admin", secret: str = "pw", project: str | None = "admin") -> dict[str, Any]:
    auth: dict[str, Any] = {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"id": "default"}, "password": secret}}}}
    if project is not None:
        auth["scope"] = {"project": {"name": project, "domain": {"name": "Default"}}}
    return auth


def authenticate(ident: BuiltinIdentity, token: str) -> Any:
    return asyncio.run(ident.authenticate({"x-auth-token": token}))


def test_bootstrap_is_idempotent_and_the_config_password_wins(db: Database) -> None:
    make(db)
    make(db)
    with db.read() as conn:
        assert [r.name for r in store.list_roles(conn)] == ["admin", "member", "reader"]
        users = store.list_users(conn)
        assert [u.name for u in users] == ["admin"] and users[0].password_hash.startswith("scrypt$")
        (project,) = store.list_projects(conn)
        assert [r.name for r in store.assigned_roles(conn, users[0].id, project.id)] == ["admin"]
    ident = make(db, admin_password="changed")
    with pytest.raises(KeystoneError):
        ident.tokens.issue(password())
    assert ident.tokens.issue(password(secret="changed"))[0]


def test_issue_validate_revoke(db: Database) -> None:
    ident = make(db)
    token, body = ident.tokens.issue(password())
    assert body["token"]["project"]["name"] == "admin" and body["token"]["methods"] == ["password"]
    ctx = authenticate(ident, token)
    assert ctx.is_admin and ctx.roles == frozenset({"admin", "member", "reader"}) and ctx.user_name == "admin"
    with db.read() as conn:  # only the digest is stored
        assert conn.execute(select(schema.tokens.c.token_hash)).scalars().all() == [token_key(token)]
    ident.tokens.revoke(token)
    ident.forget(token)
    with pytest.raises(Unauthorized):
        authenticate(ident, token)
    for bad in ("", "x" * 43):
        with pytest.raises(Unauthorized):
            authenticate(ident, bad)


def test_cached_contexts_are_rechecked_after_the_interval(db: Database) -> None:
    clock = FakeClock()
    ident = make(db, clock, cache_seconds=30)
    token, _ = ident.tokens.issue(password())
    authenticate(ident, token)
    # Revoked behind this server's back (as by another API server on the same database):
    db.write(lambda conn: store.revoke_token(conn, token_key(token)))
    clock.now += 29
    assert authenticate(ident, token).is_admin  # the cache still trusts it...
    clock.now += 1
    with pytest.raises(Unauthorized):  # ...until the recheck interval has passed
        authenticate(ident, token)


def test_a_token_ends_at_its_ttl_even_when_cached(db: Database) -> None:
    clock = FakeClock()
    ident = make(db, clock, token_ttl_seconds=120, cache_seconds=3600)
    token, body = ident.tokens.issue(password())
    assert body["token"]["expires_at"] == "2023-11-14T22:15:20.000000Z"  # the fake now + 120 s
    authenticate(ident, token)  # cached from here on
    clock.now += 119
    assert authenticate(ident, token).is_admin and ident.tokens.lookup(token) is not None
    child, child_body = ident.tokens.issue({"identity": {"methods": ["token"], "token": {"id": token}}})
    assert child_body["token"]["expires_at"] == body["token"]["expires_at"]  # never outlives its parent
    clock.now += 1
    for expired in (token, child):
        with pytest.raises(Unauthorized):  # the cache entry ends with the token, not at cache_seconds
            authenticate(ident, expired)
        assert ident.tokens.lookup(expired) is None
    with pytest.raises(KeystoneError) as refused:  # nor can it be re-scoped
        ident.tokens.issue({"identity": {"methods": ["token"], "token": {"id": token}}})
    assert refused.value.code == 401
    # A new token, issued at the fake now, lives its own 120 s.
    fresh, _ = ident.tokens.issue(password())
    clock.now += 119
    assert authenticate(ident, fresh).is_admin


def test_expired_tokens_are_refused(db: Database) -> None:
    ident = make(db)
    token, _ = ident.tokens.issue(password())
    past = ident.tokens.now() - dt.timedelta(seconds=1)
    db.write(lambda conn: conn.execute(schema.tokens.update().values(expires_at=past)))
    ident.forget(token)
    with pytest.raises(Unauthorized):
        authenticate(ident, token)
    with pytest.raises(KeystoneError) as refused:  # nor can it be re-scoped
        ident.tokens.issue({"identity": {"methods": ["token"], "token": {"id": token}}})
    assert refused.value.code == 401


def test_rescoped_token_keeps_scope_and_never_outlives_its_parent(db: Database) -> None:
    ident = make(db, token_ttl_seconds=3600)
    token, body = ident.tokens.issue(password())
    soon = ident.tokens.now() + dt.timedelta(seconds=120)
    db.write(lambda conn: conn.execute(schema.tokens.update().values(expires_at=soon)))
    child, child_body = ident.tokens.issue({"identity": {"methods": ["token"], "token": {"id": token}}})
    assert child_body["token"]["project"] == body["token"]["project"]
    assert child_body["token"]["methods"] == ["token", "password"]
    assert child_body["token"]["expires_at"] == soon.strftime("%Y-%m-%dT%H:%M:%S.000000Z")
    assert authenticate(ident, child).project_id == body["token"]["project"]["id"]


def test_scope_rules(db: Database) -> None:
    ident = make(db)
    # No scope: the default project. Explicitly unscoped: none.
    assert ident.tokens.issue(password(project=None))[1]["token"]["project"]["name"] == "admin"
    token, body = ident.tokens.issue({**password(project=None), "scope": "unscoped"})
    assert "project" not in body["token"] and authenticate(ident, token).roles == frozenset()
    # A project the user holds no role on, or that does not exist: 401.
    def add_project(conn: Any) -> None:
        store.insert_project(conn, store.Project(store.ProjectId("p2"), "other", "default", "", True))
    db.write(add_project)
    for scope in ("other", "missing"):
        with pytest.raises(KeystoneError) as refused:
            ident.tokens.issue(password(project=scope))
        assert refused.value.code == 401
    with pytest.raises(KeystoneError) as refused:
        ident.tokens.issue({**password(), "scope": {"domain": {"id": "default"}}})
    assert refused.value.code == 401
    with pytest.raises(KeystoneError) as refused:
        ident.tokens.issue({"identity": {"methods": ["totp"]}})
    assert refused.value.code == 401


def test_disabled_users_lose_their_tokens(db: Database) -> None:
    ident = make(db)
    token, body = ident.tokens.issue(password())
    db.write(lambda conn: store.update_user(conn, body["token"]["user"]["id"], enabled=False))
    ident.forget_all()
    with pytest.raises(Unauthorized):
        authenticate(ident, token)
    with pytest.raises(KeystoneError):
        ident.tokens.issue(password())
