"""A real neutrino server (subprocess, real HTTP) per backend, driven by the real openstack CLI and SDK.

``cloud`` is parametrized over SQLite and PostgreSQL; the PostgreSQL cluster is a throwaway one this
suite creates with Debian's initdb and removes at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import typing
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openstack
import pytest
import yaml
from openstack.identity.v3._proxy import Proxy as IdentityV3

VENV_BIN = Path(sys.executable).parent
PG_BIN = Path("/usr/lib/postgresql/15/bin")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise TimeoutError(url)


@dataclass
class Postgres:
    url_base: str
    datadir: Path
    port: int

    def new_database(self) -> str:
        name = "nt_" + uuid.uuid4().hex[:12]
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "createdb"), "-h", "127.0.0.1",
                        "-p", str(self.port), name], check=True)
        return f"{self.url_base}/{name}"

    def restart(self) -> None:
        """Stop the cluster (fast: every connection is cut) and start it again with the same options."""
        subprocess.run(["runuser", "-u", "postgres", "--", str(PG_BIN / "pg_ctl"), "-D", str(self.datadir), "-m",
                        "fast", "-w", "-l", str(self.datadir / "log"), "restart"], check=True,
                       stdout=subprocess.DEVNULL)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    if not (PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL server binaries are not installed (apt-get install postgresql)")
    with pg_cluster() as pg:
        yield pg


@contextlib.contextmanager
def pg_cluster() -> Iterator[Postgres]:
    """A throwaway PostgreSQL cluster on a free loopback port, removed on exit."""
    datadir = Path(tempfile.mkdtemp(prefix="neutrino-pg-"))
    shutil.chown(datadir, "postgres", "postgres")
    port = free_port()
    run = ["runuser", "-u", "postgres", "--"]
    subprocess.run(run + [str(PG_BIN / "initdb"), "-D", str(datadir), "-A", "trust", "-U", "postgres"],
                   check=True, stdout=subprocess.DEVNULL)
    opts = f"-p {port} -k {datadir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    subprocess.run(run + [str(PG_BIN / "pg_ctl"), "-D", str(datadir), "-o", opts, "-w", "-l",
                          str(datadir / "log"), "start"], check=True, stdout=subprocess.DEVNULL)
    try:
        yield Postgres(f"postgresql://postgres@127.0.0.1:{port}", datadir, port)
    finally:
        subprocess.run(run + [str(PG_BIN / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "stop"],
                       check=False, stdout=subprocess.DEVNULL)
        shutil.rmtree(datadir, ignore_errors=True)


@dataclass
class Server:
    url: str
    state_dir: Path
    clouds_yaml: Path
    proc: subprocess.Popen[bytes]
    backend: str
    env: dict[str, str]

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_server(tmp: Path, database_url: str, backend: str, extra_env: dict[str, str] | None = None) -> Server:
    port = free_port()
    env = dict(os.environ)
    env.update({
        "NEUTRINO_API__PORT": str(port), "NEUTRINO_DATABASE__URL": database_url,
        "NEUTRINO_IDENTITY__ADMIN_PASSWORD": "secret", "NEUTRINO_LOG__LEVEL": "WARNING",
        "NEUTRINO_QUOTAS__PORT": "-1", "NEUTRINO_QUOTAS__NETWORK": "-1", "NEUTRINO_QUOTAS__SUBNET": "-1",
    })
    env.update(extra_env or {})
    log = open(tmp / "server.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([str(VENV_BIN / "neutrino"), "server", "--state-dir", str(tmp)], env=env,
                            stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(url + "/", proc)
    except Exception:
        proc.kill()
        raise RuntimeError((tmp / "server.log").read_text()) from None
    clouds = tmp / "clouds.yaml"
    entry = {"auth": {"auth_url": f"{url}/identity/v3", "username": "admin", "password": "secret",
                      "project_name": "admin", "user_domain_name": "Default", "project_domain_name": "Default"},
             "region_name": "RegionOne", "identity_api_version": 3}
    clouds.write_text(yaml.safe_dump({"clouds": {"neutrino": entry}}))
    return Server(url, tmp, clouds, proc, backend, env)


def backend_server(request: pytest.FixtureRequest, backend: str, tmp: Path,
                   extra_env: dict[str, str] | None = None) -> Server:
    """A server in ``tmp`` on ``backend`` (sqlite, or postgresql: a new database on the suite's cluster)."""
    if backend == "postgresql":
        url = request.getfixturevalue("postgres").new_database()
    else:
        url = f"sqlite:///{tmp / 'neutrino.db'}"
    return start_server(tmp, url, backend, extra_env)


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = backend_server(request, request.param, tmp_path_factory.mktemp(f"server-{request.param}"))
    try:
        yield srv
    finally:
        srv.stop()


def connect(server: Server, user: str, password: str, project: str) -> openstack.connection.Connection:
    return openstack.connection.Connection(
        auth={"auth_url": f"{server.url}/identity/v3", "username": user, "password": password,
              "project_name": project, "user_domain_name": "Default", "project_domain_name": "Default"},
        region_name="RegionOne", identity_api_version="3")


@pytest.fixture(scope="session")
def admin(server: Server) -> openstack.connection.Connection:
    return connect(server, "admin", "secret", "admin")


@dataclass
class Cli:
    server: Server

    def __call__(self, *args: str, check: bool = True, cloud: str = "neutrino", fmt: bool = True) -> Any:
        env = dict(self.server.env, OS_CLIENT_CONFIG_FILE=str(self.server.clouds_yaml))
        proc = subprocess.run([str(VENV_BIN / "openstack"), "--os-cloud", cloud, *args,
                               *(["-f", "json"] if fmt else [])],
                              env=env, capture_output=True, text=True, timeout=120)
        if check and proc.returncode != 0:
            raise AssertionError(f"openstack {' '.join(args)} failed: {proc.stderr}")
        if proc.returncode != 0:
            return proc
        return json.loads(proc.stdout) if proc.stdout.strip() else None


@pytest.fixture(scope="session")
def cli(server: Server) -> Cli:
    return Cli(server)


@dataclass
class Raw:
    """Plain HTTP with a token, for checking exact status codes and error bodies."""
    url: str
    token: str

    def __call__(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"X-Auth-Token": self.token, **kw.pop("headers", {})}
        return httpx.request(method, self.url + path, headers=headers, timeout=30, **kw)

    @classmethod
    def of(cls, url: str, conn: openstack.connection.Connection) -> Raw:
        """Plain HTTP as the user of an SDK connection (its token)."""
        token = conn.auth_token
        assert token is not None, "the connection has no token"
        return cls(url, token)


def identity(conn: openstack.connection.Connection) -> IdentityV3:
    """The connection's identity proxy, which is v3 here (the SDK types it as v2 or v3)."""
    return typing.cast(IdentityV3, conn.identity)


@pytest.fixture(scope="session")
def raw(server: Server, admin: openstack.connection.Connection) -> Raw:
    return Raw.of(server.url, admin)


def member_connection(server: Server, admin: openstack.connection.Connection, name: str,
                      role: str = "member") -> openstack.connection.Connection:
    """A new project with a user holding ``role`` in it, connected through the builtin identity."""
    ident = identity(admin)
    project = ident.create_project(name=name, domain_id="default")
    user = ident.create_user(name=name, password="pw-" + name, domain_id="default", default_project_id=project.id)
    role_obj = next(r for r in ident.roles() if r.name == role)
    ident.assign_project_role_to_user(project, user, role_obj)
    return connect(server, name, "pw-" + name, name)


def uniq(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def error(resp: httpx.Response, status: int, type_: str) -> dict[str, str]:
    """Assert a Neutron-style error: the status, {"NeutronError": {"type", "message", "detail"}}."""
    assert resp.status_code == status, resp.text
    body: dict[str, str] = resp.json()["NeutronError"]
    assert body["type"] == type_, body
    assert body["message"] and "detail" in body
    return body
