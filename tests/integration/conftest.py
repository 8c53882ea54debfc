"""Real kernel, real dnsmasq, real dhclient: a server on this machine, agents inside throwaway hosts.

``lab`` (module scope) starts a neutrino server and an underlay with two hosts, each running
``neutrino agent`` inside it (reaching the server over its unix socket). Tests drive the API like a
user and run ``neutrino instance …`` inside the hosts. A session-end check fails the run if any
namespace, link or process of ours is left on the machine.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from neutrino.hosts import Host, Underlay
from tests.api.conftest import Server, start_server

NEUTRINO = str(Path(__import__("sys").executable).parent / "neutrino")


# What this test process created: underlay prefixes and state directories. The leak check looks only
# at these, so several xdist workers can run kernel tests side by side.
PREFIXES: list[str] = []
STATE_DIRS: list[Path] = []


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


def _our_processes() -> list[str]:
    """Live (non-zombie) processes whose command line names one of our state directories."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and any(str(d) in cmd for d in STATE_DIRS) and "pytest" not in cmd:
            found.append(f"{entry.name}: {cmd[:120]}")
    return found


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("integration tests need root (network namespaces)")
    yield
    left = sorted(n for n in _netns() if any(n.startswith(p) for p in PREFIXES))
    assert not left, f"namespaces left behind: {left}"
    procs = _our_processes()
    assert not procs, f"processes left behind: {procs}"


@dataclass
class Agent:
    host: Host
    state_dir: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.state_dir / "agent.log", "ab")  # noqa: SIM115
        self.proc = self.host.popen([NEUTRINO, "agent"], env=self.env, stdout=log, stderr=log)

    def stop(self, kill: bool = False) -> None:
        if self.proc is not None and self.proc.poll() is None:
            (self.proc.kill if kill else self.proc.terminate)()
            self.proc.wait(10)
        self.proc = None

    def neutrino(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        done = self.host.run([NEUTRINO, *args], env=self.env, timeout=120)
        if check and done.returncode != 0:
            raise AssertionError(f"neutrino {' '.join(args)} on {self.host.name}: {done.stdout}{done.stderr}")
        return done

    def ns(self, namespace: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return self.host.run(["ip", "netns", "exec", namespace, *argv], timeout=60)


@dataclass
class Lab:
    server: Server
    api: httpx.Client
    agents: dict[str, Agent] = field(default_factory=dict)

    def call(self, method: str, path: str, expect: int | None = None, **kw: Any) -> Any:
        resp = self.api.request(method, path, **kw)
        if expect is not None:
            assert resp.status_code == expect, resp.text
        return resp.json() if resp.content else None

    def network(self, name: str, cidr: str | None = None, dhcp: bool = True) -> tuple[dict[str, Any], Any]:
        net = self.call("POST", "/v2.0/networks", 201, json={"network": {"name": name}})["network"]
        sub = None
        if cidr:
            sub = self.call("POST", "/v2.0/subnets", 201, json={"subnet": {
                "network_id": net["id"], "cidr": cidr, "ip_version": 4, "enable_dhcp": dhcp}})["subnet"]
        return net, sub

    def port(self, name: str) -> dict[str, Any]:
        found = self.call("GET", "/v2.0/ports", params={"name": name})["ports"]
        assert len(found) == 1, found
        return dict(found[0])

    def wait(self, what: str, check: Any, timeout: float = 15.0) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.02)

    def dnsmasq_pid(self, agent: Agent, network_id: str) -> int | None:
        try:
            pid = int((agent.state_dir / "agent" / "dhcp" / network_id / "pid").read_text())
        except (OSError, ValueError):
            return None
        return pid if Path(f"/proc/{pid}").exists() and b"dnsmasq" in Path(f"/proc/{pid}/cmdline").read_bytes() \
            else None


@pytest.fixture(scope="module")
def lab(nothing_left_behind: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    tmp = tmp_path_factory.mktemp("lab")
    server = start_server(tmp, f"sqlite:///{tmp / 'neutrino.db'}", "sqlite",
                          {"NEUTRINO_AGENT__AGENT_DOWN_SECONDS": "30"})
    underlay = Underlay.create()
    PREFIXES.append(underlay.prefix)
    STATE_DIRS.append(tmp)
    lab_: Lab | None = None
    try:
        token = httpx.post(f"{server.url}/identity/v3/auth/tokens", json={"auth": {"identity": {
            "methods": ["password"], "password": {"user": {"name": "admin", "domain": {"name": "Default"},
                                                           "password": "secret"}}},
            "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}}).headers["X-Subject-Token"]
        lab_ = Lab(server, httpx.Client(base_url=server.url, headers={"X-Auth-Token": token}, timeout=30))
        for name in ("h1", "h2"):
            host = underlay.add_host(name)
            state = tmp / name
            state.mkdir()
            env = dict(os.environ, NEUTRINO_STATE_DIR=str(state), NEUTRINO_AGENT__HOST=name,
                       NEUTRINO_AGENT__SERVER_URL=f"unix:{tmp / 'neutrino.sock'}", NEUTRINO_AGENT__PASSWORD="secret",
                       NEUTRINO_AGENT__LOCAL_IP=str(host.address.ip), NEUTRINO_AGENT__HEARTBEAT_SECONDS="2",
                       NEUTRINO_LOG__LEVEL="INFO", NEUTRINO_API__SOCKET="")
            agent = Agent(host, state, env)
            agent.start()
            lab_.agents[name] = agent
        lab_.wait("agents to register", lambda: len(lab_.call("GET", "/v2.0/agents")["agents"]) == 4)  # type: ignore[union-attr]
        yield lab_
    finally:
        if lab_ is not None:
            for agent in lab_.agents.values():
                agent.stop()
        underlay.destroy()
        server.stop()
