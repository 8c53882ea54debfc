"""``neutrino up`` as the one process of a single machine runs the L3 agent too: a router with a gateway
on the public physnet and an instance behind it work; SIGTERM stops ``up`` within 15 s and leaves the
router's namespace, its NAT table and conntrack in place (the instance keeps reaching the upstream while
nothing of neutrino runs); a new ``up`` changes nothing on its first pass; ``neutrino cleanup`` then
removes it all.

``up`` runs inside a throwaway host (hosts/) whose public segment is mapped as physnet ``public``; the
test reaches the API through ``up``'s unix socket.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from neutrino.hosts import PUBLIC_INTERFACE, PUBLIC_PHYSNET, PUBLIC_V4, Host, Underlay
from tests.integration.conftest import NEUTRINO, PREFIXES, STATE_DIRS, remove_run_dirs

pytestmark = pytest.mark.xdist_group(name="kernel")
UPSTREAM = str(PUBLIC_V4.ip)


class Up:
    def __init__(self, host: Host, state: Path) -> None:
        self.host, self.state = host, state
        self.env = dict(os.environ, NEUTRINO_STATE_DIR=str(state), NEUTRINO_AGENT__HOST="single",
                        NEUTRINO_IDENTITY__ADMIN_PASSWORD="secret", NEUTRINO_LOG__LEVEL="INFO",
                        NEUTRINO_AGENT__LOCAL_IP=str(host.address.ip),
                        NEUTRINO_AGENT__PHYSICAL_INTERFACE_MAPPINGS=f"{PUBLIC_PHYSNET}:{PUBLIC_INTERFACE}",
                        NEUTRINO_API__PORT="9696")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = state / "up.log"

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = self.host.popen([NEUTRINO, "up", "--clouds-yaml", ""], env=self.env, stdout=log,
                                        stderr=log)
        deadline = time.monotonic() + 30
        while not self.ready():
            assert self.proc.poll() is None, self.log.read_text()
            assert time.monotonic() < deadline, "neutrino up did not answer"
            time.sleep(0.1)

    def ready(self) -> bool:
        try:
            return self.client().get("/").status_code < 500
        except httpx.HTTPError:
            return False

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.HTTPTransport(uds=str(self.state / "neutrino.sock")),
                            base_url="http://neutrino", timeout=30)

    def stop(self) -> float:
        """SIGTERM; how long it took to exit."""
        assert self.proc is not None
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        return time.monotonic() - started

    def neutrino(self, *args: str) -> str:
        done = self.host.run([NEUTRINO, *args], env=self.env, timeout=120)
        assert done.returncode == 0, f"neutrino {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout


@pytest.fixture
def up(nothing_left_behind: None, tmp_path: Path) -> Iterator[Up]:
    STATE_DIRS.append(tmp_path)
    prefix = f"nt{uuid.uuid4().hex[:6]}"
    PREFIXES.append(prefix)
    underlay = Underlay.create(prefix)
    try:
        host = underlay.add_host("single")
        runner = Up(host, tmp_path / "state")
        runner.state.mkdir()
        yield runner
        if runner.proc is not None:
            runner.stop()
        runner.neutrino("cleanup")
    finally:
        underlay.destroy()
        remove_run_dirs(tmp_path)


def token(api: httpx.Client) -> str:
    return str(api.post("/identity/v3/auth/tokens", json={"auth": {"identity": {
        "methods": ["password"], "password": {"user": {"name": "admin", "domain": {"name": "Default"},
                                                       "password": "secret"}}},
        "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}}).headers["X-Subject-Token"])


def call(api: httpx.Client, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    resp = api.request(method, path, json=body)
    assert resp.status_code < 300, resp.text
    return resp.json() if resp.content else None


def wait(what: str, check: Any, timeout: float = 20) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


def first_pass_changes(log: Path, after: int) -> list[str]:
    return re.findall(r"pass 1 at revision \d+: (\d+) changes", log.read_text())[after:]


def test_up_stops_within_15_s_leaving_routers_and_nat(up: Up) -> None:
    up.start()
    api = up.client()
    api.headers["X-Auth-Token"] = token(api)
    ext = call(api, "POST", "/v2.0/networks", {"network": {
        "name": "public", "router:external": True, "provider:network_type": "flat",
        "provider:physical_network": PUBLIC_PHYSNET}})["network"]
    call(api, "POST", "/v2.0/subnets", {"subnet": {
        "network_id": ext["id"], "cidr": str(PUBLIC_V4.network), "ip_version": 4, "enable_dhcp": False,
        "gateway_ip": UPSTREAM, "allocation_pools": [{"start": "172.24.4.100", "end": "172.24.4.200"}]}})
    net = call(api, "POST", "/v2.0/networks", {"network": {"name": "private"}})["network"]
    sub = call(api, "POST", "/v2.0/subnets", {"subnet": {
        "network_id": net["id"], "cidr": "10.91.0.0/24", "ip_version": 4}})["subnet"]
    router = call(api, "POST", "/v2.0/routers", {"router": {
        "name": "r", "external_gateway_info": {"network_id": ext["id"]}}})["router"]
    call(api, "PUT", f"/v2.0/routers/{router['id']}/add_router_interface", {"subnet_id": sub["id"]})
    up.neutrino("instance", "create", "--network", "private", "vm")
    ns = f"qrouter-{router['id']}"

    def ping() -> bool:
        return up.host.run(["ip", "netns", "exec", "lab-vm", "ping", "-c", "1", "-W", "1", UPSTREAM]).returncode == 0

    assert wait("the instance to reach the upstream through the router", ping)
    before_nft = up.host.run(["ip", "netns", "exec", ns, "nft", "list", "ruleset"]).stdout
    assert "snat to 172.24.4." in before_nft, before_nft
    # A long ping through SNAT: its conntrack entry must live through the stop and the restart.
    pinger = up.host.popen(["ip", "netns", "exec", "lab-vm", "ping", "-i", "0.2", "-W", "1", UPSTREAM],
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)
        took = up.stop()
        assert took < 15, f"neutrino up took {took:.1f} s to stop"
        # Nothing of neutrino runs now: the router, its NAT and conntrack are still there and still work.
        assert ns in up.host.nested_namespaces()
        assert up.host.run(["ip", "netns", "exec", ns, "nft", "list", "ruleset"]).stdout == before_nft
        flows = up.host.run(["ip", "netns", "exec", ns, "conntrack", "-L", "-p", "icmp"]).stdout
        assert "src=10.91.0." in flows and UPSTREAM in flows, flows
        assert ping()
        starts = len(first_pass_changes(up.log, 0))
        up.start()
        first = wait("the new agent's first pass", lambda: first_pass_changes(up.log, starts), timeout=30)
        assert first[0] == "0", first
        time.sleep(1)
    finally:
        pinger.send_signal(signal.SIGINT)
        out = pinger.communicate(timeout=10)[0].decode()
    # Every echo of the long ping was answered, across the stop and the restart.
    summary = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    assert summary and int(summary[1]) >= 5 and int(summary[1]) - int(summary[2]) <= 1, out
    up.neutrino("instance", "delete", "vm")
    up.stop()
    up.neutrino("cleanup")
    assert ns not in up.host.nested_namespaces()
