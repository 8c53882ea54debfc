#!/usr/bin/env python3
"""Routing figures, on the real kernel in throwaway hosts (root needed). Two labs, one after the other,
each its own server, underlay and agent (physnet ``public`` on the host's eth1, the underlay's ``upstream``
namespace at 172.24.4.1 behind it):

1. Throughput (lab 1): single-stream TCP with iperf3, --reps runs of --seconds each, interleaved, median:
   two namespaces on a plain Linux bridge (the reference, same MTU as the instances), lab instance ->
   lab instance on the same network (the bridge and the ports' filtering, no router), -> lab instance on
   another subnet through the router, -> the upstream through SNAT. Instances are filtered by security
   groups as by default (the host then tracks connections of everything it bridges); --no-port-security
   measures them without.
2. Floating IPs (lab 1): POST /v2.0/floatingips -> the first ping answer the upstream gets from the
   floating IP (it pings every 5 ms from just before the POST), p50/p99 over --fips floating IPs spread
   over --fip-instances instances (an instance's previous floating IP is deleted first, untimed).
3. Scale (lab 2): --routers networks, each with a subnet (no DHCP) and a router with one interface on it
   and a gateway on the external network (--gateways of them; default all). The API's create rates
   (1 client) while the host's agent is stopped; then the agent starts on the empty host: time until
   every router port is ACTIVE (namespaces and NAT tables checked after); its idle passes; a restart:
   time to its first pass and the changes it made; the agent's RSS.

    .venv/bin/python bench/l3.py [--quick] [--reps 5] [--seconds 5] [--fips 50] [--routers 1000]
                                 [--only throughput,fip,scale]
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_seconds, ok, pct, progress, rss_mb, wait_for  # noqa: E402
from bench.dhcp import agent_env  # noqa: E402
from neutrino.hosts import PUBLIC_INTERFACE, PUBLIC_PHYSNET, PUBLIC_V4, Host, Underlay  # noqa: E402
from tests.api.conftest import Server, start_server  # noqa: E402
from tests.integration.conftest import _our_processes as our_processes  # noqa: E402
from tests.integration.conftest import admin_token, remove_run_dirs  # noqa: E402

NEUTRINO = str(Path(sys.executable).parent / "neutrino")
PY = sys.executable
UPSTREAM = str(PUBLIC_V4.ip)
# Lab 2's external subnet: the upstream's /24 and around it, for up to ~4,000 gateways (the upstream gets an
# on-link route for it).
SCALE_EXTERNAL = ipaddress.IPv4Network("172.24.0.0/20")

# Runs in the upstream: for each address read from stdin, pings it every 5 ms (ICMP echo, its own id) and
# prints "<address> <CLOCK_MONOTONIC of the first answer>" (or "<address> timeout" after 10 s). The clock is
# the machine's, the same in every namespace: the bench compares it with its own.
PROBER = r"""
import os, select, socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
ident = os.getpid() & 0xFFFF
def checksum(b):
    b += b"\0" * (len(b) % 2)
    t = sum(struct.unpack(f"!{len(b) // 2}H", b))
    t = (t >> 16) + (t & 0xFFFF)
    return ~(t + (t >> 16)) & 0xFFFF
for line in sys.stdin:
    addr = line.strip()
    deadline, seq, nxt = time.monotonic() + 10, 0, 0.0
    answer = "timeout"
    while time.monotonic() < deadline:
        now = time.monotonic()
        if now >= nxt:
            seq = (seq + 1) & 0xFFFF
            head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            s.sendto(struct.pack("!BBHHH", 8, 0, checksum(head), ident, seq), (addr, 0))
            nxt = now + 0.005
        if select.select([s], [], [], max(0.0, nxt - time.monotonic()))[0]:
            data, peer = s.recvfrom(2048)
            at = time.monotonic()
            ihl = (data[0] & 15) * 4
            if peer[0] == addr and data[ihl] == 0 and struct.unpack("!H", data[ihl + 4:ihl + 6])[0] == ident:
                answer = f"{at:.6f}"
                break
    print(addr, answer, flush=True)
