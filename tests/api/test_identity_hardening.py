"""The builtin identity API facing hostile input, on the real server (SQLite and PostgreSQL): request bodies
are capped before parsing (413), wrong types are 400, never 500, and every answer is in Keystone's shape."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import openstack
import pytest

from tests.api.conftest import Server

V3 = "/identity/v3"
CAP = 114_688  # Keystone's default max_request_body_size


def keystone_error(resp: httpx.Response, code: int) -> str:
    """The message of a Keystone-shaped error with this code (asserting the shape)."""
    assert resp.status_code == code, f"{resp.status_code}: {resp.text[:300]}"
    err = resp.json()["error"]
    assert err["code"] == code and isinstance(err["title"], str) and isinstance(err["message"], str), err
    return str(err["message"])


@pytest.fixture(scope="module")
def token(admin: openstack.connection.Connection) -> str:
    return str(admin.auth_token)


def call(server: Server, token: str, method: str, path: str, **kw: Any) -> httpx.Response:
    return httpx.request(method, server.url + V3 + path, headers={"X-Auth-Token": token, **kw.pop("headers", {})},
                         timeout=60, **kw)


@pytest.fixture(scope="module")
def victim(server: Server, token: str) -> Iterator[dict[str, Any]]:
    """A user with a default project, to aim PATCHes at."""
    name = f"harden-{uuid.uuid4().hex[:6]}"
    project = call(server, token, "POST", "/projects", json={"project": {"name": name}}).json()["project"]
    user = call(server, token, "POST", "/users", json={"user": {
        "name": name, "password": "harden-password-1", "default_project_id": project["id"]}}).json()["user"]
    yield {"user": user, "project": project}
    call(server, token, "DELETE", f"/users/{user['id']}")
    call(server, token, "DELETE", f"/projects/{project['id']}")


def padded_auth(size: int) -> bytes:
    """A password-auth body of exactly ``size`` bytes (a long description pads it), well-formed JSON."""
    head = b'{"auth": {"identity": {"methods": ["password"], "password": {"user": {"name": "nobody", ' \
           b'"domain": {"id": "default"}, "password": "x"}}}}, "padding": "'
    tail = b'"}'
    return head + b"a" * (size - len(head) - len(tail)) + tail


# -- the body cap ------------------------------------------------------------------------------------------
def test_bodies_up_to_the_cap_are_read_and_larger_ones_are_413(server: Server) -> None:
    url = f"{server.url}{V3}/auth/tokens"
    at_cap = httpx.post(url, content=padded_auth(CAP), headers={"Content-Type": "application/json"})
    assert at_cap.status_code == 401  # parsed and judged: an unknown user
    over = httpx.post(url, content=padded_auth(CAP + 1), headers={"Content-Type": "application/json"})
    message = keystone_error(over, 413)
    assert over.json()["error"]["title"] == "Request Entity Too Large" and str(CAP) in message
    assert over.headers.get("connection") == "close"
    # The same body, chunked (no Content-Length): counted while it streams in.
    body = padded_auth(CAP + 1)
    chunked = httpx.post(url, content=iter([body[i:i + 4096] for i in range(0, len(body), 4096)]),
                         headers={"Content-Type": "application/json"})
    assert "content-length" not in chunked.request.headers
    keystone_error(chunked, 413)


@pytest.mark.parametrize("path,method", [("/auth/tokens", "POST"), ("/users", "POST"), ("/projects", "POST"),
                                         ("/roles", "POST"), ("/users/x", "PATCH"), ("/projects/x", "PATCH"),
                                         ("/users", "GET")])
def test_every_identity_route_refuses_an_oversized_body(server: Server, token: str, path: str, method: str) -> None:
    resp = call(server, token, method, path, content=b'{"x": "' + b"b" * (2 * CAP) + b'"}')
    keystone_error(resp, 413)


def test_a_huge_declared_body_is_refused_without_being_read(server: Server) -> None:
    """10 GiB announced, 10 bytes sent: the answer comes at once (nothing waits for, or holds, the rest)."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        started = time.monotonic()
        s.sendall(b"POST /identity/v3/auth/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 10737418240\r\n\r\n{\"auth\": ")
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = s.recv(65536)
            if not chunk:
                break
            answer += chunk
    assert time.monotonic() - started < 5
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert b'"code":413' in answer and b'"title":"Request Entity Too Large"' in answer


