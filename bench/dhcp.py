#!/usr/bin/env python3
"""DHCP and agent figures, on the real kernel in a throwaway host (root needed).

1. POST /v2.0/ports (bound to the host) -> dnsmasq has re-read a hosts file containing that MAC
   (its log shows the reload): p50/p99 over --ports ports.
2. `neutrino instance create` -> the instance has its address from DHCP: CLI wall time (includes the
   Python start of the command) and the time from port creation to the bound address.
3. A restarted agent verifying --networks networks x --per-network ports (all wired: real taps in
   bridges, one dnsmasq per network) with nothing to change: time to its first complete pass.

    .venv/bin/python bench/dhcp.py [--ports 200] [--networks 100] [--per-network 10]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from neutrino.hosts import Host, Underlay  # noqa: E402
from tests.api.conftest import start_server  # noqa: E402
from tests.integration.conftest import remove_run_dirs  # noqa: E402

NEUTRINO = str(Path(sys.executable).parent / "neutrino")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def progress(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def agent_env(tmp: Path, host: Host, state: Path, log_level: str) -> dict[str, str]:
    """The environment of a stand-alone agent for ``host`` (named h1) talking to the bench's server."""
    return dict(os.environ, NEUTRINO_STATE_DIR=str(state), NEUTRINO_AGENT__HOST="h1",
                NEUTRINO_AGENT__SERVER_URL=f"unix:{tmp / 'neutrino.sock'}", NEUTRINO_AGENT__PASSWORD="secret",
                NEUTRINO_AGENT__LOCAL_IP=str(host.address.ip), NEUTRINO_LOG__LEVEL=log_level,
                NEUTRINO_API__SOCKET="")


