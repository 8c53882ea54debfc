#!/usr/bin/env python3
"""Security group figures (root needed). 1-3 in throwaway namespaces, on hand-built snapshots:

1. Program from scratch: 1,000 filtered ports, each in its own group of 10 rules (one naming a shared remote
   group of 1,000 members), on a host with no table yet: compile + the nft plane's sync (one transaction,
   then the listings it keeps), against ``nft -f`` of the same rendered tables (raw) in the same run.
2. Rule change -> enforced on a running port, through the agent's pipeline (the 1,000-port snapshot, two
   real instances among them): A sends a UDP datagram every 0.5 ms to B; B's group gains an ingress rule
   for it (time until the first datagram arrives) and loses it (time until the last one arrived);
   reconcile() starts the clock.
3. TCP throughput (iperf3, one stream) between two filtered instances against two unfiltered ones on the
   same bridge, alternating, and against a plain bridge in a namespace with no table at all.

4. End to end, through the real product (bench/l3.py's lab: a ``neutrino server`` on SQLite, a throwaway
   host running ``neutrino agent``): one network; --e2e-ports ports bound to the host through the API
   (``binding:host_id``, ``device_owner compute:bench``, each with its tap made as a hypervisor would),
   half in the project's default group, half in a group ``guarded`` (default egress; ingress TCP 22, 80,
   443, ICMP, and TCP 5432 from the default group); lab instances A (default group) and B (guarded),
   made by ``neutrino instance create``. A sends a UDP datagram every 0.5 ms to B's port 7000. --e2e
   times, each: POST /v2.0/security-group-rules (ingress UDP 7000 into guarded) -> the first datagram
   received in B, then DELETE of that rule -> the last datagram received in B (known once none came for
   0.5 s). The clock starts just before the request is sent: API, database, change feed, snapshot fetch,
   the agent's pass and the kernel are all in the figure. Also the requests' own time and the agent's
   passes for these changes (their own time, from its log).

    .venv/bin/python bench/secgroups.py [--ports 1000] [--changes 40] [--seconds 3] [--rounds 3]
                                        [--e2e 40] [--e2e-ports 200] [--only program,rules,tcp,e2e]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import ipaddress
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # bench.l3's lab, for the end-to-end part

from neutrino.intent.model import (  # noqa: E402
    Direction,
    FixedIp,
    HostName,
    HostSpec,
    NetworkId,
    NetworkSpec,
    NetworkType,
    PortId,
    PortSpec,
    SecurityGroupId,
    SecurityGroupRuleSpec,
    SecurityGroupSpec,
    Snapshot,
    SubnetId,
    SubnetSpec,
)

if TYPE_CHECKING:
    from bench.l3 import Lab

H = HostName("h1")
NET = NetworkId("5e000000-0000-4000-8000-000000000001")
SUB = SubnetId("5e000000-0000-4000-8000-000000000002")
SHARED = SecurityGroupId("5e000000-0000-4000-8000-000000000003")
PROBE_PORT = 7000


def ip(i: int) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(int(ipaddress.IPv4Address("10.90.0.0")) + 10 + i)


def port_id(i: int) -> PortId:
    return PortId(f"5e{i:06x}-0000-4000-8000-{i:012x}")


def mac(i: int) -> str:
    return f"fa:16:3e:{(i >> 16) & 0xff:02x}:{(i >> 8) & 0xff:02x}:{i & 0xff:02x}"


def group_id(i: int) -> SecurityGroupId:
    return SecurityGroupId(f"5f{i:06x}-0000-4000-8000-{i:012x}")


def rules(i: int, probe: bool) -> tuple[SecurityGroupRuleSpec, ...]:
    def r(n: int, d: str, e: int, **kw: object) -> SecurityGroupRuleSpec:
        return SecurityGroupRuleSpec(f"{group_id(i)}-{n}", Direction(d), e, **kw)  # type: ignore[arg-type]
    ten = (r(0, "ingress", 4, protocol=6, port_min=22, port_max=22),
           r(1, "ingress", 4, protocol=6, port_min=80, port_max=80),
           r(2, "ingress", 4, protocol=6, port_min=443, port_max=443),
           r(3, "ingress", 4, protocol=17, port_min=53, port_max=53),
           r(4, "ingress", 4, protocol=1),
           r(5, "ingress", 6, protocol=58),
           r(6, "ingress", 4, protocol=6, port_min=8000, port_max=8100,
             remote_ip_prefix=ipaddress.ip_network("10.0.0.0/8")),
           r(7, "ingress", 4, protocol=6, port_min=5432, port_max=5432, remote_group_id=SHARED),
           r(8, "egress", 4), r(9, "egress", 6))
    return ten + ((r(10, "ingress", 4, protocol=17, port_min=PROBE_PORT, port_max=PROBE_PORT),) if probe else ())


def snapshot(n: int, probe: bool = False, extra: dict[PortId, PortSpec] | None = None) -> Snapshot:
    """``n`` filtered instance ports on h1 (port 0 is A, port 1 is B; B's group has the probe rule when
    ``probe``); ``extra`` ports besides."""
    ports = {port_id(i): PortSpec(port_id(i), NET, mac(i), (FixedIp(SUB, ip(i)),), "compute:bench", f"vm{i}", H,
                                  port_security_enabled=True, security_groups=(group_id(i),)) for i in range(n)}
    groups = {group_id(i): SecurityGroupSpec(group_id(i), True, rules(i, probe and i == 1)) for i in range(n)}
    groups[SHARED] = SecurityGroupSpec(SHARED, True, (), tuple(ipaddress.ip_network(ip(i)) for i in range(n)))
    return Snapshot(revision=1, networks={NET: NetworkSpec(NET, NetworkType.VXLAN, 990, None, 1450)},
                    subnets={SUB: SubnetSpec(SUB, NET, ipaddress.ip_network("10.90.0.0/16"), None, False)},
                    ports={**ports, **(extra or {})}, hosts={H: HostSpec(H, ipaddress.ip_address("198.18.0.1"))},
                    security_groups=groups)


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=check)


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


# -- inside the host namespace -------------------------------------------------------------------------------

def program_from_scratch(n: int, rounds: int, tmp: Path) -> dict[str, float]:
    from neutrino.compile.nft import render_sync
    from neutrino.compile.secgroups import compile_secgroups
    from neutrino.compile.state import HostState
    from neutrino.dataplane.nft import NftPlane
    snap = snapshot(n)
    ours, raw, compiles = [], [], []
    script = tmp / "raw.nft"
    for _ in range(rounds):
        start = time.monotonic()
        compiled = compile_secgroups(snap, "h1")
        compiles.append(time.monotonic() - start)
        plane = NftPlane("bench", scope="host")
        result = plane.sync(HostState(nft=compiled.tables))
        ours.append(time.monotonic() - start)
        assert len(result.ready) == n, "not every port ready"
        script.write_text("".join(render_sync(t, "raw") for t in compiled.tables))
        for family in ("bridge", "inet"):
            sh("nft", "delete", "table", family, "neutrino-bench")
        start = time.monotonic()
        sh("nft", "-f", str(script))
        raw.append(time.monotonic() - start)
        for family in ("bridge", "inet"):
            sh("nft", "delete", "table", family, "neutrino-raw")
    rules = sum(len(c.rules) for t in compiled.tables for c in t.chains)
    elements = sum(len(s.elements) for t in compiled.tables for s in t.sets)
    return {"ours": statistics.median(ours), "raw": statistics.median(raw), "compile": statistics.median(compiles),
            "rules": rules, "elements": elements, "script_bytes": len(script.read_text())}


RECEIVER = textwrap.dedent('''
    import select, socket, sys, time
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("0.0.0.0", int(sys.argv[1])))
    last, first = 0.0, None
    print("ready", flush=True)
    while True:
        r, _, _ = select.select([s, sys.stdin], [], [])
        if s in r:
            s.recv(64); last = time.monotonic()
            if first is None:
                first = last
        if sys.stdin in r:
            cmd = sys.stdin.readline().strip()
            if not cmd:
                break
            if cmd == "arm":
                first = None
            else:
                print(f"{first or 0.0} {last}", flush=True)
''')
SENDER = textwrap.dedent('''
    import socket, sys, time
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    while True:
        s.sendto(b"x", (sys.argv[1], int(sys.argv[2]))); time.sleep(0.0005)
''')


class Probe:
    """SENDER in one namespace and RECEIVER in another, each started behind an argv prefix that enters its
    namespace (in a session of its own: ``close`` kills the whole group). The receiver notes arrivals on the
    machine's monotonic clock, the same in every namespace and this process's ``time.monotonic()``."""

    def __init__(self, send_in: list[str], receive_in: list[str], to: str) -> None:
        self.receiver = subprocess.Popen([*receive_in, sys.executable, "-c", RECEIVER, str(PROBE_PORT)],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                         start_new_session=True)
        self.sender: subprocess.Popen[bytes] | None = None
        assert self.receiver.stdout is not None
        if self.receiver.stdout.readline().strip() != "ready":
            self.close()
            raise RuntimeError("the receiver did not start")
        self.sender = subprocess.Popen([*send_in, sys.executable, "-c", SENDER, to, str(PROBE_PORT)],
                                       start_new_session=True)

    def _tell(self, cmd: str) -> None:
        assert self.receiver.stdin is not None
        self.receiver.stdin.write(cmd + "\n")
        self.receiver.stdin.flush()

    def arm(self) -> None:
        """Forget the first arrival: the next one counts as first."""
        self._tell("arm")

    def times(self) -> tuple[float, float]:
        """(first arrival since armed, 0.0 if none; last arrival ever, 0.0 if none)."""
        self._tell("times")
        assert self.receiver.stdout is not None
        first, last = self.receiver.stdout.readline().split()
        return float(first), float(last)

    def _alive(self) -> None:
        if self.sender is None or self.sender.poll() is not None or self.receiver.poll() is not None:
            raise RuntimeError("the sender or the receiver is gone")

    def first(self, timeout: float) -> float:
        """The first arrival since armed, once there is one."""
        deadline = time.monotonic() + timeout
        while (got := self.times()[0]) == 0.0:
            self._alive()
            if time.monotonic() > deadline:
                raise TimeoutError("no datagram arrived: the rule was never enforced")
            time.sleep(0.002)
        return got

    def last(self, quiet: float, timeout: float) -> float:
        """The last arrival, once none came for ``quiet`` seconds."""
        deadline = time.monotonic() + timeout
        while time.monotonic() - (got := self.times()[1]) < quiet:
            self._alive()
            if time.monotonic() > deadline:
                raise TimeoutError("datagrams still arrive: the rule was never removed")
            time.sleep(0.01)
        return got

    def close(self) -> None:
        for proc in (self.sender, self.receiver):
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            if proc is not None:
                proc.wait()
        if self.receiver.stdin is not None:
            self.receiver.stdin.close()
        if self.receiver.stdout is not None:
            self.receiver.stdout.close()


def rule_changes(n: int, changes: int, tmp: Path, a_ns: str, b_ns: str,
                 extra: dict[PortId, PortSpec]) -> dict[str, object]:
    from neutrino.agent.loop import AgentSettings
    from neutrino.agent.pipeline import Pipeline
    settings = AgentSettings(host="h1", tunnel_ip="198.18.0.1", interface_mappings={}, state_dir=tmp / "agent",
                             owner="bench", run_dir=tmp / "run")
    pipe = Pipeline(settings)
    closed_snap, open_snap = snapshot(n, extra=extra), snapshot(n, probe=True, extra=extra)  # as the agent gets them
    start = time.monotonic()
    first = pipe.reconcile(closed_snap)
    full_pass = time.monotonic() - start
    assert not first.errors, first.errors
    idle = []
    for _ in range(5):
        start = time.monotonic()
        pipe.reconcile(closed_snap)
        idle.append(time.monotonic() - start)
    probe = Probe(["ip", "netns", "exec", a_ns], ["ip", "netns", "exec", b_ns], str(ip(1)))
    opened, closed, passes = [], [], []
    try:
        time.sleep(0.3)
        for _ in range(changes):
            probe.arm()
            start = time.monotonic()
            result = pipe.reconcile(open_snap)
            passes.append(time.monotonic() - start)
            assert result.changes == 1 and not result.errors, result
            opened.append(probe.first(5) - start)
            start = time.monotonic()
            pipe.reconcile(closed_snap)
            passes.append(time.monotonic() - start)
            time.sleep(0.25)
            last = probe.times()[1]
            assert time.monotonic() - last > 0.2, "datagrams still arrive without the rule"
            closed.append(max(0.0, last - start))
    finally:
        probe.close()
    return {"full_pass": full_pass, "idle_pass": statistics.median(idle),
            "open_p50": pct(opened, 0.5), "open_p99": pct(opened, 0.99), "close_p50": pct(closed, 0.5),
            "close_p99": pct(closed, 0.99), "pass_p50": pct(passes, 0.5), "changes": len(opened)}


def iperf(client: str, server: str, addr: str, seconds: int) -> float:
    srv = subprocess.Popen(["ip", "netns", "exec", server, "iperf3", "-s", "-1"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            if ":5201" in sh("ip", "netns", "exec", server, "ss", "-tln").stdout:
                break
            time.sleep(0.05)
        done = sh("ip", "netns", "exec", client, "iperf3", "-c", addr, "-t", str(seconds), "-J")
        return float(json.loads(done.stdout)["end"]["sum_received"]["bits_per_second"])
    finally:
        srv.kill()
        srv.wait()


def inside(args: argparse.Namespace) -> None:
    tmp = Path(args.tmp)
    only = set(args.only.split(","))
    out: dict[str, object] = {}
    if "program" in only:
        out["program"] = program_from_scratch(args.ports, args.rounds, tmp)
    if only & {"rules", "tcp"}:
        out.update(with_instances(args, only, tmp))
    print(json.dumps(out))


def with_instances(args: argparse.Namespace, only: set[str], tmp: Path) -> dict[str, object]:
    from neutrino.agent.loop import AgentSettings
    from neutrino.agent.pipeline import Pipeline, cleanup
    names = json.loads(args.instances)
    out: dict[str, object] = {}
    # Four real instances: A (port 0) and B (port 1) filtered, U and V without port security.
    extra = {port_id(10**6 + k): PortSpec(port_id(10**6 + k), NET, mac(10**6 + k), (FixedIp(SUB, ip(10**6 + k)),),
                                          "compute:bench", f"u{k}", H) for k in range(2)}
    for ns, i in ((names["a"], 0), (names["b"], 1), (names["u"], 10**6), (names["v"], 10**6 + 1)):
        sh("ip", "link", "add", f"tap{port_id(i)[:11]}", "type", "veth", "peer", "name", "eth0", "address", mac(i),
           "netns", ns)
        sh("ip", "link", "set", f"tap{port_id(i)[:11]}", "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip(i)}/16", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
    settings = AgentSettings(host="h1", tunnel_ip="198.18.0.1", interface_mappings={}, state_dir=tmp / "agent",
                             owner="bench", run_dir=tmp / "run")
    try:
        if "rules" in only:
            out["rules"] = rule_changes(args.ports, args.changes, tmp, names["a"], names["b"], extra)
        if "tcp" in only:
            # Throughput: A -> B (filtered; B's group allows nothing on 5201 yet: add it), U -> V (unfiltered).
            snap = snapshot(args.ports, extra=extra)
            b_group = snap.security_groups[group_id(1)]
            opened = dataclasses.replace(b_group, rules=(*b_group.rules, SecurityGroupRuleSpec(
                "iperf", Direction.INGRESS, 4, protocol=6, port_min=5201, port_max=5201)))
            Pipeline(settings).reconcile(dataclasses.replace(snap, security_groups={**snap.security_groups,
                                                                                    group_id(1): opened}))
            filtered, unfiltered = [], []
            for _ in range(args.rounds):
                filtered.append(iperf(names["a"], names["b"], str(ip(1)), args.seconds))
                unfiltered.append(iperf(names["u"], names["v"], str(ip(10**6 + 1)), args.seconds))
            out["tcp"] = {"filtered": statistics.median(filtered), "unfiltered": statistics.median(unfiltered)}
    finally:
        cleanup(settings)
    return out


# -- 4. end to end: the API, the change feed, the agent, in a throwaway host ---------------------------------

E2E_CIDR = "10.77.0.0/16"
AGENT_PASS = re.compile(r"pass \d+ at revision \d+: (\d+) changes in (\d+) ms")


def agent_pass(log: Path, offset: int) -> re.Match[str] | None:
    """The first pass that changed something logged after byte ``offset`` of the agent's log (passes that
    change something are logged at INFO)."""
    for found in AGENT_PASS.finditer(log.read_bytes()[offset:].decode(errors="replace")):
        if int(found.group(1)):
            return found
    return None


def e2e_setup(lab: Lab, n: int) -> str:
    """The network, the groups, ``n`` ports bound to h1 with their taps, instances sga (default group) and
    sgb (guarded), every port ACTIVE; the id of the group ``guarded``."""
    from bench.common import ok, progress, wait_for
    from bench.l3 import NEUTRINO
    api = lab.api
    net = ok(api.post("/v2.0/networks", json={"network": {"name": "sg"}}))["network"]
    ok(api.post("/v2.0/subnets", json={"subnet": {"network_id": net["id"], "ip_version": 4, "cidr": E2E_CIDR}}))
    default = ok(api.get("/v2.0/security-groups", params={"name": "default", "project_id": net["project_id"]}))[
        "security_groups"][0]["id"]  # listing makes the project's default group
    guarded = ok(api.post("/v2.0/security-groups", json={"security_group": {"name": "guarded"}}))[
        "security_group"]["id"]
    for rule in ({"protocol": "tcp", "port_range_min": 22, "port_range_max": 22},
                 {"protocol": "tcp", "port_range_min": 80, "port_range_max": 80},
                 {"protocol": "tcp", "port_range_min": 443, "port_range_max": 443},
                 {"protocol": "icmp"},
                 {"protocol": "tcp", "port_range_min": 5432, "port_range_max": 5432, "remote_group_id": default}):
        ok(api.post("/v2.0/security-group-rules", json={"security_group_rule": {
            "security_group_id": guarded, "direction": "ingress", "ethertype": "IPv4", **rule}}))
    progress(f"{n} ports bound to the host, half in default, half in guarded, their taps made")
    taps = []
    for first in range(0, n, 100):
        body = [{"network_id": net["id"], "name": f"x{i}", "device_owner": "compute:bench", "binding:host_id": "h1",
                 "security_groups": [(default, guarded)[i % 2]]} for i in range(first, min(n, first + 100))]
        taps += [f"link add tap{p['id'][:11]} type veth peer name v{p['id'][:11]}\n"
                 for p in ok(api.post("/v2.0/ports", json={"ports": body}))["ports"]]
    if taps:  # as a hypervisor would: the VM's NIC appears, the agent plugs it
        (lab.tmp / "taps.batch").write_text("".join(taps))
        done = lab.host.run(["ip", "-batch", str(lab.tmp / "taps.batch")], timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"taps: {done.stderr}")

    def active() -> bool:
        found = ok(api.get("/v2.0/ports", params={"device_owner": "compute:bench", "status": "ACTIVE",
                                                  "fields": "id"}))["ports"]
        return len(found) >= n

    wait_for(f"the {n} bound ports ACTIVE", active, 300, 0.5)
    progress("lab instances sga (default group) and sgb (guarded)")
    for name, groups in (("sga", []), ("sgb", ["--security-group", guarded])):
        done = lab.host.run([NEUTRINO, "instance", "create", "--network", net["id"], *groups, name], env=lab.env,
                            timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"instance create {name}: {done.stdout}{done.stderr}")
    return str(guarded)


def pass_after(lab: Lab, offset: int) -> float:
    """The own time (ms) of the agent's first pass that changed something after byte ``offset`` of its log."""
    from bench.common import wait_for
    found = wait_for("the agent's pass for the change", lambda: agent_pass(lab.log, offset), 10, 0.01)
    return float(found.group(2))


