"""Keystone mode against a real Keystone: its tokens give the right context, bad ones are refused, and
validations are cached (counted as the requests neutrino sends to Keystone). Cache time is a fake clock
the tests advance, so no test depends on how fast the machine is."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from neutrino.config import Config
from neutrino.context import RequestContext
from neutrino.errors import ServiceUnavailable, Unauthorized
from neutrino.identity import build_identity
from neutrino.identity.keystone import KeystoneIdentity
from tests.api.conftest import start_server
from tests.api.keystone import (  # noqa: F401  (keystone is a fixture)
    ADMIN_PASSWORD,
    MEMBER_PASSWORD,
    MEMBER_USER,
    SERVICE_PASSWORD,
    SERVICE_USER,
    Keystone,
    keystone,
)

T = TypeVar("T")
pytestmark = pytest.mark.xdist_group("keystone")  # one Keystone for the module, on one worker
VALIDATE = ("GET", "/v3/auth/tokens")
LOGIN = ("POST", "/v3/auth/tokens")


def config(ks: Keystone, cache_seconds: int = 60, password: str = SERVICE_PASSWORD) -> Config:
    cfg = Config()
    cfg.identity.mode = "keystone"
    cfg.identity.auth_url = ks.url.removesuffix("/v3")  # the version is added when missing
    cfg.identity.service_user, cfg.identity.service_password = SERVICE_USER, password
    cfg.identity.cache_seconds = cache_seconds
    return cfg


@dataclass
class FakeClock:
    now: float = field(default_factory=time.time)

    def __call__(self) -> float:
        return self.now


@dataclass
class Sent:
    """The requests neutrino has sent to Keystone, by (method, path): each one reached it and was answered."""
    counts: Counter[tuple[str, str]] = field(default_factory=Counter)

    async def record(self, request: httpx.Request) -> None:
        self.counts[(request.method, request.url.path)] += 1

    def __call__(self, method: str, path: str) -> int:
        return self.counts[(method, path)]


def run(ks: Keystone, body: Callable[[KeystoneIdentity, Sent, FakeClock], Awaitable[T]], cache_seconds: int = 60,
        password: str = SERVICE_PASSWORD) -> T:
    async def go() -> T:
        sent, clock = Sent(), FakeClock()
        client = httpx.AsyncClient(timeout=httpx.Timeout(30.0), event_hooks={"request": [sent.record]})
        ident = KeystoneIdentity(config(ks, cache_seconds, password), client, clock)
        try:
            return await body(ident, sent, clock)
        finally:
            await ident.aclose()
    return asyncio.run(go())


def test_keystone_mode_is_built_without_a_database(keystone: Keystone) -> None:  # noqa: F811
    ident = build_identity(config(keystone), db=None)  # type: ignore[arg-type]
    assert isinstance(ident, KeystoneIdentity) and ident.routes is None
    asyncio.run(ident.aclose())


def auth(token: str) -> dict[str, str]:
    return {"X-Auth-Token": token}


def test_member_and_admin_tokens_give_their_project_and_roles(keystone: Keystone) -> None:  # noqa: F811
    member = keystone.token(MEMBER_USER, MEMBER_PASSWORD, "demo")
    admin = keystone.token("admin", ADMIN_PASSWORD, "admin")

    async def body(ident: KeystoneIdentity, _: Sent, __: FakeClock) -> tuple[RequestContext, RequestContext]:
        return await ident.authenticate(auth(member)), await ident.authenticate({"x-auth-token": admin})

    m, a = run(keystone, body)
    assert m.project_id == keystone.ids["project:demo"] and m.project_name == "demo"
    assert m.user_id == keystone.ids["user:demo"] and m.user_name == MEMBER_USER
    assert m.roles == frozenset({"member", "reader"}) and m.can_write and not m.is_admin
    assert a.project_name == "admin" and a.is_admin and {"member", "reader"} <= a.roles


def test_bogus_missing_and_revoked_tokens_are_unauthorized(keystone: Keystone) -> None:  # noqa: F811
    token = keystone.token(MEMBER_USER, MEMBER_PASSWORD, "demo")
    keystone.revoke(token)

    async def body(ident: KeystoneIdentity, _: Sent, __: FakeClock) -> None:
        for headers in (auth("not-a-token"), auth(token), {}):
            with pytest.raises(Unauthorized):
                await ident.authenticate(headers)

    run(keystone, body)


def test_validations_are_cached_and_shared(keystone: Keystone) -> None:  # noqa: F811
    token = keystone.token(MEMBER_USER, MEMBER_PASSWORD, "demo")
    other = keystone.token(MEMBER_USER, MEMBER_PASSWORD, "demo")

    async def body(ident: KeystoneIdentity, sent: Sent, clock: FakeClock) -> None:
        first = await ident.authenticate(auth(token))
        assert sent(*VALIDATE) == 1
        for _ in range(20):
            clock.now += 2  # 40 s of cache time, within the 60 s
            assert await ident.authenticate(auth(token)) == first
        assert sent(*VALIDATE) == 1
        # Twenty concurrent requests with a new token: one validation between them.
        found = await asyncio.gather(*(ident.authenticate(auth(other)) for _ in range(20)))
        assert len(set(found)) == 1 and sent(*VALIDATE) == 2
        # An invalid token is remembered as invalid too.
        for _ in range(3):
            with pytest.raises(Unauthorized):
                await ident.authenticate(auth("bogus-token"))
        assert sent(*VALIDATE) == 3 and ident.validations == 3
        # Past the cache time, each is asked about again.
        clock.now += 61
        assert await ident.authenticate(auth(token)) == first
        with pytest.raises(Unauthorized):
            await ident.authenticate(auth("bogus-token"))
        assert sent(*VALIDATE) == 5 and sent(*LOGIN) == 1

    run(keystone, body)


def test_a_revoked_token_is_refused_once_its_cache_entry_ends(keystone: Keystone) -> None:  # noqa: F811
    token = keystone.token(MEMBER_USER, MEMBER_PASSWORD, "demo")

    async def body(ident: KeystoneIdentity, sent: Sent, clock: FakeClock) -> None:
        await ident.authenticate(auth(token))
        keystone.revoke(token)
        clock.now += 29.9
        await ident.authenticate(auth(token))  # still trusted from the cache (at most cache_seconds)
        assert sent(*VALIDATE) == 1
        clock.now += 0.1
        with pytest.raises(Unauthorized):  # the cache entry has ended: Keystone says revoked
            await ident.authenticate(auth(token))
        assert sent(*VALIDATE) == 2

    run(keystone, body, cache_seconds=30)


def test_neutrino_logs_in_again_when_its_own_token_is_revoked(keystone: Keystone) -> None:  # noqa: F811
    first = keystone.token(MEMBER_USER, MEMBER_PASSWORD, "demo")
    second = keystone.token(MEMBER_USER, MEMBER_PASSWORD, "demo")

    async def body(ident: KeystoneIdentity, sent: Sent, _: FakeClock) -> None:
        await ident.authenticate(auth(first))
        assert sent(*LOGIN) == 1
        keystone.revoke(await ident._service())
        ctx = await ident.authenticate(auth(second))
        assert ctx.project_id == keystone.ids["project:demo"]
        assert sent(*LOGIN) == 2 and sent(*VALIDATE) == 3  # the refused validation, then the retry

    run(keystone, body)


def test_keystone_trouble_is_503_not_the_callers_fault(keystone: Keystone) -> None:  # noqa: F811
    token = keystone.token(MEMBER_USER, MEMBER_PASSWORD, "demo")

    async def wrong_password(ident: KeystoneIdentity, _: Sent, __: FakeClock) -> None:
        with pytest.raises(ServiceUnavailable) as caught:
            await ident.authenticate(auth(token))
        assert caught.value.status == 503

    run(keystone, wrong_password, password="not-the-password")

    async def unreachable() -> None:
        cfg = config(keystone)
        cfg.identity.auth_url = "http://127.0.0.1:9/v3"  # discard port: nothing listens
        ident = KeystoneIdentity(cfg)
        try:
            with pytest.raises(ServiceUnavailable):
                await ident.authenticate(auth(token))
        finally:
            await ident.aclose()

    asyncio.run(unreachable())


def test_keystone_tokens_drive_the_real_api(keystone: Keystone, tmp_path: Path) -> None:  # noqa: F811
    """The whole server in keystone mode: a member's token creates in its own project, admin-only input is
    refused, an admin sees everything, and a token Keystone revoked stops working once its cache entry ends."""
    srv = start_server(tmp_path, f"sqlite:///{tmp_path / 'neutrino.db'}", "sqlite", {
        "NEUTRINO_IDENTITY__MODE": "keystone", "NEUTRINO_IDENTITY__AUTH_URL": keystone.url,
        "NEUTRINO_IDENTITY__SERVICE_USER": SERVICE_USER, "NEUTRINO_IDENTITY__SERVICE_PASSWORD": SERVICE_PASSWORD,
        "NEUTRINO_IDENTITY__CACHE_SECONDS": "1"})
    try:
        assert httpx.get(f"{srv.url}/identity/v3").status_code == 404  # no builtin Keystone in this mode
        member = keystone.token(MEMBER_USER, MEMBER_PASSWORD, "demo")
        made = httpx.post(f"{srv.url}/v2.0/networks", json={"network": {"name": "ks-net"}}, headers=auth(member))
        assert made.status_code == 201, made.text
        net = made.json()["network"]
        assert net["project_id"] == keystone.ids["project:demo"]
        assert "provider:network_type" not in net  # a member, not an admin
        shared = httpx.post(f"{srv.url}/v2.0/networks", json={"network": {"shared": True}}, headers=auth(member))
        assert shared.status_code == 403
        admin = keystone.token("admin", ADMIN_PASSWORD, "admin")
        seen = httpx.get(f"{srv.url}/v2.0/networks/{net['id']}", headers=auth(admin)).json()["network"]
        assert seen["provider:network_type"] == "vxlan"
        for bad in ({"X-Auth-Token": "bogus"}, {}):
            refused = httpx.get(f"{srv.url}/v2.0/networks", headers=bad)
            assert refused.status_code == 401 and refused.json()["NeutronError"]["type"] == "HTTPUnauthorized"
        # The server's clock is real: poll, with a deadline far beyond the 1 s cache time.
        keystone.revoke(member)
        deadline = time.monotonic() + 60
        while httpx.get(f"{srv.url}/v2.0/networks", headers=auth(member)).status_code != 401:
            assert time.monotonic() < deadline, "a token Keystone revoked kept working"
            time.sleep(0.2)
    finally:
        srv.stop()
