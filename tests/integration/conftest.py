"""Real kernel, real dnsmasq, real dhclient: a server on this machine, agents inside throwaway hosts.

``lab`` (module scope) starts a neutrino server and an underlay with two hosts, each running
``neutrino agent`` inside it (reaching the server over its unix socket), and the underlay's public segment
mapped on every host as physnet ``public`` with the ``upstream`` namespace on it (hosts/). Tests drive the API like a
user and run ``neutrino instance …`` inside the hosts. Its setup is one ExitStack: when a step fails
half-way (the underlay, a host, an agent), everything made before it is undone before the error is
reported. A session-end check fails the run if any namespace or process of ours is left on the machine,
or any link or nftables table of neutrino's kinds appeared in the machine's own namespace.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from neutrino.dataplane.daemons import RUN_ROOT
from neutrino.dataplane.ownership import OWNER_FILE
from neutrino.hosts import PUBLIC_INTERFACE, PUBLIC_PHYSNET, Host, Underlay
from tests.api.conftest import Server, start_server

NEUTRINO = str(Path(__import__("sys").executable).parent / "neutrino")


# What this test process created: underlay prefixes and state directories. The leak check looks only
# at these, so several xdist workers can run kernel tests side by side.
PREFIXES: list[str] = []
STATE_DIRS: list[Path] = []


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {line.split()[0] for line in out.splitlines() if line.strip()}


# What neutrino makes in a namespace it wires (bridges, VXLAN devices, lab taps, DHCP veths) and its nft
# tables. Our hosts keep all of these inside themselves: in the machine's own namespace they are leaks.
LINK_PREFIXES = ("brq", "vxlan-", "tap", "ns-")
NFT_TABLE_PREFIX = "neutrino"


def _links() -> set[str]:
    """Links of neutrino's kinds in the machine's own network namespace."""
    out = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=True).stdout
    names = {line.split(": ", 2)[1].split("@")[0] for line in out.splitlines() if ": " in line}
    return {n for n in names if n.startswith(LINK_PREFIXES)}


def _nft_tables() -> set[str]:
    """nftables tables named neutrino* in the machine's own network namespace, as "family name"."""
    out = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout
    tables = {line.removeprefix("table ").strip() for line in out.splitlines() if line.startswith("table ")}
    return {t for t in tables if t.split()[-1].startswith(NFT_TABLE_PREFIX)}


def _our_processes(state_dirs: Iterable[Path] = STATE_DIRS) -> list[str]:
    """Live (non-zombie) processes whose command line names one of our state directories, or whose
    environment does (agents get theirs as NEUTRINO_STATE_DIR)."""
    dirs = [str(d) for d in state_dirs]
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            env = (entry / "environ").read_bytes().decode(errors="replace").split("\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        env_dirs = [v.removeprefix("NEUTRINO_STATE_DIR=") for v in env if v.startswith("NEUTRINO_STATE_DIR=")]
        if state != "Z" and any(d in cmd or any(e.startswith(d) for e in env_dirs) for d in dirs):
            found.append(f"{entry.name}: {cmd[:120]}")
    return found


@pytest.fixture(scope="session", autouse=True)
def nothing_left_behind() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("integration tests need root (network namespaces)")
    # Compared with what was there before: the machine may run a neutrino of its own.
    links, tables = _links(), _nft_tables()
    yield
    left = sorted(n for n in _netns() if any(n.startswith(p) for p in PREFIXES))
    assert not left, f"namespaces left behind: {left}"
    procs = _our_processes()
    assert not procs, f"processes left behind: {procs}"
    new_links = sorted(_links() - links)
    assert not new_links, f"links left behind in the machine's own namespace: {new_links}"
    new_tables = sorted(_nft_tables() - tables)
    assert not new_tables, f"nftables tables left behind in the machine's own namespace: {new_tables}"
    owners = {f.read_text().strip() for d in STATE_DIRS for f in d.rglob(OWNER_FILE)}
    run_dirs = sorted(str(RUN_ROOT / o) for o in owners if (RUN_ROOT / o).exists())
    assert not run_dirs, f"daemon directories left behind: {run_dirs}"


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
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
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
    underlay: Underlay
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


def admin_token(server: Server) -> str:
    return str(httpx.post(f"{server.url}/identity/v3/auth/tokens", json={"auth": {"identity": {
        "methods": ["password"], "password": {"user": {"name": "admin", "domain": {"name": "Default"},
                                                       "password": "secret"}}},
        "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}}).headers["X-Subject-Token"])


def remove_run_dirs(tmp: Path) -> None:
    """The agents of a lab were stopped, not cleaned up (neutrino leaves daemons running across restarts):
    their daemons' directories under /run/neutrino/<owner> go with the lab."""
    for owner in tmp.rglob(OWNER_FILE):
        shutil.rmtree(RUN_ROOT / owner.read_text().strip(), ignore_errors=True)


@contextlib.contextmanager
def open_lab(tmp: Path, hosts: tuple[str, ...] = ("h1", "h2")) -> Iterator[Lab]:
    """A server, an underlay and one agent per host; all of it undone on exit, or at once when a step of
    the setup fails (what was made is undone in reverse order, then the error goes on)."""
    STATE_DIRS.append(tmp)
    prefix = f"nt{uuid.uuid4().hex[:6]}"
    PREFIXES.append(prefix)  # before the underlay exists: a half-made one is checked too
    with contextlib.ExitStack() as undo:
        server = start_server(tmp, f"sqlite:///{tmp / 'neutrino.db'}", "sqlite",
                              {"NEUTRINO_AGENT__AGENT_DOWN_SECONDS": "30"})
        undo.callback(server.stop)
        undo.callback(remove_run_dirs, tmp)  # after the underlay is gone (and its daemons with it)
        underlay = Underlay.create(prefix)
        undo.callback(underlay.destroy)
        api = httpx.Client(base_url=server.url, headers={"X-Auth-Token": admin_token(server)}, timeout=30)
        undo.callback(api.close)
        lab_ = Lab(server, api, underlay)
        for name in hosts:
            host = underlay.add_host(name)
            state = tmp / name
            state.mkdir()
            env = dict(os.environ, NEUTRINO_STATE_DIR=str(state), NEUTRINO_AGENT__HOST=name,
                       NEUTRINO_AGENT__SERVER_URL=f"unix:{tmp / 'neutrino.sock'}", NEUTRINO_AGENT__PASSWORD="secret",
                       NEUTRINO_AGENT__LOCAL_IP=str(host.address.ip), NEUTRINO_AGENT__HEARTBEAT_SECONDS="2",
                       NEUTRINO_LOG__LEVEL="INFO", NEUTRINO_API__SOCKET="",
                       NEUTRINO_AGENT__PHYSICAL_INTERFACE_MAPPINGS=f"{PUBLIC_PHYSNET}:{PUBLIC_INTERFACE}")
            agent = Agent(host, state, env)
            undo.callback(agent.stop)
            agent.start()
            lab_.agents[name] = agent
        lab_.wait("agents to register",  # L2, DHCP and L3 per host
                  lambda: len(lab_.call("GET", "/v2.0/agents")["agents"]) == 3 * len(hosts))
        yield lab_


@pytest.fixture(scope="module")
def lab(nothing_left_behind: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with open_lab(tmp_path_factory.mktemp("lab")) as lab_:
        yield lab_
