"""Identity pieces without a server: password hashing, noauth headers, Keystone role mapping, the cache."""

from __future__ import annotations

import asyncio

import pytest

from neutrino.config import Config
from neutrino.errors import ConfigError
from neutrino.identity import build_identity
from neutrino.identity.cache import TokenCache, token_key
from neutrino.identity.keystone import context_from_token, v3_url
from neutrino.identity.noauth import NoAuth
from neutrino.identity.passwords import hash_password, verify_password


def test_passwords_are_salted_scrypt_hashes() -> None:
    stored = hash_password("s3cret")
    assert stored.startswith("scrypt$16384$8$1$") and "s3cret" not in stored
    assert verify_password("s3cret", stored)
    assert not verify_password("s3cret!", stored) and not verify_password("", stored)
    assert hash_password("s3cret") != stored  # a new salt each time
    for garbage in ("", "!", "plain", "md5$x$y$z$a$b", stored.replace("scrypt", "bcrypt"), stored[:-4] + "!!!!"):
        assert not verify_password("s3cret", garbage)


def test_noauth_headers() -> None:
    def ctx(headers: dict[str, str]) -> tuple[str, str, set[str]]:
        c = asyncio.run(NoAuth().authenticate(headers))
        return c.user_id, c.project_id, set(c.roles)

    assert ctx({}) == ("admin", "admin", {"admin", "member", "reader"})
    assert ctx({"x-project-id": "p1"}) == ("noauth", "p1", {"member", "reader"})
    assert ctx({"X-Project-Id": "p1", "X-Roles": "reader"}) == ("noauth", "p1", {"reader"})
    assert ctx({"x-project-id": "p1", "x-roles": " Admin , "}) == ("noauth", "p1", {"admin", "member", "reader"})
    assert ctx({"x-tenant-id": "p2", "x-user-id": "u2"}) == ("u2", "p2", {"member", "reader"})
    assert ctx({"x-roles": "reader"}) == ("admin", "admin", {"reader"})
    assert NoAuth.routes is None


def test_keystone_token_body_maps_to_context() -> None:
    body = {"user": {"id": "u", "name": "demo"}, "project": {"id": "p", "name": "demo"},
            "roles": [{"id": "1", "name": "Member"}, {"id": "2", "name": "load-balancer_member"}]}
    c = context_from_token(body, "tok")
    assert (c.user_id, c.project_id, c.project_name, c.auth_token) == ("u", "p", "demo", "tok")
    assert c.roles == frozenset({"member", "reader", "load-balancer_member"})
    assert context_from_token({"user": {"id": "u"}, "roles": [{"name": "admin"}]}).is_admin
    unscoped = context_from_token({"user": {"id": "u"}})
    assert unscoped.project_id == "" and not unscoped.roles
    assert v3_url("http://ks:5000") == v3_url("http://ks:5000/v3/") == "http://ks:5000/v3"


def test_unknown_mode_and_keystone_without_url_are_config_errors() -> None:
    cfg = Config()
    cfg.identity.mode = "ldap"
    with pytest.raises(ConfigError):
        build_identity(cfg, db=None)  # type: ignore[arg-type]
    cfg.identity.mode = "keystone"
    with pytest.raises(ConfigError):
        build_identity(cfg, db=None)  # type: ignore[arg-type]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_cache_entries_end_at_their_deadline() -> None:
    clock = Clock()
    cache: TokenCache[str] = TokenCache(10, clock)
    cache.put("a", "ctx-a", until=1010)
    assert cache.get("a") == "ctx-a"
    clock.now = 1010
    assert cache.get("a") is None and len(cache) == 0
    cache.put("b", "ctx-b", until=2000)
    cache.drop("b")
    assert cache.get("b") is None


def test_cache_is_bounded_expired_first_then_oldest() -> None:
    clock = Clock()
    cache: TokenCache[int] = TokenCache(10, clock)
    for i in range(10):
        cache.put(f"k{i}", i, until=1005 if i % 2 else 2000)
    clock.now = 1006  # the odd ones have expired: they make the room
    cache.put("new", 99, until=2000)
    assert len(cache) == 6 and cache.get("k0") == 0 and cache.get("new") == 99
    for i in range(20):
        cache.put(f"m{i}", i, until=2000)
        assert len(cache) <= 10
    assert cache.get("m19") == 19 and cache.get("k0") is None  # the oldest went


def test_token_key_is_a_digest() -> None:
    key = token_key("secret-token")
    assert len(key) == 64 and "secret" not in key and key == token_key("secret-token")
