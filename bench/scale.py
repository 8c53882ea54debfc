#!/usr/bin/env python3
"""Scale-out figures: a multi-host lab on PostgreSQL, and API throughput with 2 servers against 1 (root).

Everything runs on one throwaway PostgreSQL cluster (``tests/api/conftest.pg_cluster``):

1. Create rates (own database, no lab): ``--rate-clients`` client processes of ``--rate-threads`` keep-alive
   connections each POST networks, then ports (one network, a /16 subnet), for ``--rate-seconds`` against
   one ``neutrino server``, then spread over two on the same database; creates/s and the CPU each part
   (servers, PostgreSQL, clients) used per create.
2. The lab: ``neutrino lab up --hosts N`` with the lab's server on PostgreSQL (a ``--config`` file naming
   the database), plus a second ``neutrino server`` on the same database. Its agents are stopped once
   registered; ``--networks`` networks (a DHCP subnet each) and ``--ports`` ports bound to the hosts
   (``binding:host_id``, ``device_owner compute:lab``; each network on ``--span`` hosts; in the admin
   project's default security group unless ``--no-port-security``) are created through the API, and every
   port's tap made in its host as a hypervisor would (``ip -batch``). Then:
   - converge from empty: ``neutrino lab up`` starts every agent at once -> every port ACTIVE, then every
     host's VXLAN FDB exactly as the bindings say and every network's dnsmasq running with all its MACs;
   - restart: one host's agent after another stopped (SIGTERM) and started again by ``lab up``: agent
     process start -> its first pass done, and the changes that pass made;
   - change -> applied across hosts: ``--probes`` ports created one at a time on host X of a random
     network, alternately through each server (the agents talk to the lab's server: half the writes reach
     them through NOTIFY), half in no security group and half in the default group; for each, POST sent ->
     the FDB entry for its MAC present on every other host of the network (``bridge monitor fdb`` in each
     host) and its MAC in the network's dnsmasq hosts file. Meanwhile a ``bench/feed.py`` waiter per host
     (``/agent-api/v1/wait?host=``) counts the hosts each create wakes;
   - ``--instances`` lab instances on two hosts of one network get an address by DHCP and ping each other.

    .venv/bin/python bench/scale.py [--quick] [--hosts 10] [--networks 200] [--ports 5000] [--span 3]
                                    [--probes 200] [--only rate,lab] [--py-spy /path/to/py-spy]

Everything it made goes on exit, also on a failure or Ctrl-C (``lab down``, servers, the cluster).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import cpu_seconds, ok, pct, progress, rss_mb, wait_for  # noqa: E402
from bench.feed import Sim, shut_down  # noqa: E402
from neutrino.hosts import Host, Process, Underlay  # noqa: E402
from neutrino.lab import multihost  # noqa: E402
from tests.api.conftest import PG_BIN, Postgres, Server, free_port, pg_cluster, start_server  # noqa: E402

NEUTRINO = str(Path(sys.executable).parent / "neutrino")
PASS_1 = re.compile(r"pass 1 at revision \d+: (\d+) changes in (\d+) ms")
FLOOD = "00:00:00:00:00:00"








def token(url: str) -> str:
    return str(httpx.post(f"{url}/identity/v3/auth/tokens", json={"auth": {"identity": {
        "methods": ["password"], "password": {"user": {"name": "admin", "domain": {"name": "Default"},
                                                       "password": "secret"}}},
        "scope": {"project": {"name": "admin", "domain": {"name": "Default"}}}}},
        timeout=30).headers["X-Subject-Token"])






def boot_seconds(p: Process) -> float:
    """When ``p`` started, on CLOCK_BOOTTIME."""
    return p.start / os.sysconf("SC_CLK_TCK")


def postgres_pids(pg: Postgres) -> list[int]:
    """The cluster's processes (the postmaster's children and itself)."""
    try:
        master = int((pg.datadir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    kids = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()
    return [master, *(int(k) for k in kids)]


@contextlib.contextmanager
def profiled(spy: str, pids: dict[str, int], name: str) -> Iterator[None]:
    """With --py-spy: each process sampled while the block runs (raw collapsed stacks, idle excluded)."""
    if not spy:
        yield
        return
    procs = []
    for what, pid in pids.items():
        out = Path(tempfile.gettempdir()) / f"neutrino-scale-{name}-{what}.txt"
        procs.append((out, subprocess.Popen([spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "100",
                                             "-o", str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
    try:
        yield
    finally:
        for out, p in procs:
            p.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(60)
            progress(f"py-spy: {out}")


# -- 1. create rates, 1 server against 2 ------------------------------------------------------------------
CLIENT = r"""
import http.client, json, sys, threading, time
urls, tok, path, bodies, start, seconds, threads = json.loads(sys.argv[1])
counts, errors = [0] * threads, [0] * threads
def run(i):
    host, port = urls[i % len(urls)]
    conn = http.client.HTTPConnection(host, port, timeout=60)
    headers = {"X-Auth-Token": tok, "Content-Type": "application/json"}
    data = bodies[i % len(bodies)].encode()
    while time.monotonic() < start:
        time.sleep(0.001)
    end = start + seconds
    while time.monotonic() < end:
        conn.request("POST", path, data, headers)
        resp = conn.getresponse()
        resp.read()
        if resp.status == 201:
            counts[i] += 1
        else:
            errors[i] += 1
