"""The multi-host lab as an operator drives it: only the `neutrino` and `openstack` commands.

`neutrino lab up --hosts 3` (a server and three hosts made of namespaces, processes that outlive the
command), instances on every host of one network get DHCP and reach each other across hosts, the stock
CLI lists every host's agents and a network's DHCP agent, `lab exec` reaches the hosts and the upstream;
a power cut of the host serving DHCP (`lab host stop`): it answers nothing, its agents go dead, DHCP moves
to a live host and serves a new instance; `lab host start` brings it back with its agents and instances; a
larger N grows the lab; `lab down` leaves nothing. A short agent_down_seconds (6 s) keeps it quick.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from neutrino.dataplane.daemons import RUN_ROOT
from neutrino.hosts import Process
from neutrino.lab.multihost import prefix_for
from tests.api.conftest import VENV_BIN, free_port
from tests.integration.conftest import PREFIXES, STATE_DIRS, _netns, _our_processes

pytestmark = pytest.mark.xdist_group(name="kernel")


@dataclass
class Operator:
    state: Path
    clouds: Path
    env: dict[str, str]   # NEUTRINO_STATE_DIR names the lab: commands need no --state-dir

    def neutrino(self, *args: str, check: bool = True, env: dict[str, str] | None = None,
                 timeout: float = 120) -> subprocess.CompletedProcess[str]:
        done = subprocess.run([str(VENV_BIN / "neutrino"), *args], env=env or self.env, capture_output=True,
                              text=True, timeout=timeout)
        if check and done.returncode != 0:
            raise AssertionError(f"neutrino {' '.join(args)}: {done.returncode}\n{done.stdout}{done.stderr}")
        return done

    def timed(self, limit: float, *args: str, env: dict[str, str] | None = None) -> str:
        start = time.monotonic()
        out = self.neutrino(*args, env=env).stdout
        took = time.monotonic() - start
        assert took < limit, f"neutrino {' '.join(args)} took {took:.1f} s (limit {limit:.0f} s)"
        return out

    def openstack(self, *args: str) -> Any:
        done = subprocess.run([str(VENV_BIN / "openstack"), "--os-cloud", "neutrino", *args, "-f", "json"],
                              env=dict(self.env, OS_CLIENT_CONFIG_FILE=str(self.clouds)), capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, f"openstack {' '.join(args)}: {done.stderr}"
        return json.loads(done.stdout) if done.stdout.strip() else None

    def api(self) -> httpx.Client:
        """The API as the clouds.yaml entry the lab wrote (admin), for polling."""
        auth = yaml.safe_load(self.clouds.read_text())["clouds"]["neutrino"]["auth"]
        body = {"auth": {"identity": {"methods": ["password"], "password": {"user": {
            "name": auth["username"], "domain": {"name": "Default"}, "password": auth["password"]}}},
            "scope": {"project": {"name": auth["project_name"], "domain": {"name": "Default"}}}}}
        token = httpx.post(f"{auth['auth_url']}/auth/tokens", json=body).headers["X-Subject-Token"]
        return httpx.Client(base_url=auth["auth_url"].removesuffix("/identity/v3"), headers={"X-Auth-Token": token})

    def ping(self, instance: str, ip: str) -> bool:
        return self.neutrino("instance", "exec", instance, "--", "ping", "-c", "1", "-W", "1", ip,
                             check=False).returncode == 0

    def lab(self) -> dict[str, Any]:
        return dict(json.loads((self.state / "lab.json").read_text()))


def wait(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f} s waiting for {what}"
        time.sleep(0.2)
    return value


def reaches(op: Operator, instance: str, ip: str) -> None:
    wait(f"{instance} to reach {ip}", lambda: op.ping(instance, ip), 15)


def alive(agents: list[dict[str, Any]], host: str) -> set[bool]:
    return {a["Alive"] for a in agents if a["Host"] == host}


def test_multihost_lab(nothing_left_behind: None, tmp_path: Path) -> None:
    state = tmp_path / "lab"
    STATE_DIRS.append(state)
    PREFIXES.append(prefix_for(state))  # the lab's namespaces are <prefix>-host1, -ul, -upstream
    env = dict(os.environ, NEUTRINO_STATE_DIR=str(state), NEUTRINO_AGENT__AGENT_DOWN_SECONDS="6")
    op = Operator(state, tmp_path / "clouds.yaml", env)
    try:
        run_lab(op, free_port())
    finally:
        op.neutrino("lab", "down", check=False)


def run_lab(op: Operator, port: int) -> None:
    op.timed(60, "lab", "up", "--hosts", "3", "--port", str(port), "--clouds-yaml", str(op.clouds))
    first = op.lab()
    assert list(first["hosts"]) == ["host1", "host2", "host3"]
    op.timed(30, "lab", "up", "--hosts", "3")  # idempotent: the same processes go on
    assert op.lab() == first
    agents = op.openstack("network", "agent", "list")
    assert sorted((a["Host"], a["Agent Type"]) for a in agents) == sorted(
        (f"host{i}", kind) for i in (1, 2, 3) for kind in ("DHCP agent", "L3 agent", "Linux bridge agent"))
    assert all(a["Alive"] is True for a in agents)

    # Every host's VXLAN endpoint is on its underlay interface; the upstream answers on the public segment.
    for i in (1, 2, 3):
        assert f"198.18.0.{i}/24" in op.neutrino("lab", "exec", f"host{i}", "--", "ip", "-4", "-o", "addr").stdout
    assert "172.24.4.1/24" in op.neutrino("lab", "exec", "upstream", "--", "ip", "-4", "-o", "addr").stdout
    assert op.neutrino("lab", "exec", "host2", "--", "sh", "-c", "exit 3", check=False).returncode == 3

    # One network, an instance on each host: DHCP, and each reaches the others across hosts.
    op.openstack("network", "create", "demo")
    op.openstack("subnet", "create", "demo-v4", "--network", "demo", "--subnet-range", "10.77.0.0/24")
    ips = {}
    for i in (1, 2, 3):
        out = op.neutrino("instance", "create", "--host", f"host{i}", "--network", "demo", f"vm{i}").stdout
        assert "(DHCP)" in out and "10.77.0." in out, out
    rows = json.loads(op.neutrino("instance", "list", "--format", "json").stdout)
    for row in rows:
        assert row["live_addresses"] == row["addresses"], row  # the DHCP lease is the port's address
        ips[row["name"]] = row["addresses"][0].split("/")[0]
    assert sorted((r["host"], r["name"]) for r in rows) == [("host1", "vm1"), ("host2", "vm2"), ("host3", "vm3")]
    for src, dst in (("vm1", "vm2"), ("vm1", "vm3"), ("vm3", "vm2")):
        reaches(op, src, ips[dst])

    [dhcp] = op.openstack("network", "agent", "list", "--network", "demo")
    assert dhcp["Agent Type"] == "DHCP agent" and dhcp["Alive"] is True
    down = dhcp["Host"]
    a, b = sorted({"host1", "host2", "host3"} - {down})
    vm_down, vm_a, vm_b = (f"vm{h[-1]}" for h in (down, a, b))

    # A power cut of the DHCP host; `--state-dir` after the words works as well as the environment.
    plain = {k: v for k, v in op.env.items() if k != "NEUTRINO_STATE_DIR"}
    op.timed(10, "lab", "host", "stop", "--state-dir", str(op.state), down, env=plain)
    assert op.neutrino("lab", "exec", down, "--", "true", check=False).returncode != 0
    assert f"{prefix_for(op.state)}-{down}" not in _netns()
    assert not op.ping(vm_a, ips[vm_down]), "a stopped host still answers"
    reaches(op, vm_a, ips[vm_b])
    with op.api() as api:
        def dead() -> bool:
            return not any(x["alive"] for x in api.get("/v2.0/agents", params={"host": down}).json()["agents"])
        wait(f"{down}'s agents to show dead", dead, 30)
        net = api.get("/v2.0/networks", params={"name": "demo"}).json()["networks"][0]["id"]
        wait("DHCP to move off the dead host", lambda: [
            x for x in api.get(f"/v2.0/networks/{net}/dhcp-agents").json()["agents"] if x["host"] != down], 30)
    agents = op.openstack("network", "agent", "list")
    assert alive(agents, down) == {False} and alive(agents, a) == alive(agents, b) == {True}
    [moved] = op.openstack("network", "agent", "list", "--network", "demo")
    assert moved["Host"] in (a, b) and moved["Alive"] is True
    out = op.neutrino("instance", "create", "--host", a, "--network", "demo", "vm4").stdout  # DHCP served
    assert "(DHCP)" in out and "10.77.0." in out, out

    # Back: its agents alive again, its instance with it (DHCP from the live host), reachable again.
    op.timed(60, "lab", "host", "start", down)
    assert alive(op.openstack("network", "agent", "list", "--host", down), down) == {True}
    reaches(op, vm_a, ips[vm_down])
    reaches(op, vm_down, ips[vm_b])
    op.neutrino("instance", "delete", "vm4")
    assert "vm4" not in op.neutrino("instance", "list").stdout

    # A larger N grows the lab; the hosts there go on as they were.
    before = op.lab()["hosts"]
    op.timed(60, "lab", "up", "--hosts", "4")
    after = op.lab()["hosts"]
    assert {h: after[h] for h in before} == before and "host4" in after
    assert alive(op.openstack("network", "agent", "list", "--host", "host4"), "host4") == {True}

    owners = [f.read_text().strip() for f in sorted(op.state.glob("hosts/*/owner-id"))]
    assert len(owners) == 4
    # A stale record: host4's agent pid now belongs to another process (same words in its command line,
    # another start time). `lab down` must not take it for the agent.
    decoy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)", "agent"])
    try:
        proc = Process.of(decoy.pid)
        assert proc is not None
        lab = op.lab()
        lab["hosts"]["host4"]["agent"] = [proc.pid, proc.start - 1]
        (op.state / "lab.json").write_text(json.dumps(lab))
        op.timed(50, "lab", "down")
        assert decoy.poll() is None, "lab down killed a process that only had a recorded pid"
    finally:
        decoy.kill()
        decoy.wait()
    assert not [n for n in _netns() if n.startswith(prefix_for(op.state))]
    assert not _our_processes([op.state])
    assert not [o for o in owners if (RUN_ROOT / o).exists()]
    assert not (op.state / "lab.json").exists()
    assert op.neutrino("lab", "exec", "host1", "--", "true", check=False).returncode != 0


def test_lab_up_again_uses_the_configuration_the_lab_was_made_with(nothing_left_behind: None,
                                                                   tmp_path: Path) -> None:
    """`lab up` run again without --config (an agent died: it starts it again) reads the configuration file
    the lab was made with, as every other lab command does; here that file holds the admin password."""
    state = tmp_path / "lab"
    STATE_DIRS.append(state)
    PREFIXES.append(prefix_for(state))
    conf = tmp_path / "lab.yaml"
    conf.write_text("identity:\n  admin_password: lab-secret-7\n")
    op = Operator(state, tmp_path / "clouds.yaml", dict(os.environ, NEUTRINO_STATE_DIR=str(state)))
    try:
        op.neutrino("lab", "up", "--hosts", "1", "--port", str(free_port()), "--clouds-yaml", "", "--config",
                    str(conf))
        agent = Process(*op.lab()["hosts"]["host1"]["agent"])
        agent.stop()
        op.neutrino("lab", "up")
        again = Process(*op.lab()["hosts"]["host1"]["agent"])
        assert again != agent and again.alive()
    finally:
        op.neutrino("lab", "down", check=False)


def test_a_process_is_known_by_pid_and_start_time() -> None:
    """What makes the lab's records safe: a record whose start time is not the running process's is not
    that process (the pid was reused), and a signal sent through it reaches nothing."""
    child = subprocess.Popen(["sleep", "60"])
    try:
        me = Process.of(child.pid)
        deadline = time.monotonic() + 5
        while me is not None and me.cmdline() != ["sleep", "60"] and time.monotonic() < deadline:
            time.sleep(0.01)  # just forked: its command line is the new program's once exec is done
        assert me is not None and me.alive() and me.cmdline() == ["sleep", "60"]
        stale = Process(child.pid, me.start + 1)
        assert not stale.alive()
        assert not stale.signal(signal.SIGKILL)
        assert child.poll() is None
        assert me.signal(signal.SIGKILL)
        child.wait()
        assert not me.alive() and Process.of(child.pid) is None and not me.signal()
    finally:
        child.kill()
        child.wait()