def e2e_changes(lab: Lab, probe: Probe, guarded: str, n: int) -> dict[str, list[float]]:
    """``n`` times: POST the rule letting A's datagrams into B, DELETE it; seconds, each."""
    from bench.common import ok, progress
    rule = {"security_group_id": guarded, "direction": "ingress", "ethertype": "IPv4", "protocol": "udp",
            "port_range_min": PROBE_PORT, "port_range_max": PROBE_PORT}
    got: dict[str, list[float]] = {k: [] for k in ("opened", "closed", "posts", "deletes", "passes")}
    for i in range(n):
        probe.arm()
        offset = lab.log.stat().st_size
        start = time.monotonic()
        made = ok(lab.api.post("/v2.0/security-group-rules", json={"security_group_rule": rule}))
        got["posts"].append(time.monotonic() - start)
        got["opened"].append(probe.first(10) - start)
        got["passes"].append(pass_after(lab, offset) / 1000)
        offset = lab.log.stat().st_size
        start = time.monotonic()
        ok(lab.api.delete(f"/v2.0/security-group-rules/{made['security_group_rule']['id']}"))
        got["deletes"].append(time.monotonic() - start)
        got["closed"].append(max(0.0, probe.last(0.5, 10) - start))
        got["passes"].append(pass_after(lab, offset) / 1000)
        if (i + 1) % 10 == 0:
            progress(f"{i + 1}/{n}: POST -> open p50 {pct(got['opened'], 0.5) * 1000:.0f} ms, "
                     f"DELETE -> closed p50 {pct(got['closed'], 0.5) * 1000:.0f} ms")
    return got


