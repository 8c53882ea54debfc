"""The builtin identity as the API server itself applies it: which tokens /v2.0 accepts."""

from __future__ import annotations

import httpx

from tests.api.conftest import Server


def login(server: Server, scope: object) -> httpx.Response:
    auth = {"identity": {"methods": ["password"], "password": {"user": {
        "name": "admin", "domain": {"name": "Default"}, "password": "secret"}}}, "scope": scope}
    return httpx.post(f"{server.url}/identity/v3/auth/tokens", json={"auth": auth})


def networks(server: Server, headers: dict[str, str]) -> httpx.Response:
    return httpx.get(f"{server.url}/v2.0/networks", headers=headers)


def test_api_accepts_only_live_project_scoped_tokens(server: Server) -> None:
    for headers in ({}, {"X-Auth-Token": "bogus"}):
        refused = networks(server, headers)
        assert refused.status_code == 401
        assert refused.json()["NeutronError"]["type"] == "HTTPUnauthorized"
    scoped = login(server, {"project": {"name": "admin", "domain": {"name": "Default"}}})
    token = scoped.headers["X-Subject-Token"]
    assert networks(server, {"X-Auth-Token": token}).status_code == 200
    # A valid but unscoped token belongs to no project: the API refuses it, identity routes still take it.
    unscoped = login(server, "unscoped").headers["X-Subject-Token"]
    assert networks(server, {"X-Auth-Token": unscoped}).status_code == 401
    rescoped = httpx.post(f"{server.url}/identity/v3/auth/tokens", json={"auth": {
        "identity": {"methods": ["token"], "token": {"id": unscoped}},
        "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}})
    assert rescoped.status_code == 201
    # Revoking one token leaves the others working.
    gone = httpx.delete(f"{server.url}/identity/v3/auth/tokens",
                        headers={"X-Auth-Token": token, "X-Subject-Token": token})
    assert gone.status_code == 204
    assert networks(server, {"X-Auth-Token": token}).status_code == 401
    assert networks(server, {"X-Auth-Token": rescoped.headers["X-Subject-Token"]}).status_code == 200
