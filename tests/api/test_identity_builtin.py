"""The builtin Keystone subset: what keystoneauth, openstacksdk and the CLI rely on."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import openstack
import pytest

from tests.api.conftest import Cli, Server, start_server


def password_body(user: str, password: str, project: str | None = "admin") -> dict[str, object]:
    auth: dict[str, object] = {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"name": "Default"}, "password": password}}}}
    if project:
        auth["scope"] = {"project": {"name": project, "domain": {"name": "Default"}}}
    return {"auth": auth}


def test_token_lifecycle(server: Server) -> None:
    url = f"{server.url}/identity/v3"
    assert httpx.get(url).json()["version"]["id"].startswith("v3")
    bad = httpx.post(f"{url}/auth/tokens", json=password_body("admin", "wrong"))
    assert bad.status_code == 401 and bad.json()["error"]["code"] == 401
    ok = httpx.post(f"{url}/auth/tokens", json=password_body("admin", "secret"))
    assert ok.status_code == 201
    token = ok.headers["X-Subject-Token"]
    body = ok.json()["token"]
    assert {r["name"] for r in body["roles"]} >= {"admin", "member", "reader"}
    network = next(s for s in body["catalog"] if s["type"] == "network")
    assert {e["url"] for e in network["endpoints"]} == {server.url}
    h = {"X-Auth-Token": token, "X-Subject-Token": token}
    assert httpx.get(f"{url}/auth/tokens", headers=h).json()["token"]["user"]["name"] == "admin"
    # Re-scope with the token method, then revoke: both tokens are independent.
    rescoped = httpx.post(f"{url}/auth/tokens", json={"auth": {"identity": {"methods": ["token"],
                          "token": {"id": token}}, "scope": {"project": {"name": "admin",
                                                                         "domain": {"name": "Default"}}}}})
    assert rescoped.status_code == 201
    assert httpx.delete(f"{url}/auth/tokens", headers=h).status_code == 204
    assert httpx.get(f"{server.url}/v2.0/networks", headers={"X-Auth-Token": token}).status_code == 401
    other = rescoped.headers["X-Subject-Token"]
    assert httpx.get(f"{server.url}/v2.0/networks", headers={"X-Auth-Token": other}).status_code == 200


def test_tokens_survive_restart_and_expire(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'n.db'}"
    srv = start_server(tmp_path, db, "sqlite", {"NEUTRINO_IDENTITY__TOKEN_TTL_SECONDS": "12"})
    try:
        token = httpx.post(f"{srv.url}/identity/v3/auth/tokens",
                           json=password_body("admin", "secret")).headers["X-Subject-Token"]
        revoked = httpx.post(f"{srv.url}/identity/v3/auth/tokens",
                             json=password_body("admin", "secret")).headers["X-Subject-Token"]
        httpx.delete(f"{srv.url}/identity/v3/auth/tokens", headers={"X-Auth-Token": token,
                                                                    "X-Subject-Token": revoked})
    finally:
        srv.stop()
    srv = start_server(tmp_path, db, "sqlite", {"NEUTRINO_IDENTITY__TOKEN_TTL_SECONDS": "12"})
    try:
        def status(t: str) -> int:
            return httpx.get(f"{srv.url}/v2.0/networks", headers={"X-Auth-Token": t}).status_code
        assert status(token) == 200
        assert status(revoked) == 401
        deadline = time.monotonic() + 30
        while status(token) != 401:
            assert time.monotonic() < deadline, "token outlived its expiry"
            time.sleep(0.3)
    finally:
        srv.stop()


def test_operator_adds_a_tenant_with_the_cli(cli: Cli, server: Server) -> None:
    name = f"t-{uuid.uuid4().hex[:6]}"
    project = cli("project", "create", name)
    user = cli("user", "create", name, "--password", "pw", "--project", project["id"])
    cli("role", "add", "--user", user["id"], "--project", project["id"], "member", fmt=False)
    conn = openstack.connection.Connection(auth={
        "auth_url": f"{server.url}/identity/v3", "username": name, "password": "pw", "project_name": name,
        "user_domain_name": "Default", "project_domain_name": "Default"}, identity_api_version="3")
    net = conn.network.create_network(name="own")
    assert net.project_id == project["id"]
    conn.network.delete_network(net)
    with pytest.raises(openstack.exceptions.HttpException):
        conn.identity.create_project(name="not-allowed")