def end_to_end(args: argparse.Namespace) -> list[tuple[str, str]]:
    from bench.l3 import open_lab
    with open_lab("secgroups") as lab:
        return e2e_measure(lab, args)


def e2e_measure(lab: Lab, args: argparse.Namespace) -> list[tuple[str, str]]:
    from bench.common import ok, progress, wait_for
    api = lab.api
    lab.start_agent()
    wait_for("the agents to register", lambda: len(ok(api.get("/v2.0/agents"))["agents"]) >= 3, 30)
    guarded = e2e_setup(lab, args.e2e_ports)
    b_ip = ok(api.get("/v2.0/ports", params={"name": "sgb"}))["ports"][0]["fixed_ips"][0]["ip_address"]
    enter = [*lab.host.enter(), "ip", "netns", "exec"]
    probe = Probe([*enter, "lab-sga"], [*enter, "lab-sgb"], b_ip)
    try:
        probe.arm()
        time.sleep(0.5)
        if probe.times()[1]:
            raise RuntimeError("datagrams reach B before any rule lets them in")
        progress(f"{args.e2e} rules POSTed and DELETEd while A sends to B every 0.5 ms")
        got = e2e_changes(lab, probe, guarded, args.e2e)
    finally:
        probe.close()
    ports = len(ok(api.get("/v2.0/ports", params={"binding:host_id": "h1", "status": "ACTIVE",
                                                  "fields": "id"}))["ports"])
    ruleset = lab.host.run(["nft", "list", "ruleset"], timeout=60).stdout
    filtered = len(re.findall(r"^\s*chain port-\S+-ingress \{", ruleset, re.MULTILINE))

    def spread(values: list[float]) -> str:
        return " / ".join(f"{pct(values, q) * 1000:.0f}" for q in (0.5, 0.99)) + \
            f" ms (max {max(values) * 1000:.0f})"

    return [
        (f"e2e, {args.e2e} changes: rule POST -> first datagram at B, p50 / p99", spread(got["opened"])),
        ("  of which the POST itself, p50 / p99", spread(got["posts"])),
        ("e2e: rule DELETE -> last datagram at B, p50 / p99", spread(got["closed"])),
        ("  of which the DELETE itself, p50 / p99", spread(got["deletes"])),
        ("  the agent's passes for these changes (own time), p50 / p99", spread(got["passes"])),
        ("  host: ports bound and ACTIVE / with a filter chain in its table",
         f"{ports} / {filtered} ({args.e2e_ports} bound through the API, 2 instances, DHCP's unfiltered)"),
    ]


