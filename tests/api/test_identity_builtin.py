"""The builtin Keystone subset, served by uvicorn, driven by keystoneauth1, openstacksdk and the openstack CLI.

The server here is a small app holding only the identity routes plus ``/probe``, which authenticates the
request exactly as the API server does (``Identity.authenticate``) and echoes the context, so these tests
see what an API request would see. It runs as a real process so that "restart" is a real restart.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import openstack
import pytest
from keystoneauth1 import discover, session
from keystoneauth1.identity import v3
from openstack.identity.v3._proxy import Proxy as IdentityV3

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
ADMIN_PASSWORD = "s3cret-admin"
pytestmark = pytest.mark.xdist_group("identity-builtin")  # one server for the module, on one worker

SERVER = """
import os, uvicorn
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route
from neutrino import config
from neutrino.db.engine import Database
from neutrino.db.schema import metadata
from neutrino.errors import Unauthorized
from neutrino.identity import build_identity
import neutrino.identity.schema

cfg = config.load()
db = Database(cfg.database_url)
metadata.create_all(db.engine)
identity = build_identity(cfg, db)
identity.bootstrap()

async def probe(request):
    try:
        ctx = await identity.authenticate(request.headers)
    except Unauthorized as exc:
        return JSONResponse(exc.body(), exc.status)
    return JSONResponse({"user_id": ctx.user_id, "project_id": ctx.project_id, "roles": sorted(ctx.roles),
                         "user_name": ctx.user_name, "project_name": ctx.project_name})

app = Starlette(routes=[identity.routes, Route("/probe", probe)])
uvicorn.run(app, host="127.0.0.1", port=cfg.api.port, log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class IdentityServer:
    url: str
    state: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def auth_url(self) -> str:
        return f"{self.url}/identity/v3"

    def start(self) -> None:
        log = open(self.state / "server.log", "ab")  # noqa: SIM115  (the child keeps it)
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER], env=self.env, cwd=ROOT, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{self.auth_url}", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("identity server did not start:\n" + (self.state / "server.log").read_text())
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def probe(self, token: str) -> httpx.Response:
        return httpx.get(f"{self.url}/probe", headers={"X-Auth-Token": token})

    def password_token(self, user: str, password: str, project: str | None = "admin") -> httpx.Response:
        return httpx.post(f"{self.auth_url}/auth/tokens", json=password_body(user, password, project))

    def admin_token(self) -> str:
        resp = self.password_token("admin", ADMIN_PASSWORD)
        assert resp.status_code == 201, resp.text
        return resp.headers["X-Subject-Token"]


def password_body(user: str, password: str, project: str | None = "admin") -> dict[str, Any]:
    auth: dict[str, Any] = {"identity": {"methods": ["password"], "password": {"user": {
        "name": user, "domain": {"name": "Default"}, "password": password}}}}
    if project:
        auth["scope"] = {"project": {"name": project, "domain": {"name": "Default"}}}
    return {"auth": auth}


def make_server(tmp: Path, **settings: str) -> IdentityServer:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEUTRINO_", "OS_"))}
    env.update({"NEUTRINO_STATE_DIR": str(tmp), "NEUTRINO_API__PORT": str(port),
                "NEUTRINO_IDENTITY__ADMIN_PASSWORD": ADMIN_PASSWORD, "NEUTRINO_IDENTITY__REGION": "RegionTest"})
    env.update({f"NEUTRINO_IDENTITY__{k.upper()}": v for k, v in settings.items()})
    return IdentityServer(f"http://127.0.0.1:{port}", tmp, env)