ts = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
for t in ts: t.start()
for t in ts: t.join()
print(json.dumps({"ok": sum(counts), "errors": sum(errors)}))
"""


@dataclass
class RateResult:
    per_s: float
    errors: int
    cpu: dict[str, float]  # part -> CPU seconds per create


def create_rate(servers: list[Server], tok: str, path: str, bodies: list[dict[str, Any]], clients: int,
                threads: int, seconds: float, pg: Postgres) -> RateResult:
    """``clients`` processes x ``threads`` connections POSTing to ``path`` for ``seconds``, connection i of
    client c the body ``(c * threads + i) mod len(bodies)``, spread over ``servers``."""
    urls = [(urlsplit(s.url).hostname, urlsplit(s.url).port) for s in servers]
    start = time.monotonic() + 1.0  # every client connected and waiting
    procs = []
    for c in range(clients):
        spread = urls[c % len(urls):] + urls[:c % len(urls)]  # clients start on different servers
        mine = [json.dumps(bodies[(c * threads + i) % len(bodies)]) for i in range(threads)]
        arg = json.dumps([spread, tok, path, mine, start, seconds, threads])
        procs.append(subprocess.Popen([sys.executable, "-c", CLIENT, arg], stdout=subprocess.PIPE, text=True))
    parts = {"servers": [s.proc.pid for s in servers], "postgres": postgres_pids(pg),
             "clients": [p.pid for p in procs]}
    while time.monotonic() < start:
        time.sleep(0.01)
    before = {k: sum(cpu_seconds(p) for p in pids) for k, pids in parts.items()}
    time.sleep(seconds)
    parts["postgres"] = sorted(set(parts["postgres"]) | set(postgres_pids(pg)))
    after = {k: sum(cpu_seconds(p) for p in pids) for k, pids in parts.items()}
    done, errors = 0, 0
    for p in procs:
        out, _ = p.communicate(timeout=120)
        found = json.loads(out)
        done, errors = done + found["ok"], errors + found["errors"]
    return RateResult(done / seconds, errors, {k: (after[k] - before[k]) / max(done, 1) for k in parts})


def rates(args: argparse.Namespace, pg: Postgres, tmp: Path) -> list[tuple[str, str]]:
    url = pg.new_database()
    servers = []
    rows: list[tuple[str, str]] = []
    try:
        for name in ("a", "b"):
            (tmp / f"rate-{name}").mkdir()
            servers.append(start_server(tmp / f"rate-{name}", url, "postgresql",
                                        {"NEUTRINO_LOG__LEVEL": "WARNING"}))
        tok = token(servers[0].url)
        api = httpx.Client(base_url=servers[0].url, headers={"X-Auth-Token": tok}, timeout=60)
        c, t, s = args.rate_clients, args.rate_threads, args.rate_seconds
        # Ports on a network of each connection's own: creates on one network queue on its row lock (its
        # addresses are drawn under it), whatever the number of servers.
        nets = []
        for i in range(c * t):
            nets.append(ok(api.post("/v2.0/networks", json={"network": {"name": f"rate{i}"}}))["network"]["id"])
            ok(api.post("/v2.0/subnets", json={"subnet": {"network_id": nets[-1], "ip_version": 4,
                                                         "cidr": f"10.{i}.0.0/16"}}))
        api.close()
        for what, path, bodies in (("network", "/v2.0/networks", [{"network": {"name": "r"}}]),
                                   ("port", "/v2.0/ports", [{"port": {"network_id": n}} for n in nets])):
            found = {}
            for n in (1, 2):
                progress(f"{what} creates: {c} client processes x {t} connections, {s:g} s, {n} server(s)")
                with profiled(args.py_spy, {f"server{i}": srv.proc.pid for i, srv in enumerate(servers[:n])},
                              f"rate-{what}-{n}"):
                    found[n] = create_rate(servers[:n], tok, path, bodies, c, t, s, pg)
            one, two = found[1], found[2]
            rows += [(f"{what} creates/s, 1 server / 2 servers ({c} x {t} clients"
                      f"{', a network each' if what == 'port' else ''}, PostgreSQL)",
                      f"{one.per_s:.0f} / {two.per_s:.0f} = {two.per_s / max(one.per_s, 1e-9):.2f}x"
                      f"{f'  ({one.errors + two.errors} errors)' if one.errors + two.errors else ''}"),
                     ("  CPU ms per create, 1 server: servers / PostgreSQL / clients",
                      " / ".join(f"{one.cpu[k] * 1000:.2f}" for k in ("servers", "postgres", "clients"))),
                     ("  CPU ms per create, 2 servers: servers / PostgreSQL / clients",
                      " / ".join(f"{two.cpu[k] * 1000:.2f}" for k in ("servers", "postgres", "clients")))]
    finally:
        for srv in servers:
            srv.stop()
    return rows


# -- 2. the lab -------------------------------------------------------------------------------------------
@dataclass
class Topology:
    """What was created: per network its VNI, hosts and ports; per port its host and MAC."""
    vni: dict[str, int] = field(default_factory=dict)
    cidr: dict[str, str] = field(default_factory=dict)
    span: dict[str, list[str]] = field(default_factory=dict)       # network -> hosts with instance ports
    dhcp: dict[str, str] = field(default_factory=dict)             # network -> host of its DHCP port
    ports: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)  # network -> (id, host, mac)

    def hosts_of(self, net: str) -> set[str]:
        return {h for _, h, _ in self.ports[net]}

    def add(self, net: str, port: dict[str, Any]) -> None:
        self.ports.setdefault(net, []).append((port["id"], port["binding:host_id"], port["mac_address"]))


@dataclass
class Lab:
    args: argparse.Namespace
    dir: Path
    url: str            # the lab's server
    url_b: str          # the second server on the same database
    api: httpx.Client
    api_b: httpx.Client
    hosts: dict[str, Host]
    server_pid: int     # the lab's server
    server_b_pid: int
    topo: Topology = field(default_factory=Topology)

    def record(self) -> multihost.LabRecord:
        rec = multihost.load(self.dir)
        assert rec is not None
        return rec

    def agent(self, name: str) -> Process | None:
        return self.record().hosts[name].agent

    def log(self, name: str) -> Path:
        return self.dir / "logs" / f"{name}.log"

    def lab_up(self, *extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen([NEUTRINO, "lab", "up", "--state-dir", str(self.dir), *extra], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def ip_of(self, name: str) -> str:
        return str(self.hosts[name].address.ip)


def failed(proc: subprocess.Popen[str]) -> bool:
    """Raises when ``proc`` (a ``lab up``) ended in failure; False otherwise."""
    if proc.poll():
        finish(proc, "lab up")
    return False


def finish(proc: subprocess.Popen[str], what: str, timeout: float = 300) -> None:
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}): {out}")


@contextlib.contextmanager
def open_lab(args: argparse.Namespace, pg: Postgres, tmp: Path) -> Iterator[Lab]:
    d = tmp / "lab"
    d.mkdir()
    conf = tmp / "lab.yaml"
    conf.write_text(yaml.safe_dump({
        "database": {"url": pg.new_database()},
        "identity": {"admin_password": "secret"},
        "quotas": {"network": -1, "subnet": -1, "port": -1, "security_group_rule": -1},
        # The agents are stopped while the intent is made: their networks must not move meanwhile.
        "agent": {"agent_down_seconds": 3600, "heartbeat_seconds": 10},
    }))
    port = free_port()
    with contextlib.ExitStack() as undo:
        def down() -> None:
            progress("lab down")
            subprocess.run([NEUTRINO, "lab", "down", "--state-dir", str(d)], check=False, timeout=300,
                           stdout=subprocess.DEVNULL)
        undo.callback(down)
        progress(f"neutrino lab up --hosts {args.hosts} (server on PostgreSQL)")
        started = time.monotonic()
        up = subprocess.run([NEUTRINO, "lab", "up", "--hosts", str(args.hosts), "--state-dir", str(d), "--port",
                             str(port), "--clouds-yaml", "", "--config", str(conf)], text=True,
                            capture_output=True, timeout=600)
        if up.returncode != 0:
            raise RuntimeError(f"lab up failed: {up.stdout}{up.stderr}")
        progress(f"lab up: {time.monotonic() - started:.1f} s")
        # The same liveness settings as the lab's server: every server moves DHCP off agents it finds silent.
        env_b = {"NEUTRINO_LOG__LEVEL": "WARNING", "NEUTRINO_AGENT__AGENT_DOWN_SECONDS": "3600"}
        (tmp / "server-b").mkdir()
        server_b = start_server(tmp / "server-b", yaml.safe_load(conf.read_text())["database"]["url"], "postgresql",
                                env_b)
        undo.callback(server_b.stop)
        url = f"http://127.0.0.1:{port}"
        api = httpx.Client(base_url=url, headers={"X-Auth-Token": token(url)}, timeout=120)
        undo.callback(api.close)
        api_b = httpx.Client(base_url=server_b.url, headers={"X-Auth-Token": token(server_b.url)}, timeout=120)
        undo.callback(api_b.close)
        rec = multihost.load(d)
        assert rec is not None
        ul = Underlay(rec.prefix)
        hosts = {}
        for name, hr in rec.hosts.items():
            assert hr.holder is not None
            hosts[name] = Host.attach(ul, name, ul.address(hr.index), hr.holder)
        lab = Lab(args, d, url, server_b.url, api, api_b, hosts, rec.server.pid if rec.server else 0,
                  server_b.proc.pid)
        yield lab


def stop_agents(lab: Lab, names: list[str]) -> None:
    for name in names:
        agent = lab.agent(name)
        if agent is not None:
            agent.stop(30)


def make_intent(lab: Lab) -> int:
    """Networks with a DHCP subnet, ports bound to hosts with their taps made; the number of ports."""
    a = lab.args
    names = sorted(lab.hosts, key=lambda n: int(n.removeprefix("host")))
    rng = random.Random(15)
    taps: dict[str, list[str]] = {n: [] for n in names}
    security = {} if a.port_security else {"port_security_enabled": False}
    made = 0
    for i in range(a.networks):
        net = ok(lab.api.post("/v2.0/networks", json={"network": {"name": f"scale{i}"}}))["network"]
        nid = net["id"]
        lab.topo.vni[nid] = int(net["provider:segmentation_id"])
        lab.topo.cidr[nid] = f"10.{100 + i // 250}.{i % 250}.0/24"
        ok(lab.api.post("/v2.0/subnets", json={"subnet": {"network_id": nid, "ip_version": 4,
                                                         "cidr": lab.topo.cidr[nid]}}))
        first = rng.randrange(len(names))
        span = [names[(first + j) % len(names)] for j in range(min(a.span, len(names)))]
        lab.topo.span[nid] = span
        count = a.ports // a.networks + (1 if i < a.ports % a.networks else 0)
        for j, host in enumerate(span):
            k = count // len(span) + (1 if j < count % len(span) else 0)
            if not k:
                continue
            body = [{"network_id": nid, "device_owner": "compute:lab", "binding:host_id": host, **security}
                    for _ in range(k)]
            for p in ok(lab.api.post("/v2.0/ports", json={"ports": body}))["ports"]:
                lab.topo.add(nid, p)
                taps[host].append(p["id"])
                made += 1
        if (i + 1) % 50 == 0:
            progress(f"{i + 1} networks, {made} ports")
    for p in ok(lab.api.get("/v2.0/ports", params={"device_owner": "network:dhcp"}))["ports"]:
        lab.topo.dhcp[p["network_id"]] = p["binding:host_id"]
        lab.topo.add(p["network_id"], p)
    missing = set(lab.topo.vni) - set(lab.topo.dhcp)
    if missing:
        raise RuntimeError(f"{len(missing)} networks have no DHCP port (no DHCP agent scheduled)")
    for name, ids in taps.items():  # as a hypervisor would: the VM's NIC appears, the agent plugs it
        batch = lab.dir / f"taps-{name}.batch"
        batch.write_text("".join(f"link add tap{p[:11]} type veth peer name v{p[:11]}\n" for p in ids))
        done = lab.hosts[name].run(["ip", "-batch", str(batch)], timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"taps in {name}: {done.stderr}")
    return made


def expected_fdb(lab: Lab) -> dict[str, set[tuple[str, str, str]]]:
    """host -> {(vxlan device, MAC, dst)} its VXLAN devices should have, from the bindings."""
    out: dict[str, set[tuple[str, str, str]]] = {h: set() for h in lab.hosts}
    for net, ports in lab.topo.ports.items():
        dev = f"vxlan-{lab.topo.vni[net]}"
        on = lab.topo.hosts_of(net)
        for h in on:
            for _, g, mac in ports:
                if g != h:
                    out[h].add((dev, mac.lower(), lab.ip_of(g)))
            out[h] |= {(dev, FLOOD, lab.ip_of(g)) for g in on if g != h}
    return out


def observed_fdb(host: Host) -> set[tuple[str, str, str]]:
    done = host.run(["bridge", "fdb", "show"], timeout=120)
    found = set()
    for line in done.stdout.splitlines():
        w = line.split()
        # Only the static entries (the agent's): a VXLAN device also learns the MACs of frames that arrive.
        if len(w) >= 5 and w[1] == "dev" and w[2].startswith("vxlan-") and "dst" in w and \
                ("permanent" in w or "static" in w):
            found.add((w[2], w[0].lower(), w[w.index("dst") + 1]))
    return found


def dhcp_problems(lab: Lab) -> list[str]:
    """Networks whose dnsmasq is not running on its host with every MAC of the network in its hosts file."""
    bad = []
    for net, host in lab.topo.dhcp.items():
        d = lab.dir / "hosts" / host / "agent" / "dhcp" / net
        try:
            pid = int((d / "pid").read_text())
            alive = b"dnsmasq" in Path(f"/proc/{pid}/cmdline").read_bytes()
            text = (d / "hosts").read_text().lower()
        except (OSError, ValueError):
            bad.append(f"{net} on {host}: no dnsmasq")
            continue
        missing = [m for _, h, m in lab.topo.ports[net] if m.lower() not in text and h != host]
        if not alive or missing:
            bad.append(f"{net} on {host}: {'not running' if not alive else f'{len(missing)} MACs missing'}")
    return bad


def kernel_problems(lab: Lab) -> list[str]:
    want = expected_fdb(lab)
    bad = []
    for name, host in lab.hosts.items():
        have = observed_fdb(host)
        if have != want[name]:
            bad.append(f"{name}: FDB {len(want[name] - have)} missing, {len(have - want[name])} extra (e.g. "
                       f"{sorted(want[name] - have)[:2]}, {sorted(have - want[name])[:2]})")
    return bad + dhcp_problems(lab)


def active_ports(lab: Lab) -> int:
    return len(ok(lab.api.get("/v2.0/ports", params={"status": "ACTIVE", "fields": "id"}))["ports"])


def first_pass(lab: Lab, name: str, offset: int) -> tuple[int, int] | None:
    """(changes, own ms) of the first pass logged after byte ``offset`` of the host's agent log."""
    found = PASS_1.search(lab.log(name).read_bytes()[offset:].decode(errors="replace"))
    return (int(found.group(1)), int(found.group(2))) if found else None