"""












@dataclass
class Lab:
    """A server, an underlay with one host and that host's agent (started by ``start_agent``)."""
    tmp: Path
    server: Server
    underlay: Underlay
    host: Host
    env: dict[str, str]
    api: httpx.Client
    agent: subprocess.Popen[bytes] | None = None
    procs: list[subprocess.Popen[Any]] = field(default_factory=list)  # servers of ours to kill at the end
    namespaces: list[str] = field(default_factory=list)  # plain namespaces of ours (the reference bridge)

    @property
    def log(self) -> Path:
        return self.tmp / "h1" / "agent.log"

    def start_agent(self) -> None:
        out = open(self.log, "ab")  # noqa: SIM115
        self.agent = self.host.popen([NEUTRINO, "agent"], env=self.env, stdout=out, stderr=out)

    def stop_agent(self) -> float:
        """SIGTERM; seconds until it exited."""
        if self.agent is None:
            return 0.0
        start = time.perf_counter()
        self.agent.terminate()
        try:
            self.agent.wait(60)
        except subprocess.TimeoutExpired:
            self.agent.kill()
            self.agent.wait()
        self.agent = None
        return time.perf_counter() - start

    def first_pass(self, offset: int, timeout: float) -> tuple[int, int]:
        """(changes, own ms) of the first pass logged after byte ``offset`` of the agent's log."""
        pattern = re.compile(r"pass 1 at revision \d+: (\d+) changes in (\d+) ms")
        found = wait_for("the agent's first pass", lambda: pattern.search(
            self.log.read_bytes()[offset:].decode(errors="replace")), timeout, 0.01)
        return int(found.group(1)), int(found.group(2))

    def in_host(self, ns: str, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.host.run(["ip", "netns", "exec", ns, *argv], timeout=timeout)

    def external(self, cidr: ipaddress.IPv4Network) -> tuple[str, str]:
        """The external flat network on physnet public, the stock way (admin); (network id, subnet id)."""
        net = ok(self.api.post("/v2.0/networks", json={"network": {
            "name": "public", "router:external": True, "provider:network_type": "flat",
            "provider:physical_network": PUBLIC_PHYSNET}}))["network"]
        sub = ok(self.api.post("/v2.0/subnets", json={"subnet": {
            "network_id": net["id"], "ip_version": 4, "cidr": str(cidr), "gateway_ip": UPSTREAM,
            "enable_dhcp": False}}))["subnet"]
        return net["id"], sub["id"]

    def open_security_groups(self) -> bool:
        """When the API has security groups: the admin project's default group lets ICMP and TCP in (the
        upstream pings floating IPs, iperf3 connects to instances). False when there are none."""
        resp = self.api.get("/v2.0/security-groups", params={"name": "default"})
        if resp.status_code != 200:
            return False
        groups = resp.json()["security_groups"]
        for group in groups:
            for proto in ("icmp", "tcp"):
                r = self.api.post("/v2.0/security-group-rules", json={"security_group_rule": {
                    "security_group_id": group["id"], "direction": "ingress", "ethertype": "IPv4",
                    "protocol": proto}})
                if r.status_code not in (201, 409):
                    raise RuntimeError(r.text)
        return bool(groups)


def kill_left(tmp: Path) -> None:
    """SIGKILL whatever still names the lab's directory (daemons have it in their environment). After a
    Ctrl-C (SIGINT to the whole process group: the host's holder dies at once) the host's nested namespaces
    are out of view when the lab is undone, and the instances' dhclient and the networks' dnsmasq would
    stay."""
    for found in our_processes([tmp]):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(found.split(":")[0]), signal.SIGKILL)