# -- wrong types are 400 -----------------------------------------------------------------------------------
@pytest.mark.parametrize("attrs,field", [
    ({"default_project_id": 12345}, "default_project_id"),
    ({"default_project_id": {"id": "x"}}, "default_project_id"),
    ({"default_project_id": ["a", 1]}, "default_project_id"),
    ({"default_project_id": "p" * 65}, "default_project_id"),
    ({"name": 42}, "name"),
    ({"name": None}, "name"),
    ({"name": " "}, "name"),
    ({"name": "n" * 256}, "name"),
    ({"name": {"nested": [{"junk": [1, 2, {"deeper": None}]}]}}, "name"),
    ({"enabled": "false"}, "enabled"),
    ({"enabled": 0}, "enabled"),
    ({"enabled": None}, "enabled"),
    ({"password": 123456789012}, "password"),
    ({"password": ["pw"]}, "password"),
    ({"password": "p" * 4097}, "password"),
])
def test_user_patch_with_wrong_types_is_400_and_changes_nothing(server: Server, token: str,
                                                                 victim: dict[str, Any], attrs: dict[str, Any],
                                                                 field: str) -> None:
    user = victim["user"]
    resp = call(server, token, "PATCH", f"/users/{user['id']}", json={"user": attrs})
    assert f"'{field}'" in keystone_error(resp, 400)
    after = call(server, token, "GET", f"/users/{user['id']}").json()["user"]
    assert (after["name"], after["enabled"], after["default_project_id"]) == \
        (user["name"], True, victim["project"]["id"])
    logged_in = httpx.post(f"{server.url}{V3}/auth/tokens", json={"auth": {"identity": {"methods": ["password"],
        "password": {"user": {"id": user["id"], "password": "harden-password-1"}}}}})
    assert logged_in.status_code == 201  # the password was not changed (nor the user's tokens revoked)


def test_user_patch_with_right_types_still_works(server: Server, token: str, victim: dict[str, Any]) -> None:
    user = victim["user"]
    resp = call(server, token, "PATCH", f"/users/{user['id']}", json={"user": {"enabled": False}})
    assert resp.status_code == 200 and resp.json()["user"]["enabled"] is False
    resp = call(server, token, "PATCH", f"/users/{user['id']}", json={"user": {"enabled": True,
                                                                                 "default_project_id": None}})
    assert resp.status_code == 200 and resp.json()["user"]["default_project_id"] is None
    missing = call(server, token, "PATCH", f"/users/{user['id']}", json={"user": {"default_project_id": "nope"}})
    keystone_error(missing, 404)
    resp = call(server, token, "PATCH", f"/users/{user['id']}", json={"user": {
        "default_project_id": victim["project"]["id"]}})
    assert resp.status_code == 200 and resp.json()["user"]["default_project_id"] == victim["project"]["id"]


@pytest.mark.parametrize("path,body,field", [
    ("/users", {"user": {"name": 7}}, "name"),
    ("/users", {"user": {"name": "u-types", "enabled": "yes"}}, "enabled"),
    ("/users", {"user": {"name": "u-types", "domain_id": ["default"]}}, "domain_id"),
    ("/users", {"user": {"name": "u-types", "default_project_id": 1.5}}, "default_project_id"),
    ("/projects", {"project": {"name": ["p"]}}, "name"),
    ("/projects", {"project": {"name": "p-types", "description": 5}}, "description"),
    ("/projects", {"project": {"name": "p-types", "description": "d" * 256}}, "description"),
    ("/projects", {"project": {"name": "p-types", "enabled": "true"}}, "enabled"),
    ("/projects", {"project": {"name": "p-types", "is_domain": "no"}}, "is_domain"),
    ("/roles", {"role": {"name": {"x": 1}}}, "name"),
])
def test_creates_with_wrong_types_are_400(server: Server, token: str, path: str, body: dict[str, Any],
                                          field: str) -> None:
    assert f"'{field}'" in keystone_error(call(server, token, "POST", path, json=body), 400)