def converge(lab: Lab) -> list[tuple[str, str]]:
    a = lab.args
    names = sorted(lab.hosts)
    stop_agents(lab, names)
    progress(f"agents stopped; {a.networks} networks, {a.ports} ports bound to {len(names)} hosts, taps made")
    started = time.monotonic()
    made = make_intent(lab)
    intent_s = time.monotonic() - started
    total = sum(len(p) for p in lab.topo.ports.values())
    offsets = {n: lab.log(n).stat().st_size for n in names}
    progress(f"intent made in {intent_s:.1f} s; starting every agent (lab up): converge from empty")
    start = time.monotonic()
    up = lab.lab_up()
    with profiled(a.py_spy, {"server": lab.server_pid}, "converge"):
        wait_for("every port ACTIVE", lambda: failed(up) or active_ports(lab) >= total, a.timeout, 0.2)
        all_active = time.monotonic() - start
        moved = [p["network_id"] for p in ok(lab.api.get("/v2.0/ports", params={"device_owner": "network:dhcp"}))[
            "ports"] if lab.topo.dhcp.get(p["network_id"]) != p["binding:host_id"]]
        if moved:
            raise RuntimeError(f"the DHCP of {len(moved)} networks moved to other hosts (agents found dead?)")
        deadline = time.monotonic() + 120
        while True:
            problems = kernel_problems(lab)
            if not problems or time.monotonic() > deadline:
                break
            time.sleep(0.2)
    converged = time.monotonic() - start
    finish(up, "lab up (agents start)")
    if problems:
        raise RuntimeError("not converged: " + "; ".join(problems[:10]))
    passes = {n: first_pass(lab, n, offsets[n]) for n in names}
    own = [p[1] / 1000 for p in passes.values() if p]
    fdb = sum(len(v) for v in expected_fdb(lab).values())
    return [
        (f"intent: {a.networks} networks (DHCP), {made} instance ports on {len(names)} hosts (each network on "
         f"{a.span}), made through the API", f"{intent_s:.1f} s"),
        (f"converge from empty: agents start -> all {total} ports ACTIVE (DHCP ports included)",
         f"{all_active:.1f} s"),
        (f"  -> every host's VXLAN FDB exact ({fdb} entries) and {len(lab.topo.dhcp)} dnsmasq with every MAC",
         f"{converged:.1f} s"),
        ("  first pass per host (its own time), median / max", f"{statistics.median(own):.1f} / {max(own):.1f} s"
         if own else "?"),
    ]