# -- outside: namespaces, and the plain bridge ---------------------------------------------------------------

def plain_bridge(prefix: str, seconds: int, rounds: int) -> float:
    """TCP through a bridge in a namespace where nothing of neutrino's is (no table, no conntrack)."""
    host, c, s = f"{prefix}p", f"{prefix}pc", f"{prefix}ps"
    for ns in (host, c, s):
        sh("ip", "netns", "add", ns)
    try:
        sh("ip", "-n", host, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", host, "link", "set", "br0", "up")
        for k, ns in enumerate((c, s)):
            sh("ip", "-n", host, "link", "add", f"v{k}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh("ip", "-n", host, "link", "set", f"v{k}", "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"10.91.0.{k + 1}/24", "dev", "eth0")
            sh("ip", "-n", ns, "link", "set", "eth0", "up")
        return statistics.median(iperf(c, s, "10.91.0.2", seconds) for _ in range(rounds))
    finally:
        for ns in (host, c, s):
            sh("ip", "netns", "del", ns, check=False)


PARTS = ("program", "rules", "tcp", "e2e")


def in_namespaces(args: argparse.Namespace) -> dict[str, Any]:
    """Parts 1-3: their own host namespace and instances, the measuring done in a child inside it."""
    prefix = f"ntsgb{os.getpid()}"
    names = {k: f"{prefix}{k}" for k in "abuv"}
    made = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for ns in [prefix + "h", *names.values()]:
                sh("ip", "netns", "add", ns)
                made.append(ns)
                sh("ip", "-n", ns, "link", "set", "lo", "up")
            env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'src'}"}
            done = subprocess.run(["ip", "netns", "exec", prefix + "h", sys.executable, __file__, "--inside",
                                   "--tmp", tmp, "--instances", json.dumps(names), "--ports", str(args.ports),
                                   "--changes", str(args.changes), "--seconds", str(args.seconds),
                                   "--rounds", str(args.rounds), "--only", ",".join(sorted(args.only))],
                                  capture_output=True, text=True, env=env, check=False)
            if done.returncode != 0:
                sys.exit(done.stderr[-4000:])
            out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        for ns in reversed(made):
            sh("ip", "netns", "del", ns, check=False)
    if "tcp" in args.only:
        out["plain"] = plain_bridge(prefix, args.seconds, args.rounds)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ports", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=40)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--e2e", type=int, default=40, metavar="N",
                        help="4: rule POSTs (and DELETEs) timed end to end (default %(default)s; 0: skip part 4)")
    parser.add_argument("--e2e-ports", type=int, default=200, metavar="N",
                        help="4: filtered ports bound to the host through the API besides A and B "
                             "(default %(default)s)")
    parser.add_argument("--only", default=",".join(PARTS),
                        help="comma-separated parts to run, of %(default)s (1-4 above)")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    parser.add_argument("--instances", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        inside(args)
        return
    args.only = set(args.only.split(","))
    if args.only - set(PARTS):
        parser.error(f"--only: unknown part(s) {','.join(sorted(args.only - set(PARTS)))}")
    if args.e2e <= 0:
        args.only.discard("e2e")
    if os.geteuid() != 0:
        sys.exit("needs root (namespaces, nft)")
    started, load_before = time.monotonic(), os.getloadavg()
    try:
        out = in_namespaces(args) if args.only & {"program", "rules", "tcp"} else {}
        e2e_rows = end_to_end(args) if "e2e" in args.only else []
    except KeyboardInterrupt:
        sys.exit("interrupted; cleaned up")
    ms = 1000
    rows = []
    if "program" in out:
        p = out["program"]
        rows += [("program from scratch (compile + nft plane)",
                  f"{p['ours'] * ms:.0f} ms (compile {p['compile'] * ms:.0f} ms)"),
                 ("the same tables by nft -f (raw)", f"{p['raw'] * ms:.0f} ms, ratio {p['ours'] / p['raw']:.2f}x")]
    if "rules" in out:
        r = out["rules"]
        rows += [("first pipeline pass / idle pass", f"{r['full_pass'] * ms:.0f} ms / {r['idle_pass'] * ms:.1f} ms"),
                 ("rule added -> enforced, p50 / p99",
                  f"{r['open_p50'] * ms:.1f} ms / {r['open_p99'] * ms:.1f} ms "
                  f"({r['changes']} changes; whole pass p50 {r['pass_p50'] * ms:.0f} ms)"),
                 ("rule removed -> enforced, p50 / p99",
                  f"{r['close_p50'] * ms:.1f} ms / {r['close_p99'] * ms:.1f} ms")]
    if "tcp" in out:
        t, plain = out["tcp"], out["plain"]
        rows += [("TCP filtered / unfiltered (same bridge)",
                  f"{t['filtered'] / 1e9:.2f} / {t['unfiltered'] / 1e9:.2f} Gbit/s, "
                  f"ratio {t['filtered'] / t['unfiltered']:.0%}"),
                 ("TCP plain bridge, no neutrino table",
                  f"{plain / 1e9:.2f} Gbit/s, filtered/plain {t['filtered'] / plain:.0%}")]
    rows += e2e_rows
    load = " / ".join(f"{v:.1f}" for v in load_before), " / ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"security groups bench ({os.cpu_count()} cores, {time.monotonic() - started:.0f} s; load average "
          f"at the start {load[0]}, at the end {load[1]})")
    if "program" in out:
        p = out["program"]
        print(f"security groups: {args.ports} filtered ports, 10 rules each, a remote group of {args.ports} "
              f"members ({p['rules']} rules, {p['elements']} set elements, {p['script_bytes'] / 1e6:.1f} MB of "
              "nft script)")
    if e2e_rows:
        print(f"end to end (4.): a server on SQLite, an agent in a throwaway host, {args.e2e_ports} + 2 filtered "
              "ports on it")
    width = max((len(label) for label, _ in rows), default=0)
    for label, value in rows:
        print(f"  {label:<{width}} {value}")


if __name__ == "__main__":
    main()