@contextlib.contextmanager
def open_lab(name: str) -> Iterator[Lab]:
    tmp = Path(tempfile.mkdtemp(prefix=f"neutrino-bench-l3-{name}-"))
    server_env = {"NEUTRINO_AGENT__AGENT_DOWN_SECONDS": "3600", "NEUTRINO_QUOTAS__ROUTER": "-1",
                  "NEUTRINO_QUOTAS__FLOATINGIP": "-1", "NEUTRINO_QUOTAS__SECURITY_GROUP_RULE": "-1"}
    with contextlib.ExitStack() as undo:
        undo.callback(subprocess.run, ["rm", "-rf", str(tmp)], check=False)
        server = start_server(tmp, f"sqlite:///{tmp / 'n.db'}", "sqlite", server_env)
        undo.callback(server.stop)
        undo.callback(remove_run_dirs, tmp)  # after the host is gone, with its daemons
        undo.callback(kill_left, tmp)
        underlay = Underlay.create()
        undo.callback(underlay.destroy)
        host = underlay.add_host("h1")
        state = tmp / "h1"
        state.mkdir()
        env = dict(agent_env(tmp, host, state, "INFO"),
                   NEUTRINO_AGENT__PHYSICAL_INTERFACE_MAPPINGS=f"{PUBLIC_PHYSNET}:{PUBLIC_INTERFACE}")
        api = httpx.Client(base_url=server.url, headers={"X-Auth-Token": admin_token(server)}, timeout=120)
        undo.callback(api.close)
        lab = Lab(tmp, server, underlay, host, env, api)
        undo.callback(lab.stop_agent)

        def kill_ours() -> None:
            for proc in lab.procs:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            for ns in lab.namespaces:
                pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)

        undo.callback(kill_ours)
        yield lab


# -- 1. throughput ------------------------------------------------------------------------------------------
def iperf(argv_prefix: list[str], target: str, seconds: int) -> float:
    """Gbit/s received by the server, one TCP stream of ``seconds``."""
    done = subprocess.run([*argv_prefix, "iperf3", "-c", target, "-t", str(seconds), "-J"], capture_output=True,
                          text=True, timeout=seconds + 30)
    data = json.loads(done.stdout or "{}")
    if done.returncode != 0 or "error" in data:
        raise RuntimeError(f"iperf3 to {target}: {data.get('error') or done.stderr}")
    return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9