@pytest.fixture(scope="module")
def ids(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IdentityServer]:
    srv = make_server(tmp_path_factory.mktemp("identity"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def admin_session(srv: IdentityServer, **kw: str) -> session.Session:
    args: dict[str, Any] = {"username": "admin", "password": ADMIN_PASSWORD, "project_name": "admin",
                            "user_domain_name": "Default", "project_domain_name": "Default", **kw}
    return session.Session(auth=v3.Password(auth_url=srv.auth_url, **args))


def test_version_discovery(ids: IdentityServer) -> None:
    sess = session.Session()
    for url in (f"{ids.url}/identity", ids.auth_url):
        found = discover.Discover(sess, url).version_data()
        assert [d["version"] for d in found] == [(3, 14)]
        assert found[0]["url"] == f"{ids.auth_url}/"
    listing = httpx.get(f"{ids.url}/identity/")
    assert listing.status_code == 300 and listing.json()["versions"]["values"][0]["status"] == "stable"
    missing = httpx.get(f"{ids.auth_url}/no-such-thing")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == 404


def test_password_auth_and_catalog_with_keystoneauth(ids: IdentityServer) -> None:
    sess = admin_session(ids)
    access = sess.auth.get_access(sess)  # type: ignore[union-attr]
    assert access.project_name == "admin" and access.username == "admin"
    assert set(access.role_names) == {"admin", "member", "reader"}
    assert access.expires > access.issued and access.audit_id
    assert sess.get_endpoint(service_type="network", interface="public") == ids.url
    assert sess.get_endpoint(service_type="network", interface="internal", region_name="RegionTest") == ids.url
    assert sess.get_endpoint(service_type="identity", interface="admin") == ids.auth_url
    # The same identity by ids instead of names.
    by_id = session.Session(auth=v3.Password(auth_url=ids.auth_url, user_id=access.user_id,
                                             password=ADMIN_PASSWORD, project_id=access.project_id))
    assert by_id.auth.get_access(by_id).project_id == access.project_id  # type: ignore[union-attr]
    who = ids.probe(sess.get_token()).json()  # type: ignore[arg-type]
    assert who["user_id"] == access.user_id and who["project_id"] == access.project_id
    assert who["roles"] == ["admin", "member", "reader"]


def test_unscoped_requests(ids: IdentityServer) -> None:
    # No scope: the user's default project, as Keystone does.
    scoped = ids.password_token("admin", ADMIN_PASSWORD, project=None)
    assert scoped.status_code == 201 and scoped.json()["token"]["project"]["name"] == "admin"
    # Explicitly unscoped: no project, no roles, no catalog; the API sees no roles.
    body = password_body("admin", ADMIN_PASSWORD, project=None)
    body["auth"]["scope"] = "unscoped"
    unscoped = httpx.post(f"{ids.auth_url}/auth/tokens", json=body)
    assert unscoped.status_code == 201
    assert not {"project", "roles", "catalog"} & set(unscoped.json()["token"])
    who = ids.probe(unscoped.headers["X-Subject-Token"]).json()
    assert who["project_id"] == "" and who["roles"] == []
    projects = httpx.get(f"{ids.auth_url}/auth/projects",
                         headers={"X-Auth-Token": unscoped.headers["X-Subject-Token"]}).json()["projects"]
    assert [p["name"] for p in projects] == ["admin"]


@pytest.mark.parametrize("user,password,project", [
    ("admin", "wrong", "admin"), ("nobody", "x", "admin"), ("admin", ADMIN_PASSWORD, "no-such-project")])
def test_bad_credentials_are_401_in_keystone_shape(ids: IdentityServer, user: str, password: str,
                                                   project: str) -> None:
    resp = ids.password_token(user, password, project)
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == 401 and resp.json()["error"]["title"] == "Unauthorized"
    assert "X-Subject-Token" not in resp.headers


def test_malformed_auth_is_400(ids: IdentityServer) -> None:
    for body in ({}, {"auth": {"identity": {"methods": "password"}}}, {"auth": {"identity": {"methods": ["password"],
                                                                                           "password": []}}}):
        resp = httpx.post(f"{ids.auth_url}/auth/tokens", json=body)
        assert resp.status_code == 400 and resp.json()["error"]["code"] == 400
    resp = httpx.post(f"{ids.auth_url}/auth/tokens", content=b"{not json")
    assert resp.status_code == 400


def test_validate_rescope_and_revoke(ids: IdentityServer) -> None:
    admin = ids.admin_token()
    token = ids.admin_token()
    h = {"X-Auth-Token": admin, "X-Subject-Token": token}
    shown = httpx.get(f"{ids.auth_url}/auth/tokens", headers=h)
    assert shown.status_code == 200 and shown.headers["X-Subject-Token"] == token
    assert shown.json()["token"]["user"]["name"] == "admin" and shown.json()["token"]["catalog"]
    assert "catalog" not in httpx.get(f"{ids.auth_url}/auth/tokens?nocatalog", headers=h).json()["token"]
    assert httpx.head(f"{ids.auth_url}/auth/tokens", headers=h).status_code == 200
    rescoped = httpx.post(f"{ids.auth_url}/auth/tokens", json={"auth": {
        "identity": {"methods": ["token"], "token": {"id": token}},
        "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}})
    assert rescoped.status_code == 201, rescoped.text
    child = rescoped.json()["token"]
    assert child["expires_at"] <= shown.json()["token"]["expires_at"] and "token" in child["methods"]

    assert httpx.delete(f"{ids.auth_url}/auth/tokens", headers=h).status_code == 204
    assert ids.probe(token).status_code == 401
    assert httpx.get(f"{ids.auth_url}/auth/tokens", headers=h).status_code == 404
    assert httpx.delete(f"{ids.auth_url}/auth/tokens", headers=h).status_code == 404
    # The re-scoped token is a token of its own, as on Keystone: revoking its parent leaves it alone.
    assert ids.probe(rescoped.headers["X-Subject-Token"]).status_code == 200
    refused = httpx.post(f"{ids.auth_url}/auth/tokens", json={"auth": {"identity": {
        "methods": ["token"], "token": {"id": token}}}})
    assert refused.status_code == 401
    assert httpx.get(f"{ids.auth_url}/auth/tokens", headers={"X-Auth-Token": "bogus",
                                                                 "X-Subject-Token": admin}).status_code == 401


def test_operator_adds_a_tenant_with_the_cli(ids: IdentityServer) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update({"OS_AUTH_URL": ids.auth_url, "OS_USERNAME": "admin", "OS_PASSWORD": ADMIN_PASSWORD,
                "OS_PROJECT_NAME": "admin", "OS_USER_DOMAIN_NAME": "Default", "OS_PROJECT_DOMAIN_NAME": "Default",
                "OS_IDENTITY_API_VERSION": "3", "OS_REGION_NAME": "RegionTest"})

    def cli(*args: str) -> Any:
        out = subprocess.run([str(VENV_BIN / "openstack"), *args, "-f", "json"], env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout) if out.stdout.strip() else None

    issued = cli("token", "issue")
    assert issued["id"] and issued["project_id"] and issued["user_id"]
    services = {s["Type"]: s for s in cli("catalog", "list")}
    assert services["network"]["Name"] == "neutron" and ids.url in str(services["network"]["Endpoints"])
    name = f"t-{uuid.uuid4().hex[:6]}"
    project = cli("project", "create", name, "--description", "a tenant")
    user = cli("user", "create", name, "--password", "pw-" + name, "--project", name)
    assert user["default_project_id"] == project["id"]
    subprocess.run([str(VENV_BIN / "openstack"), "role", "add", "--user", name, "--project", name, "member"],
                   env=env, check=True, capture_output=True, timeout=120)
    assert {p["Name"] for p in cli("project", "list")} >= {"admin", name}
    assigned = cli("role", "assignment", "list", "--user", user["id"], "--project", project["id"])
    assert [a["Role"] for a in assigned] == [cli("role", "show", "member")["id"]]

    conn = openstack.connection.Connection(auth={
        "auth_url": ids.auth_url, "username": name, "password": "pw-" + name, "project_name": name,
        "user_domain_name": "Default", "project_domain_name": "Default"}, identity_api_version="3")
    try:
        conn.authorize()
        assert conn.current_project_id == project["id"]
        assert conn.session.get_endpoint(service_type="network", interface="public") == ids.url
        who = ids.probe(str(conn.auth_token)).json()
        assert who["project_id"] == project["id"] and who["roles"] == ["member", "reader"]
        with pytest.raises(openstack.exceptions.ForbiddenException):
            cast(IdentityV3, conn.identity).create_project(name="not-allowed")
    finally:
        conn.close()


def test_grants_users_and_projects_govern_tokens(ids: IdentityServer) -> None:
    sess = admin_session(ids)
    admin = openstack.connection.Connection(session=sess, identity_api_version="3")
    idp = cast(IdentityV3, admin.identity)
    name = f"g-{uuid.uuid4().hex[:6]}"
    project = idp.create_project(name=name, domain_id="default")
    user = idp.create_user(name=name, password="pw", default_project_id=project.id)
    member = idp.find_role("member")
    assert member is not None
    idp.assign_project_role_to_user(project, user, member)
    assert idp.validate_user_has_project_role(project, user, member)

    def login() -> str:
        resp = ids.password_token(name, "pw", name)
        assert resp.status_code == 201, resp.text
        return resp.headers["X-Subject-Token"]

    token = login()
    assert ids.probe(token).status_code == 200
    idp.unassign_project_role_from_user(project, user, member)
    assert ids.probe(token).status_code == 401  # the last role went: so did the token
    assert ids.password_token(name, "pw", name).status_code == 401
    idp.assign_project_role_to_user(project, user, member)
    token = login()
    idp.update_user(user, password="pw2")
    assert ids.probe(token).status_code == 401  # a new password revokes the old tokens
    assert ids.password_token(name, "pw", name).status_code == 401
    assert ids.password_token(name, "pw2", name).status_code == 201
    idp.update_project(project, enabled=False)
    assert ids.password_token(name, "pw2", name).status_code == 401
    idp.delete_project(project)
    idp.delete_user(user)
    assert idp.find_user(name) is None
    dup = httpx.post(f"{ids.auth_url}/projects", json={"project": {"name": "admin"}},
                     headers={"X-Auth-Token": str(sess.get_token())})
    assert dup.status_code == 409 and dup.json()["error"]["code"] == 409
    admin.close()


def test_tokens_and_revocations_survive_a_restart(tmp_path: Path) -> None:
    srv = make_server(tmp_path)
    srv.start()
    try:
        token, revoked = srv.admin_token(), srv.admin_token()
        assert httpx.delete(f"{srv.auth_url}/auth/tokens",
                            headers={"X-Auth-Token": token, "X-Subject-Token": revoked}).status_code == 204
        before = srv.probe(token).json()
    finally:
        srv.stop()
    srv.start()
    try:
        assert srv.probe(token).json() == before
        assert srv.probe(revoked).status_code == 401
    finally:
        srv.stop()
    stored = (tmp_path / "neutrino.db").read_bytes()
    assert token.encode() not in stored and revoked.encode() not in stored  # only hashes are kept


def test_expired_tokens_are_refused(tmp_path: Path) -> None:
    """The real server with a real clock: a 2 s TTL, then polling with a deadline far beyond it. (The fake
    clock tests of the same rules, to the second, are in tests/unit/test_identity_tokens.py.)"""
    srv = make_server(tmp_path, token_ttl_seconds="2")
    srv.start()
    try:
        issued = srv.password_token("admin", ADMIN_PASSWORD)
        token = issued.headers["X-Subject-Token"]
        expires = dt.datetime.fromisoformat(issued.json()["token"]["expires_at"].replace("Z", "+00:00"))
        # Now cached, and still refused at expiry. (A slow machine may already be past the 2 s: then 401.)
        assert srv.probe(token).status_code == 200 or dt.datetime.now(dt.UTC) >= expires
        deadline = time.monotonic() + 60
        while srv.probe(token).status_code != 401:
            assert time.monotonic() < deadline, "a token outlived its expiry"
            time.sleep(0.2)
        h = {"X-Auth-Token": srv.admin_token(), "X-Subject-Token": token}
        assert httpx.get(f"{srv.auth_url}/auth/tokens", headers=h).status_code == 404
        assert httpx.post(f"{srv.auth_url}/auth/tokens", json={"auth": {"identity": {
            "methods": ["token"], "token": {"id": token}}}}).status_code == 401
    finally:
        srv.stop()