def wired_networks(api: httpx.Client, host: Host, tmp: Path, networks: int, per_network: int, prefix: str) -> int:
    """``networks`` networks with a DHCP subnet and ``per_network`` ports bound to h1 each, every port's
    tap made at once with one ``ip -batch`` inside ``host`` (as a hypervisor would); returns the ports."""
    script = []
    for n in range(networks):
        nid = api.post("/v2.0/networks", json={"network": {"name": f"{prefix}{n}"}}).json()["network"]["id"]
        api.post("/v2.0/subnets", json={"subnet": {"network_id": nid, "ip_version": 4,
                                                   "cidr": f"10.{100 + n // 200}.{n % 200}.0/24"}})
        ports = api.post("/v2.0/ports", json={"ports": [
            {"network_id": nid, "device_owner": "compute:lab", "binding:host_id": "h1"}
            for _ in range(per_network)]}).json()["ports"]
        script += [f"link add tap{p['id'][:11]} type veth peer name v{p['id'][:11]}" for p in ports]
    batch = tmp / "links.batch"
    batch.write_text("\n".join(script) + "\n")
    host.run(["ip", "-batch", str(batch)])
    return networks * per_network


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ports", type=int, default=200)
    p.add_argument("--instances", type=int, default=10)
    p.add_argument("--networks", type=int, default=100)
    p.add_argument("--per-network", type=int, default=10)
    p.add_argument("--keep", action="store_true", help="keep the state directory (agent log) for a look")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="neutrino-bench-dhcp-"))
    server = start_server(tmp, f"sqlite:///{tmp / 'n.db'}", "sqlite", {"NEUTRINO_AGENT__AGENT_DOWN_SECONDS": "60"})
    underlay = Underlay.create()
    agent = None
    rows: list[tuple[str, str]] = []
    try:
        host = underlay.add_host("h1")
        state = tmp / "h1"
        state.mkdir()
        env = agent_env(tmp, host, state, "INFO")

        def start_agent() -> subprocess.Popen[bytes]:
            log = open(state / "agent.log", "ab")  # noqa: SIM115
            return host.popen([NEUTRINO, "agent"], env=env, stdout=log, stderr=log)

        agent = start_agent()
        token = httpx.post(f"{server.url}/identity/v3/auth/tokens", json={"auth": {"identity": {
            "methods": ["password"], "password": {"user": {"name": "admin", "domain": {"name": "Default"},
                                                           "password": "secret"}}},
            "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}}).headers["X-Subject-Token"]
        api = httpx.Client(base_url=server.url, headers={"X-Auth-Token": token}, timeout=60)
        while len(api.get("/v2.0/agents").json()["agents"]) < 2:
            time.sleep(0.05)

        # 1. POST port -> dnsmasq reloaded with its MAC.
        net = api.post("/v2.0/networks", json={"network": {"name": "bench"}}).json()["network"]
        api.post("/v2.0/subnets", json={"subnet": {"network_id": net["id"], "cidr": "10.200.0.0/16",
                                                   "ip_version": 4}})
        ddir = state / "agent" / "dhcp" / net["id"]
        while not (ddir / "pid").exists():
            time.sleep(0.01)
        progress(f"{args.ports} ports: POST -> dnsmasq reloaded with the MAC")
        latencies = []
        for i in range(args.ports):
            reads = (ddir / "dnsmasq.log").read_text().count("read ")
            start = time.perf_counter()
            port = api.post("/v2.0/ports", json={"port": {"network_id": net["id"], "name": f"b{i}",
                                                          "binding:host_id": "h1"}}).json()["port"]
            while True:
                if port["mac_address"] in (ddir / "hosts").read_text() and \
                        (ddir / "dnsmasq.log").read_text().count("read ") > reads:
                    break
                time.sleep(0.002)
            latencies.append((time.perf_counter() - start) * 1000)
        rows += [("POST port -> dnsmasq serving its MAC, p50", f"{pct(latencies, 0.5):.0f} ms"),
                 ("POST port -> dnsmasq serving its MAC, p99", f"{pct(latencies, 0.99):.0f} ms")]

        # 2. instance create -> address bound.
        progress(f"{args.instances} instances")
        walls = []
        for i in range(args.instances):
            start = time.perf_counter()
            done = host.run([NEUTRINO, "instance", "create", "--network", "bench", f"i{i}"], env=env)
            assert done.returncode == 0, done.stderr
            walls.append((time.perf_counter() - start) * 1000)
        inner = []
        for i in range(args.instances):
            created = (state / "agent" / "instances" / f"i{i}" / "instance.json").stat().st_mtime
            bound = (state / "agent" / "instances" / f"i{i}" / "dhclient.leases").stat().st_mtime
            inner.append((bound - created) * 1000)
        rows += [("instance create (CLI wall time), median", f"{statistics.median(walls):.0f} ms"),
                 ("instance wired -> DHCP address bound, median", f"{statistics.median(inner):.0f} ms")]
        for i in range(args.instances):
            host.run([NEUTRINO, "instance", "delete", f"i{i}"], env=env)

        # 3. restart verification of N ports on M networks, all wired.
        progress(f"{args.networks} networks x {args.per_network} ports with taps, then an agent restart")
        total = wired_networks(api, host, tmp, args.networks, args.per_network, "r")
        while api.get("/v2.0/ports", params={"status": "ACTIVE", "device_owner": "compute:lab",
                                             "fields": "id"}).json()["ports"].__len__() < total:
            time.sleep(0.2)
        stop_started = time.perf_counter()
        agent.terminate()
        agent.wait(60)
        rows.append(("agent stop (SIGTERM -> exited)", f"{time.perf_counter() - stop_started:.2f} s"))
        pids_before = sorted(int(f.read_text()) for f in (state / "agent" / "dhcp").glob("*/pid"))
        log_len = len((state / "agent.log").read_text())
        start = time.perf_counter()
        agent = start_agent()
        while True:
            text = (state / "agent.log").read_text()[log_len:]
            found = re.search(r"pass 1 at revision \d+: (\d+) changes in (\d+) ms", text)
            if found:
                break
            time.sleep(0.01)
        elapsed = time.perf_counter() - start
        pids_after = sorted(int(f.read_text()) for f in (state / "agent" / "dhcp").glob("*/pid"))
        rows += [(f"restart: verify {total} ports on {args.networks} networks (process start -> pass done)",
                  f"{elapsed:.2f} s"),
                 ("  of which the pass itself", f"{found.group(2)} ms"),
                 ("  changes made / dnsmasq restarted", f"{found.group(1)} / "
                                                        f"{len(set(pids_before) - set(pids_after))}")]
    finally:
        if agent is not None:
            agent.terminate()
            try:
                agent.wait(30)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        underlay.destroy()
        remove_run_dirs(tmp)
        server.stop()
        if getattr(args, "keep", False):
            progress(f"kept {tmp} (agent log in h1/agent.log)")
        else:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)
    width = max(len(k) for k, _ in rows)
    print("\nneutrino DHCP / agent bench (real kernel, one throwaway host)")
    for k, v in rows:
        print(f"  {k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
