#!/usr/bin/env python3
"""Self-healing figures: faults injected behind the agent's back in a throwaway host, and the time until
they are repaired (root needed). Each fault --times times; min / median / max:

1. kill -9 the network's dnsmasq      -> a new dnsmasq runs; -> an instance's DHCP renewal succeeds
2. ip link del the network's bridge   -> bridge back with all its ports; -> instance pings instance
3. ip link del the DHCP port's tap    -> veth back in the bridge and a new dnsmasq; -> DHCP renewal
4. ip link del an instance's tap      -> port DOWN in the API; after the tap is made again (as a
                                         hypervisor would): -> plugged; -> port ACTIVE
5. An idle agent: its passes (every agent.resync_seconds) and its CPU, with the one network, then with
   --networks more networks (each with DHCP and --per-network wired ports).

    .venv/bin/python bench/heal.py [--times 5] [--idle 20] [--networks 20] [--per-network 5]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.dhcp import agent_env, wired_networks  # noqa: E402
from neutrino.dataplane import netlink as nl  # noqa: E402
from neutrino.hosts import Host, Underlay  # noqa: E402
from neutrino.lab.instances import SCRIPT  # noqa: E402
from tests.api.conftest import start_server  # noqa: E402
from tests.integration.conftest import remove_run_dirs  # noqa: E402

NEUTRINO = str(Path(sys.executable).parent / "neutrino")
TICK = os.sysconf("SC_CLK_TCK")


def progress(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def poll(what: str, check: Callable[[], Any], since: float, timeout: float = 30.0) -> float:
    """Seconds from ``since`` until ``check()`` holds (polled every 5 ms)."""
    while not check():
        if time.monotonic() - since > timeout:
            raise TimeoutError(f"{what}: not repaired after {timeout:.0f} s")
        time.sleep(0.005)
    return time.monotonic() - since


def summary(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"{min(ms):6.0f} {statistics.median(ms):6.0f} {max(ms):6.0f}   (n={len(ms)})"


class Bench:
    def __init__(self, host: Host, state: Path, env: dict[str, str], api: httpx.Client) -> None:
        self.host, self.state, self.env, self.api = host, state, env, api
        self.agent: subprocess.Popen[bytes] | None = None
        self.times: dict[str, list[float]] = {}

    def start_agent(self) -> None:
        log = open(self.state / "agent.log", "ab")  # noqa: SIM115
        self.agent = self.host.popen([NEUTRINO, "agent"], env=self.env, stdout=log, stderr=log)

    def record(self, name: str, seconds: float) -> None:
        self.times.setdefault(name, []).append(seconds)

    def run(self, *argv: str) -> subprocess.CompletedProcess[str]:
        done = self.host.run(list(argv), env=self.env, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {done.stdout}{done.stderr}")
        return done

    def links(self) -> dict[str, nl.LinkState]:
        with nl.socket(self.host.namespace) as sock:
            return {link.name: link for link in nl.links(sock)}

    def enslaved(self, bridge: str, ports: set[str]) -> bool:
        links = self.links()
        br = links.get(bridge)
        return br is not None and all(p in links and links[p].master == br.index and links[p].up for p in ports)

    def dnsmasq_pid(self, network_id: str) -> int | None:
        try:
            pid = int((self.state / "agent" / "dhcp" / network_id / "pid").read_text())
            alive = b"dnsmasq" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if alive else None

    def ns(self, name: str, *argv: str) -> subprocess.CompletedProcess[str]:
        return self.host.run(["ip", "netns", "exec", f"lab-{name}", *argv], timeout=60)

    def pings(self, name: str, ip: str) -> bool:
        return self.ns(name, "ping", "-c", "1", "-W", "0.2", ip).returncode == 0

    def renews(self, name: str, ip: str) -> bool:
        """The instance drops its IPv4 address and runs one DHCP exchange; True when the address is back."""
        d = self.state / "agent" / "instances" / name
        pid_file = d / "dhclient.pid"
        if pid_file.exists():
            self.host.run(["kill", pid_file.read_text().strip()])
            pid_file.unlink()
        self.ns(name, "ip", "-4", "addr", "flush", "dev", "eth0")
        self.ns(name, "timeout", "4", "dhclient", "-1", "-4", "-cf", str(d / "dhclient.conf"), "-sf", str(SCRIPT),
                "-pf", str(pid_file), "-lf", str(d / "dhclient.leases"), "eth0")
        return f"{ip}/" in self.ns(name, "ip", "-4", "-o", "addr", "show", "dev", "eth0").stdout

    def status(self, port_id: str) -> str:
        return str(self.api.get(f"/v2.0/ports/{port_id}", params={"fields": "status"}).json()["port"]["status"])

    def cpu(self) -> float:
        assert self.agent is not None
        fields = Path(f"/proc/{self.agent.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def idle(self, seconds: float) -> tuple[list[float], float, int]:
        """Idle passes' own durations (ms), agent CPU seconds and passes over ``seconds`` of nothing."""
        log = self.state / "agent.log"
        offset, cpu = len(log.read_bytes()), self.cpu()
        time.sleep(seconds)
        used = self.cpu() - cpu
        text = log.read_bytes()[offset:].decode(errors="replace")
        pattern = r"pass \d+ at revision \d+: (\d+) changes in (\d+) ms \(resync\)"
        idle = [float(m.group(2)) for m in re.finditer(pattern, text) if m.group(1) == "0"]
        passes = len(re.findall(r"pass \d+ at revision", text))
        return idle, used, passes


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--times", type=int, default=5)
    p.add_argument("--idle", type=float, default=20.0)
    p.add_argument("--networks", type=int, default=20)
    p.add_argument("--per-network", type=int, default=5)
    p.add_argument("--keep", action="store_true", help="keep the state directory (agent log) for a look")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="neutrino-bench-heal-"))
    server = start_server(tmp, f"sqlite:///{tmp / 'n.db'}", "sqlite", {"NEUTRINO_AGENT__AGENT_DOWN_SECONDS": "60"})
    underlay = Underlay.create()
    bench: Bench | None = None
    idle_rows: list[tuple[str, str]] = []
    try:
        host = underlay.add_host("h1")
        state = tmp / "h1"
        state.mkdir()
        env = agent_env(tmp, host, state, "DEBUG")
        token = httpx.post(f"{server.url}/identity/v3/auth/tokens", json={"auth": {"identity": {
            "methods": ["password"], "password": {"user": {"name": "admin", "domain": {"name": "Default"},
                                                           "password": "secret"}}},
            "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}}).headers["X-Subject-Token"]
        api = httpx.Client(base_url=server.url, headers={"X-Auth-Token": token}, timeout=60)
        bench = Bench(host, state, env, api)
        bench.start_agent()
        while len(api.get("/v2.0/agents").json()["agents"]) < 2:
            time.sleep(0.05)
        net = api.post("/v2.0/networks", json={"network": {"name": "heal"}}).json()["network"]
        api.post("/v2.0/subnets", json={"subnet": {"network_id": net["id"], "cidr": "10.90.0.0/24", "ip_version": 4}})
        for name in ("a", "b"):
            bench.run(NEUTRINO, "instance", "create", "--network", "heal", name)
        ports = {name: api.get("/v2.0/ports", params={"name": name}).json()["ports"][0] for name in ("a", "b")}
        ip_a, ip_b = (ports[n]["fixed_ips"][0]["ip_address"] for n in ("a", "b"))
        dhcp_port = api.get("/v2.0/ports", params={"network_id": net["id"], "device_owner": "network:dhcp"}).json()[
            "ports"][0]
        bridge = f"brq{net['id'][:11]}"
        dhcp_tap = f"tap{dhcp_port['id'][:11]}"
        taps = {f"tap{p['id'][:11]}" for p in ports.values()} | {dhcp_tap}
        wired = taps | {name for name in bench.links() if name.startswith("vxlan-")}
        assert bench.pings("a", ip_b)

        tap_b = f"tap{ports['b']['id'][:11]}"

        def replaced(old: int | None, tap: str | None = None) -> Callable[[], bool]:
            """A dnsmasq other than ``old`` runs (and ``tap`` is plugged again)."""
            return lambda: bench.dnsmasq_pid(net["id"]) not in (None, old) and (
                tap is None or bench.enslaved(bridge, {tap}))

        def settle() -> None:
            """Healthy again, and the agent's confirming pass is over."""
            poll("healthy", lambda: bench.enslaved(bridge, wired) and bench.pings("a", ip_b), time.monotonic())
            time.sleep(0.5)

        progress(f"each fault {args.times} times")
        for _ in range(args.times):
            settle()
            old = bench.dnsmasq_pid(net["id"])
            assert old is not None
            fault = time.monotonic()
            os.kill(old, signal.SIGKILL)
            bench.record("kill -9 dnsmasq -> new dnsmasq running",
                         poll("dnsmasq", replaced(old), fault))
            poll("DHCP", lambda: bench.renews("a", ip_a), fault)
            bench.record("kill -9 dnsmasq -> instance DHCP renewal done", time.monotonic() - fault)

            settle()
            fault = time.monotonic()  # before the command: the figures include its own run time
            bench.run("ip", "link", "del", bridge)
            bench.record("delete bridge -> bridge back with all ports", poll("bridge", lambda: bench.enslaved(
                bridge, wired), fault))
            bench.record("delete bridge -> instance pings instance", poll("ping", lambda: bench.pings("a", ip_b),
                                                                          fault))

            settle()
            old = bench.dnsmasq_pid(net["id"])
            fault = time.monotonic()
            bench.run("ip", "link", "del", dhcp_tap)
            bench.record("delete DHCP tap -> veth plugged, new dnsmasq", poll("dhcp tap", replaced(old, dhcp_tap),
                                                                             fault))
            poll("DHCP", lambda: bench.renews("a", ip_a), fault)
            bench.record("delete DHCP tap -> instance DHCP renewal done", time.monotonic() - fault)

            settle()
            fault = time.monotonic()
            bench.run("ip", "link", "del", tap_b)
            bench.record("delete instance tap -> port DOWN (API)", poll("DOWN", lambda: bench.status(
                ports["b"]["id"]) == "DOWN", fault))
            back = time.monotonic()
            bench.run("ip", "link", "add", tap_b, "type", "veth", "peer", "name", "eth0", "netns", "lab-b")
            bench.run("ip", "-n", "lab-b", "link", "set", "eth0", "address", ports["b"]["mac_address"], "up")
            bench.run("ip", "link", "set", tap_b, "up")
            bench.record("  tap made again (3 ip commands) -> plugged", poll("plugged", lambda: bench.enslaved(
                bridge, {tap_b}), back))
            bench.record("  tap made again (3 ip commands) -> port ACTIVE", poll("ACTIVE", lambda: bench.status(
                ports["b"]["id"]) == "ACTIVE", back))
            poll("b's address", lambda: bench.renews("b", ip_b), back)

        for _ in range(args.times):  # what the figures above include for running the fault's command
            start = time.monotonic()
            bench.run("ip", "link", "show", "lo")
            bench.record("(one ip command inside the host, included above)", time.monotonic() - start)
        settle()
        progress(f"idle agent, {args.idle:.0f} s")
        small = bench.idle(args.idle)
        progress(f"{args.networks} more networks x {args.per_network} wired ports, each with DHCP")
        total = wired_networks(api, host, tmp, args.networks, args.per_network, "x")
        poll("extra ports ACTIVE", lambda: len(api.get("/v2.0/ports", params={
            "status": "ACTIVE", "device_owner": "compute:lab", "fields": "id"}).json()["ports"]) >= total + 2,
            time.monotonic(), 120)
        time.sleep(3)
        progress(f"idle agent, {args.idle:.0f} s")
        large = bench.idle(args.idle)
        for label, (durations, used, passes) in (("1 network, 3 ports", small),
                                                 (f"{args.networks + 1} networks, {total + 3} ports", large)):
            idle_rows += [
                (f"idle pass ({label}): own time min / median / max",
                 f"{min(durations):.0f} / {statistics.median(durations):.0f} / {max(durations):.0f} ms "
                 f"({len(durations)} passes in {args.idle:.0f} s)" if durations else "no idle pass seen"),
                (f"idle agent ({label}): CPU", f"{used / args.idle * 100:.1f} % of a core, "
                                               f"{used / max(passes, 1) * 1000:.1f} ms per pass")]
    finally:
        if bench is not None and bench.agent is not None:
            bench.agent.terminate()
            try:
                bench.agent.wait(30)
            except subprocess.TimeoutExpired:
                bench.agent.kill()
                bench.agent.wait()
        underlay.destroy()
        remove_run_dirs(tmp)
        server.stop()
        if args.keep:
            progress(f"kept {tmp}")
        else:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)
    assert bench is not None
    width = max(len(k) for k in [*bench.times, *(k for k, _ in idle_rows)])
    print("\nneutrino self-healing bench (real kernel, one throwaway host; agent.resync_seconds = 2)")
    print(f"  {'fault -> repaired':<{width}}  {'min':>6} {'median':>6} {'max':>6}  ms")
    for k, v in bench.times.items():
        print(f"  {k:<{width}}  {summary(v)}")
    for k, s in idle_rows:
        print(f"  {k:<{width}}  {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