def test_project_patch_with_wrong_types_is_400(server: Server, token: str, victim: dict[str, Any]) -> None:
    ref = victim["project"]["id"]
    for attrs in ({"enabled": "false"}, {"description": {"a": 1}}, {"name": 0}, {"description": "x" * 300}):
        keystone_error(call(server, token, "PATCH", f"/projects/{ref}", json={"project": attrs}), 400)
    after = call(server, token, "GET", f"/projects/{ref}").json()["project"]
    assert after["enabled"] is True and after["description"] == ""


@pytest.mark.parametrize("body", [
    b"", b"null", b"[]", b'"project"', b"{", b"NaN", b'{"project": NaN}', b'{"project": Infinity}',
    b'{"project": {"name": 1e400}}', b'{"project": {"name": 123456789012345678901234567890}}',
    b'{"project": {"name": "\\ud800"}}', b"\xff\xfe", b"[" * 5000 + b"]" * 5000,
])
def test_malformed_bodies_are_400(server: Server, token: str, body: bytes) -> None:
    keystone_error(call(server, token, "POST", "/projects", content=body,
                        headers={"Content-Type": "application/json"}), 400)


def test_auth_with_wrong_types_is_400(server: Server) -> None:
    def auth(user: Any, scope: Any = None) -> httpx.Response:
        body: dict[str, Any] = {"identity": {"methods": ["password"], "password": {"user": user}}}
        if scope is not None:
            body["scope"] = scope
        return httpx.post(f"{server.url}{V3}/auth/tokens", json={"auth": body})

    keystone_error(auth({"id": 12345, "password": "secret"}), 400)
    keystone_error(auth({"name": ["admin"], "domain": {"id": "default"}, "password": "secret"}), 400)
    keystone_error(auth({"name": "admin", "domain": {"name": 1}, "password": "secret"}), 400)
    keystone_error(auth({"name": "admin", "domain": {"id": "default"}, "password": "secret"},
                        {"project": {"id": {"$ne": ""}}}), 400)
    keystone_error(auth({"name": "admin", "domain": {"id": "default"}, "password": "secret"},
                        {"project": {"name": 0, "domain": {"id": "default"}}}), 400)


def test_nul_characters_never_reach_the_database(server: Server, token: str) -> None:
    """PostgreSQL cannot store or even compare NUL: 400 in bodies and queries, 404 in paths."""
    assert "NUL" in keystone_error(call(server, token, "POST", "/projects", json={"project": {"name": "a\x00b"}}), 400)
    keystone_error(call(server, token, "GET", "/users/a%00b"), 404)
    keystone_error(call(server, token, "GET", "/users?name=%00"), 400)
    login = httpx.post(f"{server.url}{V3}/auth/tokens", json={"auth": {"identity": {"methods": ["password"],
        "password": {"user": {"name": "admin\x00", "domain": {"id": "default"}, "password": "x"}}}}})
    keystone_error(login, 400)


def test_repeated_methods_count_once(server: Server) -> None:
    resp = httpx.post(f"{server.url}{V3}/auth/tokens", json={"auth": {"identity": {
        "methods": ["password"] * 40, "password": {"user": {
            "name": "admin", "domain": {"id": "default"}, "password": "secret"}}}}})
    assert resp.status_code == 201, resp.text
    assert resp.json()["token"]["methods"] == ["password"]


@pytest.mark.parametrize("method,path,code", [
    ("OPTIONS", "/users", 405), ("TRACE", "/auth/tokens", 405), ("PROPFIND", "/projects", 405),
    ("PUT", "/users", 405), ("GET", "/users%0a", 404), ("GET", "/%0a/x", 404), ("DELETE", "/", 405),
])
def test_odd_methods_and_paths_answer_in_keystones_shape(server: Server, token: str, method: str, path: str,
                                                         code: int) -> None:
    keystone_error(call(server, token, method, path), code)
