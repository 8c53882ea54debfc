"""A real Keystone (PyPI `keystone`, SQLite backend, served by werkzeug) for the external-identity tests.

It lives in its own venv (`.venv-keystone`, made by `scripts/install.sh --test`) because its pins are not
ours. The fixture bootstraps an admin, then a `service` project with a `neutron` service user (admin) and
a `demo` project with a `demo` member, and stops Keystone at the end of the session.
"""

from __future__ import annotations

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
KEYSTONE_VENV = ROOT / ".venv-keystone"


@dataclass
class Keystone:
    url: str  # .../v3
    admin_password: str
    proc: subprocess.Popen[bytes]
    ids: dict[str, str] = field(default_factory=dict)

    def token(self, user: str, password: str, project: str) -> str:
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"name": "Default"}, "password": password}}},
            "scope": {"project": {"name": project, "domain": {"name": "Default"}}}}}
        resp = httpx.post(f"{self.url}/auth/tokens", json=body, timeout=30)
        resp.raise_for_status()
        return resp.headers["X-Subject-Token"]

    def call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"X-Auth-Token": self.token("admin", self.admin_password, "admin"), **kw.pop("headers", {})}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=30, **kw)


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def keystone() -> Iterator[Keystone]:
    if not (KEYSTONE_VENV / "bin" / "keystone-manage").exists():
        pytest.skip("Keystone is not installed: run scripts/install.sh --test (makes .venv-keystone)")
    work = Path(tempfile.mkdtemp(prefix="neutrino-keystone-"))
    port = _free_port()
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
    quiet = {"check": True, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.run([*manage, "db_sync"], **quiet)  # type: ignore[call-overload]
    for cmd in ("fernet_setup", "credential_setup"):
        subprocess.run([*manage, cmd, "--keystone-user", "root", "--keystone-group", "root"], **quiet)  # type: ignore[call-overload]
    url = f"http://127.0.0.1:{port}/v3"
    subprocess.run([*manage, "bootstrap", "--bootstrap-password", "ks-admin", "--bootstrap-admin-url", url,
                    "--bootstrap-public-url", url, "--bootstrap-internal-url", url,
                    "--bootstrap-region-id", "RegionOne"], **quiet)  # type: ignore[call-overload]
    serve = (f"import os; os.environ['OS_KEYSTONE_CONFIG_FILES'] = {str(conf)!r}; "
             "from keystone.wsgi.api import application; from werkzeug.serving import run_simple; "
             f"run_simple('127.0.0.1', {port}, application, threaded=True)")
    log = open(work / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([str(KEYSTONE_VENV / "bin" / "python"), "-c", serve], stdout=log, stderr=log)
    ks = Keystone(url, "ks-admin", proc)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("Keystone did not start: " + (work / "server.log").read_text()[-2000:])
            time.sleep(0.2)
        _seed(ks)
        yield ks
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        subprocess.run(["rm", "-rf", str(work)], check=False)


def _seed(ks: Keystone) -> None:
    roles = {r["name"]: r["id"] for r in ks.call("GET", "/roles").json()["roles"]}
    for project, user, password, role in (("service", "neutron", "neutron-pw", "admin"),
                                          ("demo", "demo", "demo-pw", "member")):
        pid = ks.call("POST", "/projects", json={"project": {"name": project, "domain_id": "default"}}).json()[
            "project"]["id"]
        uid = ks.call("POST", "/users", json={"user": {"name": user, "password": password,
                                                        "domain_id": "default"}}).json()["user"]["id"]
        ks.call("PUT", f"/projects/{pid}/users/{uid}/roles/{roles[role]}").raise_for_status()
        ks.ids[f"project:{project}"] = pid
        ks.ids[f"user:{user}"] = uid
