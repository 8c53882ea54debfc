"""External identity mode against a real Keystone: its tokens work, bad ones are refused, results cached."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from neutrino.config import Config
from neutrino.errors import Unauthorized
from neutrino.identity.keystone import KeystoneIdentity
from tests.api.conftest import Server, start_server
from tests.api.keystone import Keystone, keystone  # noqa: F401  (fixture)


@pytest.fixture(scope="module")
def ks_server(keystone: Keystone, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:  # noqa: F811
    tmp: Path = tmp_path_factory.mktemp("ks-server")
    srv = start_server(tmp, f"sqlite:///{tmp / 'neutrino.db'}", "sqlite", {
        "NEUTRINO_IDENTITY__MODE": "keystone", "NEUTRINO_IDENTITY__AUTH_URL": keystone.url,
        "NEUTRINO_IDENTITY__SERVICE_USER": "neutron", "NEUTRINO_IDENTITY__SERVICE_PASSWORD": "neutron-pw",
        "NEUTRINO_IDENTITY__CACHE_SECONDS": "1"})
    try:
        yield srv
    finally:
        srv.stop()


def test_keystone_tokens_drive_the_api(ks_server: Server, keystone: Keystone) -> None:  # noqa: F811
    demo = keystone.token("demo", "demo-pw", "demo")
    h = {"X-Auth-Token": demo}
    made = httpx.post(f"{ks_server.url}/v2.0/networks", json={"network": {"name": "ks-net"}}, headers=h)
    assert made.status_code == 201, made.text
    net = made.json()["network"]
    assert net["project_id"] == keystone.ids["project:demo"]
    assert "provider:network_type" not in net  # a member, not an admin
    shared = httpx.post(f"{ks_server.url}/v2.0/networks", json={"network": {"shared": True}}, headers=h)
    assert shared.status_code == 403
    admin = keystone.token("admin", "ks-admin", "admin")
    seen = httpx.get(f"{ks_server.url}/v2.0/networks/{net['id']}", headers={"X-Auth-Token": admin}).json()
    assert seen["network"]["provider:network_type"] == "vxlan"
    assert httpx.get(f"{ks_server.url}/v2.0/networks", headers={"X-Auth-Token": "bogus"}).status_code == 401
    # Revoked in Keystone: refused once the (1 s) cache entry is gone.
    keystone.call("DELETE", "/auth/tokens", headers={"X-Subject-Token": demo})
    deadline = time.monotonic() + 10
    while httpx.get(f"{ks_server.url}/v2.0/networks", headers=h).status_code != 401:
        assert time.monotonic() < deadline, "a revoked Keystone token kept working"
        time.sleep(0.2)


def test_validation_is_cached(keystone: Keystone) -> None:  # noqa: F811
    cfg = Config()
    cfg.identity.mode = "keystone"
    cfg.identity.auth_url = keystone.url
    cfg.identity.service_user, cfg.identity.service_password = "neutron", "neutron-pw"
    cfg.identity.cache_seconds = 60
    token = keystone.token("demo", "demo-pw", "demo")

    async def run() -> None:
        ident = KeystoneIdentity(cfg)
        try:
            first = await ident.authenticate({"x-auth-token": token})
            second = await ident.authenticate({"x-auth-token": token})
            assert first == second and first.project_id == keystone.ids["project:demo"]
            assert first.roles == frozenset({"member", "reader"})
            assert ident.validations == 1
            with pytest.raises(Unauthorized):
                await ident.authenticate({"x-auth-token": "not-a-token"})
            with pytest.raises(Unauthorized):
                await ident.authenticate({})
        finally:
            await ident.aclose()

    asyncio.run(run())
