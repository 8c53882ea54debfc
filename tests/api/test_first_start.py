"""First start without a configured admin password, and the refusal to face a network with a weak one.

Everything runs the real ``neutrino`` command. ``neutrino up`` also runs this host's agent, so it runs in
a network namespace of its own (``unshare --net``): the agent sees an empty host and touches nothing of
the machine's. The test reaches it through its unix socket (a file, so outside the namespace too) and runs
openstacksdk inside the namespace; ``neutrino server`` (no agent) runs in the test's own namespace.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from tests.api.conftest import free_port

VENV_BIN = Path(sys.executable).parent
NEUTRINO = str(VENV_BIN / "neutrino")
STRONG = "correct-horse-battery-staple-42"

# Checks openstacksdk can use the written clouds.yaml as is: run where the server's 127.0.0.1 is.
# Also tries the well-known admin/admin pair there.
SDK_CHECK = """
import json, httpx, openstack
conn = openstack.connect(cloud="neutrino")
net = conn.network.create_network(name="first-start")
networks = [n.name for n in conn.network.networks()]
conn.network.delete_network(net)
auth_url = conn.config.config["auth"]["auth_url"]
admin_admin = httpx.post(auth_url + "/auth/tokens", json={"auth": {"identity": {"methods": ["password"],
    "password": {"user": {"name": "admin", "domain": {"name": "Default"}, "password": "admin"}}}}})
print(json.dumps({"networks": networks, "admin_admin": admin_admin.status_code}))
"""

pytestmark = pytest.mark.xdist_group("first-start")


def clean_env(**extra: str) -> dict[str, str]:
    """The caller's environment without any neutrino or OpenStack settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("NEUTRINO_", "OS_"))}
    env.update({"NEUTRINO_LOG__LEVEL": "WARNING", **extra})
    return env


def needs_netns() -> None:
    if os.geteuid() != 0 or not shutil.which("unshare") or not shutil.which("nsenter"):
        pytest.skip("needs root, unshare and nsenter (neutrino up runs its agent in a namespace of its own)")


