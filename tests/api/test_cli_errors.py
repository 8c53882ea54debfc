"""The real ``neutrino`` command against a real server: every failure is one line on stderr with a non-zero
exit status, never a traceback (server down, wrong password, unknown network or instance, bad database);
global options work on either side of the command; the REST client authenticates again after a 401."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from neutrino.client import Client, Credentials
from neutrino.errors import ClientError
from tests.api.conftest import VENV_BIN, Server, free_port, start_server

NEUTRINO = str(VENV_BIN / "neutrino")


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("cli-errors")
    server = start_server(tmp, f"sqlite:///{tmp / 'neutrino.db'}", "sqlite")
    try:
        yield server
    finally:
        server.stop()


def run(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([NEUTRINO, *argv], env=env, capture_output=True, text=True, timeout=60, check=False)


def one_line_error(done: subprocess.CompletedProcess[str], *words: str) -> str:
    assert done.returncode != 0, done
    assert "Traceback" not in done.stderr + done.stdout
    assert done.stderr.count("\n") == 1, done.stderr
    for word in words:
        assert word in done.stderr, (word, done.stderr)
    return done.stderr


def fake_instance(state_dir: Path, name: str) -> Path:
    """An instance's bookkeeping only (no kernel side): enough for delete to reach the server."""
    d = state_dir / "agent" / "instances" / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "instance.json").write_text(json.dumps({
        "name": name, "port_id": "6f1cb4d0-4c60-4d31-9b3f-6d0a2a3e9a11", "network_id": "x", "mac": "fa:16:3e:00:00:01",
        "mtu": 1450, "addresses": ["10.0.0.3/24"], "gateway": None, "dhcp": False}))
    return d


def test_server_not_running(tmp_path: Path) -> None:
    env = dict(os.environ, NEUTRINO_API__PORT=str(free_port()), NEUTRINO_IDENTITY__ADMIN_PASSWORD="secret")
    state = str(tmp_path)
    done = run(env, "status", "--state-dir", state)
    assert done.returncode == 1 and "Traceback" not in done.stdout + done.stderr
    assert "cannot connect (is the server running?)" in done.stdout
    one_line_error(run(env, "--state-dir", state, "instance", "create", "vm1", "--network", "demo"),
                   "neutrino instance create: server at http://127.0.0.1:", "cannot connect")
    d = fake_instance(tmp_path, "vm2")
    one_line_error(run(env, "instance", "delete", "vm2", "--state-dir", state), "cannot connect")
    assert (d / "instance.json").exists(), "nothing is removed while the server cannot be reached"


def test_wrong_password(srv: Server) -> None:
    env = dict(srv.env, NEUTRINO_IDENTITY__ADMIN_PASSWORD="not-the-password")
    state = str(srv.state_dir)
    done = run(env, "status", "--state-dir", state, "--format", "json")
    report = json.loads(done.stdout)
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert any("user 'admin' (project 'admin') was refused" in p for p in report["problems"])
    one_line_error(run(env, "instance", "create", "vm1", "--network", "demo", "--state-dir", state),
                   "neutrino instance create: identity at ", "was refused: wrong password?")
    fake_instance(srv.state_dir, "vm3")
    try:
        one_line_error(run(env, "instance", "delete", "vm3", "--state-dir", state), "was refused")
    finally:
        done = run(srv.env, "instance", "delete", "vm3", "--state-dir", state)  # right password: port 404 is fine
        assert done.returncode == 0, done.stderr


def test_unknown_network_and_instance(srv: Server) -> None:
    state = str(srv.state_dir)
    one_line_error(run(srv.env, "instance", "create", "vm1", "--network", "nope", "--state-dir", state),
                   "neutrino instance create: network 'nope': not found")
    one_line_error(run(srv.env, "instance", "create", "vm1", "--network", "6f1cb4d0-4c60-4d31-9b3f-6d0a2a3e9a11",
                       "--state-dir", state), "not found")
    one_line_error(run(srv.env, "instance", "delete", "vm9", "--state-dir", state),
                   "neutrino instance delete: instance vm9 not found")
    one_line_error(run(srv.env, "instance", "exec", "vm9", "--state-dir", state, "--", "true"),
                   "instance vm9 not found")
    one_line_error(run(srv.env, "instance", "create", "Not_A_Name", "--network", "x", "--state-dir", state),
                   "instance name 'Not_A_Name'")


def test_global_options_either_side_against_the_server(srv: Server) -> None:
    before = run(srv.env, "--state-dir", str(srv.state_dir), "status", "--format", "json")
    after = run(srv.env, "status", "--format", "json", "--state-dir", str(srv.state_dir))
    assert before.returncode == after.returncode == 0, before.stdout + before.stderr
    a, b = json.loads(before.stdout), json.loads(after.stdout)
    assert a["state_dir"] == b["state_dir"] == str(srv.state_dir.resolve())
    assert a["api"]["reachable"] and a["counts"].keys() == {"networks", "subnets", "ports"}
    table = run(srv.env, "status", "--state-dir", str(srv.state_dir))
    assert table.returncode == 0 and "status:  OK" in table.stdout


def test_db_upgrade(srv: Server, tmp_path: Path) -> None:
    done = run(srv.env, "db", "upgrade", "--state-dir", str(srv.state_dir))
    assert done.returncode == 0 and "is at the current schema" in done.stdout, done.stderr
    fresh = dict(os.environ, NEUTRINO_DATABASE__URL=f"sqlite:///{tmp_path / 'new.db'}")
    done = run(fresh, "--state-dir", str(tmp_path), "db", "upgrade")
    assert done.returncode == 0 and (tmp_path / "new.db").stat().st_size > 0
    bad = dict(os.environ, NEUTRINO_DATABASE__URL=f"postgresql://u:hush@127.0.0.1:{free_port()}/none")
    err = one_line_error(run(bad, "db", "upgrade", "--state-dir", str(tmp_path)),
                         "neutrino db upgrade: database at postgresql://u:***@127.0.0.1:")
    assert "hush" not in err


def test_the_client_authenticates_again_after_a_401(srv: Server) -> None:
    creds = Credentials("admin", "secret", "admin", srv.url, "/identity/v3")

    async def go() -> None:
        async with Client(srv.url, creds) as api:
            assert "networks" in await api.call("GET", "/v2.0/networks")
            first = api.token
            revoked = httpx.delete(f"{srv.url}/identity/v3/auth/tokens", timeout=10,
                                   headers={"X-Auth-Token": first, "X-Subject-Token": first})
            assert revoked.status_code == 204
            assert "networks" in await api.call("GET", "/v2.0/networks")
            assert api.token != first
            with pytest.raises(ClientError) as info:
                await api.call("GET", "/v2.0/networks/nope")
            assert info.value.status == 404 and str(info.value).startswith("GET /v2.0/networks/nope: 404 ")
            assert "\n" not in str(info.value)

    asyncio.run(go())
