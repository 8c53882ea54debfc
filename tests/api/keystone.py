"""A real Keystone (PyPI ``keystone``, SQLite backend, served by gunicorn) for the external-identity tests.

It lives in its own venv, ``.venv-keystone`` (``pip install keystone gunicorn``), because its pins are not
ours. The session fixture bootstraps an admin, then a ``service`` project with a ``neutron`` service
user (role ``service``) and a ``demo`` project with a ``demo`` member. Its access log is kept for
debugging (tests count requests on neutrino's side: the log is written after the response, so counting
it races). At the end the whole process group is stopped and checked gone.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
KEYSTONE_VENV = Path(os.environ.get("NEUTRINO_KEYSTONE_VENV", ROOT / ".venv-keystone"))
ADMIN_PASSWORD = "ks-admin"
SERVICE_USER, SERVICE_PASSWORD = "neutron", "neutron-pw"
MEMBER_USER, MEMBER_PASSWORD = "demo", "demo-pw"


@dataclass
class Keystone:
    url: str  # .../v3
    access_log: Path
    ids: dict[str, str] = field(default_factory=dict)

    def login(self, user: str, password: str, project: str) -> httpx.Response:
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"name": "Default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}}
        return httpx.post(f"{self.url}/auth/tokens", json=body, timeout=30)

    def token(self, user: str, password: str, project: str) -> str:
        resp = self.login(user, password, project)
        resp.raise_for_status()
        return resp.headers["X-Subject-Token"]

    def admin(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"X-Auth-Token": self.token("admin", ADMIN_PASSWORD, "admin"), **kw.pop("headers", {})}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kw)

    def revoke(self, token: str) -> None:
        self.admin("DELETE", "/auth/tokens", headers={"X-Subject-Token": token}).raise_for_status()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _configure(work: Path) -> Path:
    conf = work / "keystone.conf"
    conf.write_text(textwrap.dedent(f"""\
        [DEFAULT]
        log_file = {work}/keystone.log
        [database]
        connection = sqlite:///{work}/keystone.db
        [token]
        provider = fernet
        expiration = 3600
        [fernet_tokens]
        key_repository = {work}/fernet-keys
        [fernet_receipts]
        key_repository = {work}/fernet-keys
        [credential]
        key_repository = {work}/credential-keys
        """))
    manage = [str(KEYSTONE_VENV / "bin" / "keystone-manage"), "--config-file", str(conf)]
    steps = [["db_sync"],
             ["fernet_setup", "--keystone-user", "root", "--keystone-group", "root"],
             ["credential_setup", "--keystone-user", "root", "--keystone-group", "root"]]
    for step in steps:
        done = subprocess.run([*manage, *step], capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"keystone-manage {step[0]} failed:\n{done.stderr[-3000:]}")
    return conf


def _bootstrap(conf: Path, url: str) -> None:
    done = subprocess.run([str(KEYSTONE_VENV / "bin" / "keystone-manage"), "--config-file", str(conf), "bootstrap",
                           "--bootstrap-password", ADMIN_PASSWORD, "--bootstrap-admin-url", url,
                           "--bootstrap-public-url", url, "--bootstrap-internal-url", url,
                           "--bootstrap-region-id", "RegionOne"], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"keystone-manage bootstrap failed:\n{done.stderr[-3000:]}")


# Keystone parses sys.argv as its own options when it builds the app: hide gunicorn's from it.
APP_MODULE = """\
import sys

_argv, sys.argv = sys.argv, sys.argv[:1]
try:
    from keystone.wsgi.api import application  # noqa: F401
finally:
    sys.argv = _argv
"""


def _serve(work: Path, conf: Path, port: int) -> subprocess.Popen[bytes]:
    (work / "keystone_app.py").write_text(APP_MODULE)
    # Settings in a file: gunicorn ignores the ones its version lacks (control_socket_disable is new in 24).
    (work / "gunicorn.conf.py").write_text(textwrap.dedent(f"""\
        bind = "127.0.0.1:{port}"
        workers = 1
        threads = 8
        accesslog = "{work}/access.log"
        errorlog = "{work}/server.log"
        graceful_timeout = 5
        control_socket_disable = True
        """))
    env = {**os.environ, "OS_KEYSTONE_CONFIG_FILES": str(conf)}
    cmd = [str(KEYSTONE_VENV / "bin" / "gunicorn"), "-c", str(work / "gunicorn.conf.py"), "--chdir", str(work),
           "keystone_app:application"]
    # A new session, so teardown can stop the master and its workers as one group.
    return subprocess.Popen(cmd, env=env, cwd=work, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def _wait(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            text = log.read_text()[-3000:] if log.exists() else "(no log)"
            raise RuntimeError(f"Keystone did not start:\n{text}")
        time.sleep(0.1)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    pgid = proc.pid  # the group leader, thanks to start_new_session
    try:
        os.killpg(pgid, signal.SIGTERM)
        proc.wait(15)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        proc.wait(5)
    deadline = time.monotonic() + 10
    while True:  # the workers too
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        if time.monotonic() > deadline:
            os.killpg(pgid, signal.SIGKILL)
            raise RuntimeError("Keystone's workers outlived their master")
        time.sleep(0.05)


def _seed(ks: Keystone) -> None:
    roles = {r["name"]: r["id"] for r in ks.admin("GET", "/roles").json()["roles"]}
    if "service" not in roles:
        made = ks.admin("POST", "/roles", json={"role": {"name": "service"}})
        made.raise_for_status()
        roles["service"] = made.json()["role"]["id"]
    for project, user, password, role in (("service", SERVICE_USER, SERVICE_PASSWORD, "service"),
                                          ("demo", MEMBER_USER, MEMBER_PASSWORD, "member")):
        made = ks.admin("POST", "/projects", json={"project": {"name": project, "domain_id": "default"}})
        made.raise_for_status()
        pid = made.json()["project"]["id"]
        made = ks.admin("POST", "/users", json={"user": {"name": user, "password": password, "domain_id": "default"}})
        made.raise_for_status()
        uid = made.json()["user"]["id"]
        ks.admin("PUT", f"/projects/{pid}/users/{uid}/roles/{roles[role]}").raise_for_status()
        ks.ids[f"project:{project}"], ks.ids[f"user:{user}"] = pid, uid


@pytest.fixture(scope="session")
def keystone() -> Iterator[Keystone]:
    if not KEYSTONE_VENV.is_dir():
        pytest.skip(f"no Keystone venv at {KEYSTONE_VENV} (python -m venv .venv-keystone && "
                    ".venv-keystone/bin/pip install keystone gunicorn)")
    if not (KEYSTONE_VENV / "bin" / "gunicorn").exists():
        raise RuntimeError(f"no gunicorn to serve Keystone: {KEYSTONE_VENV}/bin/pip install gunicorn")
    work = Path(tempfile.mkdtemp(prefix="neutrino-keystone-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        port = _free_port()
        url = f"http://127.0.0.1:{port}/v3"
        conf = _configure(work)
        _bootstrap(conf, url)
        proc = _serve(work, conf, port)
        _wait(url, proc, work / "server.log")
        ks = Keystone(url, work / "access.log")
        _seed(ks)
        yield ks
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(work, ignore_errors=True)
