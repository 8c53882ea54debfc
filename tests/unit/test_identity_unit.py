from __future__ import annotations

import asyncio

from neutrino.identity.keystone import KeystoneIdentity
from neutrino.identity.noauth import NoAuth
from neutrino.identity.passwords import hash_password, verify_password


def test_passwords() -> None:
    stored = hash_password("s3cret")
    assert stored.startswith("scrypt$") and "s3cret" not in stored
    assert verify_password("s3cret", stored)
    assert not verify_password("s3cret!", stored)
    assert hash_password("s3cret") != stored  # salted
    assert not verify_password("x", "garbage")


def test_noauth_headers() -> None:
    ctx = asyncio.run(NoAuth().authenticate({}))
    assert ctx.is_admin
    ctx = asyncio.run(NoAuth().authenticate({"x-project-id": "p1"}))
    assert ctx.project_id == "p1" and not ctx.is_admin and ctx.can_write
    ctx = asyncio.run(NoAuth().authenticate({"x-project-id": "p1", "x-roles": "reader"}))
    assert not ctx.can_write


def test_keystone_roles_imply_lower_ones() -> None:
    ctx = KeystoneIdentity._context({"user": {"id": "u"}, "project": {"id": "p"}, "roles": [{"name": "Admin"}]})
    assert ctx.roles == frozenset({"admin", "member", "reader"})