def serve_iperf(lab: Lab, argv_prefix: list[str]) -> None:
    lab.procs.append(subprocess.Popen([*argv_prefix, "iperf3", "-s"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, start_new_session=True))


def plain_bridge(lab: Lab, mtu: int) -> tuple[list[str], str]:
    """Two namespaces on a plain bridge (in a third), MTU ``mtu``; (argv prefix of the first, address of the
    second)."""
    pre = lab.underlay.prefix
    br, a, b = f"{pre}-pbr", f"{pre}-pa", f"{pre}-pb"
    for ns in (br, a, b):
        subprocess.run(["ip", "netns", "add", ns], check=True)
        lab.namespaces.append(ns)
    cmds = [["ip", "-n", br, "link", "add", "br0", "type", "bridge"], ["ip", "-n", br, "link", "set", "br0", "up"]]
    for ns, ip in ((a, "10.250.0.1/24"), (b, "10.250.0.2/24")):
        cmds += [["ip", "-n", br, "link", "add", f"v{ns[-1]}", "mtu", str(mtu), "type", "veth", "peer", "name", "eth0",
                  "mtu", str(mtu), "netns", ns],
                 ["ip", "-n", br, "link", "set", f"v{ns[-1]}", "master", "br0", "up"],
                 ["ip", "-n", ns, "addr", "add", ip, "dev", "eth0"], ["ip", "-n", ns, "link", "set", "eth0", "up"],
                 ["ip", "-n", ns, "link", "set", "lo", "up"]]
    for cmd in cmds:
        subprocess.run(cmd, check=True, capture_output=True)
    serve_iperf(lab, ["ip", "netns", "exec", b])
    return ["ip", "netns", "exec", a], "10.250.0.2"


@dataclass
class Routed:
    ext: str
    router: dict[str, Any]
    nets: dict[str, dict[str, Any]]        # "a"/"b" -> network
    instances: dict[str, str] = field(default_factory=dict)  # instance name -> its address


def routed_lab(lab: Lab) -> Routed:
    ext, _ = lab.external(PUBLIC_V4.network)
    nets = {}
    for key, cidr in (("a", "10.91.0.0/24"), ("b", "10.92.0.0/24")):
        nets[key] = ok(lab.api.post("/v2.0/networks", json={"network": {"name": f"priv{key}"}}))["network"]
        ok(lab.api.post("/v2.0/subnets", json={"subnet": {"network_id": nets[key]["id"], "ip_version": 4,
                                                         "cidr": cidr}}))
    router = ok(lab.api.post("/v2.0/routers", json={"router": {"name": "r", "external_gateway_info": {
        "network_id": ext}}}))["router"]
    for net in nets.values():
        sub = net_subnet(lab, net["id"])
        ok(lab.api.put(f"/v2.0/routers/{router['id']}/add_router_interface", json={"subnet_id": sub}))
    return Routed(ext, router, nets)


def net_subnet(lab: Lab, network_id: str) -> str:
    return str(ok(lab.api.get("/v2.0/subnets", params={"network_id": network_id}))["subnets"][0]["id"])


def instance(lab: Lab, r: Routed, name: str, net: str, port_security: bool = True) -> str:
    done = lab.host.run([NEUTRINO, "instance", "create", "--network", r.nets[net]["id"], name,
                         *([] if port_security else ["--no-port-security"])], env=lab.env, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"instance create {name}: {done.stdout}{done.stderr}")
    port = ok(lab.api.get("/v2.0/ports", params={"name": name}))["ports"][0]
    r.instances[name] = port["fixed_ips"][0]["ip_address"]
    return r.instances[name]


def throughput(lab: Lab, r: Routed, reps: int, seconds: int) -> list[tuple[str, str]]:
    mtu = int(r.nets["a"]["mtu"])
    ib = r.instances["ib"]
    in_ia = [*lab.host.enter(), "ip", "netns", "exec", "lab-ia"]
    paths = {"plain bridge (reference)": plain_bridge(lab, mtu),
             "instance -> instance, same network (no router)": (in_ia, r.instances["ia2"]),
             "instance -> instance, routed": (in_ia, ib),
             "instance -> upstream, SNAT": (in_ia, UPSTREAM)}
    for name in ("ia2", "ib"):
        serve_iperf(lab, [*lab.host.enter(), "ip", "netns", "exec", f"lab-{name}"])
    serve_iperf(lab, ["ip", "netns", "exec", lab.underlay.upstream])
    for name, (prefix, target) in paths.items():  # servers listening, paths open
        def reached(prefix: list[str] = prefix, target: str = target) -> bool:
            return subprocess.run([*prefix, "iperf3", "-c", target, "-n", "1K"], capture_output=True,
                                  timeout=20).returncode == 0
        wait_for(f"iperf3 server for {name}", reached, 20, 0.2)
    results: dict[str, list[float]] = {name: [] for name in paths}
    for rep in range(reps):
        for name, (prefix, target) in paths.items():
            results[name].append(iperf(prefix, target, seconds))
        progress(f"run {rep + 1}/{reps}: " + ", ".join(f"{v[-1]:.2f}" for v in results.values()) + " Gbit/s")
    plain = results["plain bridge (reference)"]
    rows = []
    for name, values in results.items():
        med = statistics.median(values)
        spread = f"{min(values):.2f}-{max(values):.2f}"
        # Each run's ratio to the plain bridge measured just before it: the machine's load drifts over a run.
        ratio = statistics.median(v / p for v, p in zip(values, plain, strict=True))
        rows.append((f"TCP 1 stream, {name} (MTU {mtu}), median of {reps} x {seconds:g} s",
                     f"{med:.2f} Gbit/s  ({spread}){'' if name.startswith('plain') else f'  = {ratio:.0%}'}"))
    rows.append(("  (% = median of each run's ratio to the plain bridge's run just before it)", ""))
    return rows


# -- 2. floating IP POST -> reachable from the upstream ----------------------------------------------------
def floating_ips(lab: Lab, r: Routed, count: int, spread: int) -> list[tuple[str, str]]:
    prober = subprocess.Popen(["ip", "netns", "exec", lab.underlay.upstream, PY, "-c", PROBER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    lab.procs.append(prober)
    assert prober.stdin is not None and prober.stdout is not None
    names = [n for n in r.instances if n.startswith("f")][:spread]
    ports = {n: ok(lab.api.get("/v2.0/ports", params={"name": n}))["ports"][0]["id"] for n in names}
    pool = iter(str(ip) for ip in PUBLIC_V4.network.hosts() if int(ip) & 0xFF >= 20)
    held: dict[str, str] = {}
    reach, posts = [], []
    for i in range(count):
        name = names[i % len(names)]
        if name in held:
            ok(lab.api.delete(f"/v2.0/floatingips/{held.pop(name)}"))
        address = next(pool)  # never used before: the upstream has no neighbour entry for it
        prober.stdin.write(address + "\n")
        prober.stdin.flush()
        start = time.monotonic()
        fip = ok(lab.api.post("/v2.0/floatingips", json={"floatingip": {
            "floating_network_id": r.ext, "floating_ip_address": address, "port_id": ports[name]}}))["floatingip"]
        posts.append(time.monotonic() - start)
        held[name] = fip["id"]
        _, answer = prober.stdout.readline().split()
        if answer == "timeout":
            raise RuntimeError(f"floating IP {address} of {name}: no answer from it within 10 s")
        reach.append(float(answer) - start)
    reach_ms, post_ms = [v * 1000 for v in reach], [v * 1000 for v in posts]
    return [(f"floating IP POST -> first answer to the upstream's ping, p50 ({count} FIPs)",
             f"{pct(reach_ms, 0.5):.0f} ms"),
            ("  same, p99 / max", f"{pct(reach_ms, 0.99):.0f} / {max(reach_ms):.0f} ms"),
            ("  of which the POST itself, p50", f"{pct(post_ms, 0.5):.0f} ms")]


def lab_one(args: argparse.Namespace) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    with open_lab("one") as lab:
        r = routed_lab(lab)
        lab.start_agent()
        wait_for("the agents to register", lambda: len(ok(lab.api.get("/v2.0/agents"))["agents"]) >= 3, 30)
        wanted = ["ia", "ia2", "ib"] if "throughput" in args.only else []
        if "fip" in args.only:
            wanted += [f"f{i}" for i in range(args.fip_instances)]
        progress(f"{len(wanted)} lab instances")
        for i, name in enumerate(wanted):
            instance(lab, r, name, "b" if name == "ib" or (name.startswith("f") and i % 2) else "a",
                     not args.no_port_security)
        sgs = lab.open_security_groups()  # the instances' project has its default group now
        wait_for("the router's ports ACTIVE", lambda: all(p["status"] == "ACTIVE" for p in ok(lab.api.get(
            "/v2.0/ports", params={"device_id": r.router["id"]}))["ports"]), 30)
        if "throughput" in args.only:
            progress(f"iperf3: {args.reps} x {args.seconds:g} s on each of 3 paths")
            rows += throughput(lab, r, args.reps, args.seconds)
        if "fip" in args.only:
            progress(f"{args.fips} floating IPs")
            rows += floating_ips(lab, r, args.fips, args.fip_instances)
        filtered = "no (--no-port-security)" if args.no_port_security else \
            "yes (default group, opened to ICMP and TCP)" if sgs else "no (no security groups in the API)"
        rows.append(("instance ports filtered by security groups", filtered))
    return rows


# -- 3. scale ---------------------------------------------------------------------------------------------
def rate(n: int, make: Callable[[int], httpx.Response]) -> tuple[float, list[Any]]:
    """Requests per second for ``n`` sequential requests (1 client), and their bodies."""
    out = []
    start = time.perf_counter()
    for i in range(n):
        out.append(ok(make(i)))
    return n / (time.perf_counter() - start), out


def nft_tables(lab: Lab) -> dict[str, int]:
    """Namespace -> number of neutrino tables in it, as ``nft`` lists them (``ip -all netns exec``)."""
    done = lab.host.run(["ip", "-all", "netns", "exec", "nft", "list", "tables"], timeout=600)
    out: dict[str, int] = {}
    ns = ""
    for line in done.stdout.splitlines():
        if line.startswith("netns: "):
            ns = line.split()[1]
            out.setdefault(ns, 0)
        elif line.startswith("table ") and line.split()[-1].startswith("neutrino-"):
            out[ns] = out.get(ns, 0) + 1
    return out


@contextlib.contextmanager
def profiled(args: argparse.Namespace, pid: int, name: str) -> Iterator[None]:
    """With --py-spy: the agent sampled by py-spy while the block runs (collapsed stacks in the temp dir,
    idle threads included: wall-clock time)."""
    if not args.py_spy:
        yield
        return
    out = Path(tempfile.gettempdir()) / f"neutrino-l3-{name}.txt"
    spy = subprocess.Popen([args.py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "50", "--idle",
                            "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
        progress(f"py-spy: {out}")


def lab_scale(args: argparse.Namespace) -> list[tuple[str, str]]:
    n, gateways, r_n = args.routers, min(args.gateways, args.routers), args.rate_count
    rows: list[tuple[str, str]] = []
    with open_lab("scale") as lab:
        ext, _ = lab.external(SCALE_EXTERNAL)
        lab.underlay.upstream_run(["ip", "route", "add", str(SCALE_EXTERNAL), "dev", "eth0"], check=True)
        lab.start_agent()  # registers the host's L3 agent (routers are scheduled to it), then stops
        wait_for("the agents to register", lambda: len(ok(lab.api.get("/v2.0/agents"))["agents"]) >= 3, 30)
        lab.stop_agent()
        api = lab.api

        progress(f"API rates (1 client, the host's agent stopped): {r_n} routers, {r_n} floating IPs")
        per_s, made = rate(r_n, lambda i: api.post("/v2.0/routers", json={"router": {"name": f"x{i}"}}))
        rows.append(("router create (no gateway), 1 client", f"{per_s:.0f} /s"))
        per_s, _ = rate(r_n, lambda i: api.delete(f"/v2.0/routers/{made[i]['router']['id']}"))
        rows.append(("router delete, 1 client", f"{per_s:.0f} /s"))
        per_s, made = rate(r_n, lambda i: api.post("/v2.0/floatingips", json={"floatingip": {
            "floating_network_id": ext}}))
        rows.append(("floating IP create (unassociated), 1 client", f"{per_s:.0f} /s"))
        for body in made:
            ok(api.delete(f"/v2.0/floatingips/{body['floatingip']['id']}"))

        progress(f"{n} networks, subnets, routers ({gateways} with a gateway), interfaces")
        per_s, nets = rate(n, lambda i: api.post("/v2.0/networks", json={"network": {"name": f"s{i}"}}))
        rows.append(("network create, 1 client", f"{per_s:.0f} /s"))
        per_s, subs = rate(n, lambda i: api.post("/v2.0/subnets", json={"subnet": {
            "network_id": nets[i]["network"]["id"], "ip_version": 4, "enable_dhcp": False,
            "cidr": f"10.{100 + i // 250}.{i % 250}.0/24"}}))
        rows.append(("subnet create (no DHCP), 1 client", f"{per_s:.0f} /s"))
        gw = {"external_gateway_info": {"network_id": ext}}
        per_s, routers = rate(n, lambda i: api.post("/v2.0/routers", json={"router": {
            "name": f"s{i}", **(gw if i < gateways else {})}}))
        rows.append((f"router create{' with a gateway' if gateways else ''}, 1 client", f"{per_s:.0f} /s"))
        per_s, _ = rate(n, lambda i: api.put(f"/v2.0/routers/{routers[i]['router']['id']}/add_router_interface",
                                             json={"subnet_id": subs[i]["subnet"]["id"]}))
        rows.append(("add_router_interface, 1 client", f"{per_s:.0f} /s"))
        expected = n + gateways

        def active() -> int:
            found = 0
            for owner in ("network:router_interface", "network:router_gateway"):
                found += len(ok(api.get("/v2.0/ports", params={"device_owner": owner, "status": "ACTIVE",
                                                                "fields": "id"}))["ports"])
            return found

        progress(f"agent start on the empty host: converging {n} routers ({expected} ports)")
        offset = len(lab.log.read_bytes())
        start = time.monotonic()
        lab.start_agent()
        assert lab.agent is not None
        with profiled(args, lab.agent.pid, "converge"):
            wait_for("every router port ACTIVE", lambda: active() >= expected, args.timeout, 0.25)
        converged = time.monotonic() - start
        changes, own_ms = lab.first_pass(offset, 30)
        rows += [(f"converge from empty: {n} routers, {expected} router ports (agent start -> all ACTIVE)",
                  f"{converged:.1f} s"),
                 ("  of which the first pass itself / its changes", f"{own_ms / 1000:.1f} s / {changes}"),
                 ("agent RSS after converging", f"{rss_mb(lab.agent.pid):.0f} MB")]
        names = [x for x in lab.host.nested_namespaces() if x.startswith("qrouter-")]
        tables = nft_tables(lab)
        with_table = sum(1 for ns in names if tables.get(ns, 0) == 1)
        rows.append(("  check: qrouter namespaces / with their NAT table", f"{len(names)} / {with_table}"))
        if len(names) != n or with_table != n:
            raise RuntimeError(f"{n} routers: {len(names)} namespaces, {with_table} NAT tables")

        progress(f"idle agent for {args.idle:g} s")
        time.sleep(3)
        cpu = cpu_seconds(lab.agent.pid)
        with profiled(args, lab.agent.pid, "idle"):
            time.sleep(args.idle)
        used = cpu_seconds(lab.agent.pid) - cpu
        rows.append((f"idle agent at {n} routers (a full pass at least every 2 s): CPU",
                     f"{used / args.idle:.0%} of a core"))

        progress("agent restart")
        stopped = lab.stop_agent()
        offset = len(lab.log.read_bytes())
        start = time.monotonic()
        lab.start_agent()
        assert lab.agent is not None
        with profiled(args, lab.agent.pid, "restart"):
            changes, own_ms = lab.first_pass(offset, args.timeout)
        verified = time.monotonic() - start
        rows += [("agent stop (SIGTERM -> exited)", f"{stopped:.2f} s"),
                 (f"restart: process start -> first pass done ({n} routers)", f"{verified:.1f} s"),
                 ("  of which the pass itself / its changes", f"{own_ms / 1000:.1f} s / {changes}"),
                 ("agent RSS after the restart's first pass", f"{rss_mb(lab.agent.pid):.0f} MB")]
        if active() < expected:
            raise RuntimeError("router ports not ACTIVE after the restart")
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run: 1 x 2 s, 5 FIPs, 50 routers")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--seconds", type=int, default=5)
    p.add_argument("--fips", type=int, default=50)
    p.add_argument("--fip-instances", type=int, default=10)
    p.add_argument("--routers", type=int, default=1000)
    p.add_argument("--gateways", type=int, default=1000, help="routers with a gateway (at most --routers)")
    p.add_argument("--rate-count", type=int, default=300, help="routers / floating IPs for the create rates")
    p.add_argument("--idle", type=float, default=10.0, help="seconds of idle agent to measure at scale")
    p.add_argument("--timeout", type=float, default=600.0, help="give up on convergence after this long")
    p.add_argument("--no-port-security", action="store_true",
                   help="lab instances without port security (no filtered port on the host: no conntrack there)")
    p.add_argument("--py-spy", default="", help="py-spy binary: profile the agent converging and restarting")
    p.add_argument("--only", default="throughput,fip,scale", help="comma-separated parts to run")
    args = p.parse_args()
    if args.quick:
        args.reps, args.seconds, args.fips, args.fip_instances = 1, 2, 5, 2
        args.routers, args.gateways, args.rate_count, args.idle = 50, 50, 50, 3.0
    args.only = set(args.only.split(","))
    if os.geteuid() != 0:
        print("bench/l3.py needs root (network namespaces)", file=sys.stderr)
        return 2
    rows: list[tuple[str, str]] = []
    started = time.monotonic()
    try:
        if args.only & {"throughput", "fip"}:
            rows += lab_one(args)
        if "scale" in args.only:
            rows += lab_scale(args)
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr)
        return 130
    finally:
        if rows:
            width = max(len(k) for k, _ in rows)
            load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
            print(f"\nneutrino routing bench (real kernel, throwaway hosts; {os.cpu_count()} cores, "
                  f"{time.monotonic() - started:.0f} s; load average at the end {load})")
            for k, v in rows:
                print(f"  {k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