def restart_one(lab: Lab, name: str) -> tuple[float, float, int, int]:
    """Stop a host's agent, start it again with ``lab up``: (agent process start -> first pass done, the
    pass's own time, its changes, dnsmasq restarted)."""
    dhcp = lab.dir / "hosts" / name / "agent" / "dhcp"
    before = {int(p.read_text()) for p in dhcp.glob("*/pid")}
    old = lab.agent(name)
    offset = lab.log(name).stat().st_size
    stop_agents(lab, [name])
    up = lab.lab_up()
    found = wait_for(f"{name}'s first pass", lambda: failed(up) or first_pass(lab, name, offset), lab.args.timeout,
                     0.01)
    seen = time.clock_gettime(time.CLOCK_BOOTTIME)
    finish(up, f"lab up (restart of {name})")
    new = lab.agent(name)
    assert new is not None and new != old
    after = {int(p.read_text()) for p in dhcp.glob("*/pid")}
    return seen - boot_seconds(new), found[1] / 1000, found[0], len(before - after)


def restart(lab: Lab) -> list[tuple[str, str]]:
    names = sorted(lab.hosts, key=lambda n: int(n.removeprefix("host")))[:lab.args.restarts]
    verify: list[float] = []
    own: list[float] = []
    changes, restarted = 0, 0
    for name in names:
        took, itself, changed, dnsmasq = restart_one(lab, name)
        verify.append(took)
        own.append(itself)
        changes += changed
        restarted += dnsmasq
        progress(f"restart {name}: {took:.2f} s to its first pass ({itself:.2f} s), {changed} changes, "
                 f"{dnsmasq} dnsmasq restarted")
    ports = statistics.mean(sum(1 for ps in lab.topo.ports.values() for _, h, _ in ps if h == n) for n in names)
    return [(f"restart, {len(names)} hosts one at a time (~{ports:.0f} ports each): agent process start -> first "
             "pass done, median / max", f"{statistics.median(verify):.2f} / {max(verify):.2f} s"),
            ("  of which the pass itself, median / max", f"{statistics.median(own):.2f} / {max(own):.2f} s"),
            ("  changes made / dnsmasq restarted, all restarts together", f"{changes} / {restarted}")]