@dataclass
class Running:
    proc: subprocess.Popen[bytes]
    state: Path
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text()

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def in_netns(self, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in the namespace of ``neutrino up`` (for a server started with ``netns=True``)."""
        pid = self.neutrino_pid()
        return subprocess.run(["nsenter", "-t", str(pid), "-n", *argv], env=env, capture_output=True, text=True,
                              timeout=120)

    def neutrino_pid(self) -> int:
        return int((self.state / "neutrino.pid").read_text().split()[0])


def start(command: str, state: Path, env: dict[str, str], *args: str, netns: bool = False,
          wait: bool = True) -> Running:
    port = free_port()
    log = state.parent / f"{state.name}-{command}-{port}.log"
    argv = [NEUTRINO, command, "--state-dir", str(state), "--port", str(port), *args]
    if netns:
        argv = ["unshare", "--net", "--", "sh", "-c", 'ip link set lo up && exec "$@"', "sh", *argv]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=out, start_new_session=True)
    running = Running(proc, state, port, log)
    if wait:
        wait_ready(running)
    return running


def wait_ready(running: Running, timeout: float = 30) -> None:
    """Until the API answers on its unix socket (reachable from any namespace)."""
    sock = running.state / "neutrino.sock"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running.proc.poll() is not None:
            raise AssertionError(f"neutrino exited with {running.proc.returncode}:\n{running.output()}")
        if sock.exists():
            try:
                with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=2) as client:
                    if client.get("http://neutrino/").status_code == 200:
                        return
            except httpx.HTTPError:
                pass
        time.sleep(0.1)
    running.stop()
    raise AssertionError(f"neutrino did not come up:\n{running.output()}")


@pytest.fixture
def servers() -> Iterator[list[Running]]:
    started: list[Running] = []
    try:
        yield started
    finally:
        for running in started:
            running.stop()


def login(url: str, password: str, user: str = "admin") -> httpx.Response:
    return httpx.post(f"{url}/identity/v3/auth/tokens", json={"auth": {
        "identity": {"methods": ["password"], "password": {"user": {
            "name": user, "domain": {"name": "Default"}, "password": password}}},
        "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}})


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_start_generates_keeps_and_reuses_the_admin_password(tmp_path: Path, servers: list[Running]) -> None:
    needs_netns()
    state, clouds = tmp_path / "state", tmp_path / "clouds.yaml"
    other = {"auth": {"auth_url": "https://keystone.example/v3", "username": "me", "password": "theirs"}}
    clouds.write_text(yaml.safe_dump({"clouds": {"elsewhere": other}}))
    clouds.chmod(0o644)

    # First start: `neutrino up` with no password in the config.
    up = start("up", state, clean_env(), "--clouds-yaml", str(clouds), netns=True)
    servers.append(up)
    kept = state / "admin-password"
    assert kept.exists() and mode(kept) == 0o600
    password = kept.read_text().strip()
    assert len(password) >= 20 and password.isalnum()
    said = up.output()
    assert f"generated the password of the identity admin 'admin' (project 'admin'): {password}" in said
    assert str(kept.resolve()) in said and "Traceback" not in said
    assert mode(clouds) == 0o600  # it holds a password now
    written = yaml.safe_load(clouds.read_text())["clouds"]
    assert written["elsewhere"] == other  # the other cloud is untouched
    assert written["neutrino"]["auth"]["password"] == password
    assert written["neutrino"]["auth"]["auth_url"] == f"{up.url}/identity/v3"

    # openstacksdk, with nothing but the written clouds.yaml, where that URL leads to this server.
    sdk = up.in_netns([sys.executable, "-c", SDK_CHECK], clean_env(OS_CLIENT_CONFIG_FILE=str(clouds)))
    assert sdk.returncode == 0, sdk.stderr
    seen = json.loads(sdk.stdout)
    assert "first-start" in seen["networks"]
    assert seen["admin_admin"] == 401  # the well-known pair does not log in
    up.stop()
    first = kept.stat()

    # Restart, as `neutrino server` this time: the same password, not a new one, and nothing printed.
    server = start("server", state, clean_env())
    servers.append(server)
    assert "generated" not in server.output() and password not in server.output()
    assert kept.read_text().strip() == password and kept.stat().st_ino == first.st_ino
    assert login(server.url, password).status_code == 201
    assert login(server.url, "admin").status_code == 401
    # The tools on this state dir find the generated password themselves.
    tools_env = clean_env(NEUTRINO_API__PORT=str(server.port))
    entry = subprocess.run([NEUTRINO, "clouds-yaml", "--state-dir", str(state)], env=tools_env,
                           capture_output=True, text=True, timeout=60)
    assert entry.returncode == 0, entry.stderr
    assert yaml.safe_load(entry.stdout)["clouds"]["neutrino"]["auth"]["password"] == password
    status = subprocess.run([NEUTRINO, "status", "--json", "--state-dir", str(state)], env=tools_env,
                            capture_output=True, text=True, timeout=60)
    report = json.loads(status.stdout)
    assert report["api"]["reachable"] and "counts" in report and report["counts"]["networks"] == 0, status.stdout
    assert not [p for p in report["problems"] if "401" in p or "password" in p]


def test_the_configured_password_wins_and_none_is_generated(tmp_path: Path, servers: list[Running]) -> None:
    state = tmp_path / "state"
    server = start("server", state, clean_env(NEUTRINO_IDENTITY__ADMIN_PASSWORD=STRONG))
    servers.append(server)
    assert not (state / "admin-password").exists() and "generated" not in server.output()
    assert login(server.url, STRONG).status_code == 201
    server.stop()

    # The config stops setting one: a password is generated, and it replaces the configured one.
    server = start("server", state, clean_env())
    servers.append(server)
    generated = (state / "admin-password").read_text().strip()
    assert f": {generated}" in server.output()
    assert login(server.url, generated).status_code == 201
    assert login(server.url, STRONG).status_code == 401
    server.stop()

    # And a configured one wins again over the kept one.
    server = start("server", state, clean_env(NEUTRINO_IDENTITY__ADMIN_PASSWORD=STRONG))
    servers.append(server)
    assert login(server.url, STRONG).status_code == 201
    assert login(server.url, generated).status_code == 401


def test_tools_say_what_to_do_before_any_password_exists(tmp_path: Path) -> None:
    done = subprocess.run([NEUTRINO, "clouds-yaml", "--state-dir", str(tmp_path / "new")], env=clean_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and done.stdout == ""
    assert "identity.admin_password is not set" in done.stderr and "admin-password" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("command,host,user,password,reason", [
    ("server", "0.0.0.0", "admin", "admin", "well-known"),
    ("server", "::", "admin", "secret", "well-known"),
    ("server", "192.0.2.10", "admin", "Zq9-short", "shorter than 12"),
    ("server", "0.0.0.0", "operator-account", "operator-account", "the user name"),
    ("server", "0.0.0.0", "admin", "nomoresecret", "well-known"),
    ("up", "0.0.0.0", "admin", "change-me", "well-known"),
])
def test_a_weak_password_is_refused_beyond_loopback(tmp_path: Path, command: str, host: str, user: str,
                                                    password: str, reason: str) -> None:
    if command == "up":
        needs_netns()  # should it start after all, its agent stays in a namespace of its own
    env = clean_env(NEUTRINO_IDENTITY__ADMIN_PASSWORD=password, NEUTRINO_IDENTITY__ADMIN_USER=user)
    running = start(command, tmp_path / "state", env, "--host", host, netns=command == "up", wait=False)
    try:
        code = running.proc.wait(60)
    finally:
        running.stop()
    said = running.output().strip()
    assert code == 2, said
    assert len(said.splitlines()) == 1 and "Traceback" not in said, said
    assert said.startswith(f"neutrino: configuration error: refusing to listen on {host} ")
    assert reason in said and "set identity.admin_password" in said and "listen on 127.0.0.1" in said
    assert not listening(running.port) and not (tmp_path / "state" / "neutrino.db").exists()


@pytest.mark.parametrize("host,password", [("0.0.0.0", None), ("0.0.0.0", STRONG), ("127.0.0.1", "secret"),
                                           ("localhost", "admin")])
def test_what_may_listen(tmp_path: Path, servers: list[Running], host: str, password: str | None) -> None:
    """A generated or strong password anywhere; any password on loopback (the test suites use 'secret')."""
    needs_netns()  # the 0.0.0.0 ones listen in a namespace of their own, not on this machine's interfaces
    env = clean_env(**({"NEUTRINO_IDENTITY__ADMIN_PASSWORD": password} if password else {}))
    running = start("server", tmp_path / "state", env, "--host", host, netns=True)
    servers.append(running)
    assert running.proc.poll() is None
    effective = password or (tmp_path / "state" / "admin-password").read_text().strip()
    sock = tmp_path / "state" / "neutrino.sock"
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), timeout=30) as client:
        resp = client.post("http://neutrino/identity/v3/auth/tokens", json={"auth": {"identity": {
            "methods": ["password"], "password": {"user": {"name": "admin", "domain": {"id": "default"},
                                                           "password": effective}}}}})
    assert resp.status_code == 201, resp.text


def test_clouds_yaml_is_written_0600_and_refuses_a_file_that_is_not_one(tmp_path: Path) -> None:
    from neutrino import config
    from neutrino.errors import ConfigError
    from neutrino.server import write_clouds_yaml

    cfg = config.load(None, env={"NEUTRINO_STATE_DIR": str(tmp_path), "NEUTRINO_IDENTITY__ADMIN_PASSWORD": STRONG})
    target = tmp_path / "real" / "clouds.yaml"
    target.parent.mkdir()
    target.write_text("clouds:\n  keep: {auth: {auth_url: 'http://x'}}\n")
    target.chmod(0o644)
    link = tmp_path / "clouds.yaml"
    link.symlink_to(target)
    old_umask = os.umask(0)  # even a permissive umask gives 0600
    try:
        write_clouds_yaml(cfg, link)
    finally:
        os.umask(old_umask)
    assert link.is_symlink() and mode(target) == 0o600
    data: dict[str, Any] = yaml.safe_load(target.read_text())
    assert set(data["clouds"]) == {"keep", "neutrino"} and data["clouds"]["neutrino"]["auth"]["password"] == STRONG
    assert [p.name for p in target.parent.iterdir()] == ["clouds.yaml"]  # no temp file left behind
    bogus = tmp_path / "bogus.yaml"
    bogus.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match=r"not a clouds\.yaml"):
        write_clouds_yaml(cfg, bogus)
    assert bogus.read_text() == "- just\n- a list\n"