class FdbWatch:
    """``bridge monitor fdb`` in every host: when each (host, MAC, dst) entry first appeared."""

    def __init__(self, hosts: dict[str, Host]) -> None:
        self.seen: dict[tuple[str, str], tuple[float, str]] = {}
        self.procs = []
        self.threads = []
        for name, host in hosts.items():
            p = host.popen(["stdbuf", "-oL", "bridge", "monitor", "fdb"], stdout=subprocess.PIPE,
                           stderr=subprocess.DEVNULL, text=True)
            self.procs.append(p)
            t = threading.Thread(target=self._read, args=(name, p), daemon=True)
            t.start()
            self.threads.append(t)

    def _read(self, name: str, p: subprocess.Popen[str]) -> None:
        assert p.stdout is not None
        for line in p.stdout:
            now = time.monotonic()
            w = line.split()
            if w and w[0] != "Deleted" and "dst" in w and len(w) > 2 and w[2].startswith("vxlan-"):
                self.seen.setdefault((name, w[0].lower()), (now, w[w.index("dst") + 1]))

    def close(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


@dataclass
class Probe:
    via: int                    # 0: the lab's server (the agents'), 1: the other one
    grouped: bool               # in the default security group
    sent: float
    fdb: list[float]            # per other host of the network: seconds until its entry
    dhcp: float | None          # until the MAC is in the network's dnsmasq hosts file (None: DHCP on X)
    woken: int
    network_hosts: int


async def probes(lab: Lab) -> list[Probe]:
    a = lab.args
    rng = random.Random(16)
    clients = [httpx.AsyncClient(base_url=u, headers=dict(c.headers), timeout=60)
               for u, c in ((lab.url, lab.api), (lab.url_b, lab.api_b))]
    start = int(ok(await clients[0].get("/agent-api/v1/snapshot", params={"host": "host1"}))["revision"])
    sims = [Sim(h, clients[0], 0, True, start) for h in sorted(lab.hosts)]
    stop = asyncio.Event()
    tasks = [asyncio.create_task(s.run(stop)) for s in sims]
    watch = FdbWatch(lab.hosts)
    out = []
    try:
        await asyncio.sleep(1.0)
        nets = sorted(lab.topo.span)
        for k in range(a.probes):
            net = rng.choice(nets)
            x = rng.choice(lab.topo.span[net])
            others = sorted(lab.topo.hosts_of(net) - {x})
            via, grouped = k % 2, (k // 2) % 2 == 1
            body: dict[str, Any] = {"network_id": net, "device_owner": "compute:lab", "binding:host_id": x}
            if not grouped:
                body.update(port_security_enabled=False, security_groups=[])
            before = {s.host: len(s.wakes) for s in sims}
            hosts_file = lab.dir / "hosts" / lab.topo.dhcp[net] / "agent" / "dhcp" / net / "hosts"
            sent = time.monotonic()
            port = ok(await clients[via].post("/v2.0/ports", json={"port": body}))["port"]
            mac = port["mac_address"].lower()
            fdb: dict[str, float] = {}
            dhcp_at = None
            deadline = sent + 10
            while time.monotonic() < deadline:
                for h in others:
                    hit = watch.seen.get((h, mac))
                    if hit is not None and h not in fdb:
                        if hit[1] != lab.ip_of(x):
                            raise RuntimeError(f"{h}: {mac} points at {hit[1]}, not {x}")
                        fdb[h] = hit[0] - sent
                if dhcp_at is None and mac in hosts_file.read_text().lower():
                    dhcp_at = time.monotonic() - sent
                if len(fdb) == len(others) and dhcp_at is not None:
                    break
                await asyncio.sleep(0.002)
            if len(fdb) < len(others) or dhcp_at is None:
                raise RuntimeError(f"probe {k}: port {port['id']} on {x}: FDB on {sorted(fdb)} of {others}, "
                                   f"dnsmasq {'yes' if dhcp_at else 'no'} after 10 s")
            await asyncio.sleep(0.3)  # every wake this create causes has arrived
            woken = sum(1 for s in sims if len(s.wakes) > before[s.host])
            out.append(Probe(via, grouped, sent, sorted(fdb.values()), dhcp_at, woken, len(others) + 1))
            lab.topo.add(net, port)
            lab.hosts[x].run(["ip", "link", "add", f"tap{port['id'][:11]}", "type", "veth", "peer", "name",
                              f"v{port['id'][:11]}"], timeout=30)
            if (k + 1) % 50 == 0:
                progress(f"{k + 1} probes")
    finally:
        await shut_down(stop, tasks, clients)
        watch.close()
    return out




def idle(lab: Lab) -> list[tuple[str, str]]:
    """CPU of the agents and the server while nothing changes (each agent's full pass every 2 s, its
    snapshot every heartbeat)."""
    seconds = lab.args.idle
    progress(f"idle for {seconds:g} s")
    agents = [p.pid for p in (lab.agent(n) for n in lab.hosts) if p is not None]
    time.sleep(2)
    before = sum(cpu_seconds(p) for p in agents), cpu_seconds(lab.server_pid)
    time.sleep(seconds)
    used = sum(cpu_seconds(p) for p in agents) - before[0], cpu_seconds(lab.server_pid) - before[1]
    return [(f"idle: CPU of the {len(agents)} agents together / the lab's server",
             f"{used[0] / seconds:.0%} / {used[1] / seconds:.0%} of a core"),
            ("  RSS of an agent (mean) / the lab's server",
             f"{statistics.mean(rss_mb(p) for p in agents):.0f} / {rss_mb(lab.server_pid):.0f} MB")]


def latency(lab: Lab) -> list[tuple[str, str]]:
    a = lab.args
    progress(f"{a.probes} probes: port create on host X -> FDB on the network's other hosts, dnsmasq")
    agent = lab.agent(sorted(lab.hosts)[0])
    spied = {"server": lab.server_pid, "server_b": lab.server_b_pid, "agent": agent.pid if agent else 0}
    with profiled(a.py_spy, spied, "probes"):
        found = asyncio.run(probes(lab))
    rows = []
    selections: list[tuple[str, Callable[[Probe], bool]]] = [
        ("all", lambda p: True),
        ("  written through the agents' server", lambda p: p.via == 0),
        ("  written through the other server (NOTIFY)", lambda p: p.via == 1),
        ("  port in no security group", lambda p: not p.grouped),
        ("  port in the default security group", lambda p: p.grouped)]
    for label, sel in selections:
        some = [p for p in found if sel(p)]
        if not some:
            continue
        fdb = [x * 1000 for p in some for x in p.fdb]
        dhcp = [p.dhcp * 1000 for p in some if p.dhcp is not None]
        rows.append((f"{label.strip() if label == 'all' else label}: POST -> FDB entry on another host, p50 / p99 "
                     f"({len(fdb)}); -> dnsmasq hosts file, p50 / p99",
                     f"{pct(fdb, 0.5):.0f} / {pct(fdb, 0.99):.0f} ms; {pct(dhcp, 0.5):.0f} / {pct(dhcp, 0.99):.0f} ms"))
    for label, grouped in (("no security group", False), ("the default security group", True)):
        some = [p for p in found if p.grouped == grouped]
        if some:
            rows.append((f"hosts woken per port create, port in {label}: mean, max (hosts of its network: mean)",
                         f"{statistics.mean(p.woken for p in some):.1f}, {max(p.woken for p in some)} "
                         f"({statistics.mean(p.network_hosts for p in some):.1f}; all hosts {len(lab.hosts)})"))
    return rows


def diagnose(lab: Lab, net: str, port: dict[str, Any]) -> str:
    """Where a port's DHCP went wrong: its status, its MAC in the network's dnsmasq hosts file and in the
    VXLAN FDB of each host of the network, and the end of those hosts' agent logs."""
    mac, dhcp = port["mac_address"], lab.topo.dhcp[net]
    hosts_file = lab.dir / "hosts" / dhcp / "agent" / "dhcp" / net / "hosts"
    lines = [f"port {port['id']} on {port['binding:host_id']}: {port['status']}; DHCP on {dhcp}: "
             f"MAC in its hosts file: {mac in hosts_file.read_text()}; dnsmasq's log:",
             *(f"    {line}" for line in (hosts_file.parent / "dnsmasq.log").read_text().splitlines()[-12:])]
    for h in sorted(lab.topo.hosts_of(net) | {dhcp, port["binding:host_id"]}):
        fdb = lab.hosts[h].run(["bridge", "fdb", "show", "dev", f"vxlan-{lab.topo.vni[net]}"], timeout=30).stdout
        tail = "\n    ".join(lab.log(h).read_text().splitlines()[-8:])
        lines.append(f"{h}: MAC in the VXLAN FDB: {mac in fdb}; agent log:\n    {tail}")
    return "\n".join(lines)


def instances(lab: Lab) -> list[tuple[str, str]]:
    """Two lab instances on two hosts of one network: DHCP addresses, and they ping each other."""
    net = sorted(lab.topo.span)[0]
    x, y = lab.topo.span[net][:2]
    addrs = {}
    for name, host in (("scale1", x), ("scale2", y)):
        done = subprocess.run([NEUTRINO, "instance", "create", "--state-dir", str(lab.dir), "--host", host,
                               "--network", net, name], capture_output=True, text=True, timeout=120)
        port = ok(lab.api.get("/v2.0/ports", params={"name": name}))["ports"][0]
        if done.returncode != 0:
            raise RuntimeError(f"instance {name} on {host}: {done.stdout}{done.stderr}\n{diagnose(lab, net, port)}")
        addrs[name] = port["fixed_ips"][0]["ip_address"]

    def has(name: str) -> bool:
        host = x if name == "scale1" else y
        out = lab.hosts[host].run(["ip", "netns", "exec", f"lab-{name}", "ip", "-4", "-o", "addr", "show",
                                   "eth0"], timeout=30).stdout
        return f" {addrs[name]}/" in out

    wait_for("the instances' DHCP addresses", lambda: has("scale1") and has("scale2"), 30, 0.1)
    ping = lab.hosts[x].run(["ip", "netns", "exec", "lab-scale1", "ping", "-c", "3", "-i", "0.2", "-W", "2",
                             addrs["scale2"]], timeout=30)
    for name in ("scale1", "scale2"):
        subprocess.run([NEUTRINO, "instance", "delete", "--state-dir", str(lab.dir), name], capture_output=True,
                       timeout=120)
    if ping.returncode != 0:
        raise RuntimeError(f"scale1 on {x} cannot ping scale2 on {y}: {ping.stdout}")
    return [(f"lab instances on {x} and {y} (one network): DHCP address, ping across hosts",
             f"{addrs['scale1']} / {addrs['scale2']}, 3/3 answered")]


def lab_figures(args: argparse.Namespace, pg: Postgres, tmp: Path) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    with open_lab(args, pg, tmp) as lab:
        rows += converge(lab)
        if args.instances:
            rows += instances(lab)
        if args.restarts:
            rows += restart(lab)
        if args.idle:
            rows += idle(lab)
        if args.probes:
            rows += latency(lab)
    return rows


def interrupted(signum: int, frame: Any) -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C: every cleanup runs."""
    raise KeyboardInterrupt


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke run: 3 hosts, 12 networks, 120 ports, 20 probes")
    p.add_argument("--hosts", type=int, default=10)
    p.add_argument("--networks", type=int, default=200)
    p.add_argument("--ports", type=int, default=5000)
    p.add_argument("--span", type=int, default=3, help="hosts with instance ports per network")
    p.add_argument("--no-port-security", dest="port_security", action="store_false",
                   help="the instance ports without port security (default: in the default security group)")
    p.add_argument("--probes", type=int, default=200, help="port creates timed across hosts")
    p.add_argument("--restarts", type=int, default=10, help="hosts whose agent is restarted (one at a time)")
    p.add_argument("--instances", type=int, default=1, help="0: no lab instances")
    p.add_argument("--idle", type=float, default=10.0, help="seconds of idle lab to measure CPU over (0: none)")
    p.add_argument("--rate-clients", type=int, default=4, help="client processes for the create rates")
    p.add_argument("--rate-threads", type=int, default=4, help="keep-alive connections per client process")
    p.add_argument("--rate-seconds", type=float, default=10.0)
    p.add_argument("--timeout", type=float, default=600.0, help="give up on convergence after this long")
    p.add_argument("--py-spy", default="", help="py-spy binary: profile the servers in each part")
    p.add_argument("--only", default="rate,lab", help="comma-separated parts to run")
    p.add_argument("--keep", action="store_true", help="keep the temporary directory (logs) for a look")
    args = p.parse_args()
    if args.quick:
        args.hosts, args.networks, args.ports, args.probes, args.restarts = 3, 12, 120, 20, 2
        args.rate_seconds, args.rate_clients, args.rate_threads, args.idle = 3.0, 2, 4, 3.0
    args.only = set(args.only.split(","))
    if os.geteuid() != 0:
        print("bench/scale.py needs root (network namespaces)", file=sys.stderr)
        return 2
    if not (PG_BIN / "initdb").exists():
        print("PostgreSQL server binaries are not installed", file=sys.stderr)
        return 1
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, interrupted)
    rows: list[tuple[str, str]] = []
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="neutrino-bench-scale-"))
    try:
        with pg_cluster() as pg:
            if "rate" in args.only:
                rows += rates(args, pg, tmp)
            if "lab" in args.only:
                rows += lab_figures(args, pg, tmp)
    except KeyboardInterrupt:
        print("interrupted; cleaned up", file=sys.stderr)
        return 130
    finally:
        if args.keep:
            progress(f"kept {tmp}")
        else:
            subprocess.run(["rm", "-rf", str(tmp)], check=False)
        if rows:
            width = max(len(k) for k, _ in rows)
            load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
            print(f"\nneutrino scale-out bench ({args.hosts} lab hosts, {args.networks} networks, {args.ports} "
                  f"ports; PostgreSQL; {os.cpu_count()} cores; {time.monotonic() - started:.0f} s; load average "
                  f"at the end {load})")
            for k, v in rows:
                print(f"  {k:<{width}}  {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
