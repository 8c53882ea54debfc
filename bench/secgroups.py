#!/usr/bin/env python3
"""Security group figures (root needed), in throwaway namespaces, on hand-built snapshots:

1. Program from scratch: 1,000 filtered ports, each in its own group of 10 rules (one naming a shared remote
   group of 1,000 members), on a host with no table yet: compile + the nft plane's sync (one transaction,
   then the listings it keeps), against ``nft -f`` of the same rendered tables (raw) in the same run.
2. Rule change -> enforced on a running port, through the agent's pipeline (the 1,000-port snapshot, two
   real instances among them): A sends a UDP datagram every 0.5 ms to B; B's group gains an ingress rule
   for it (time until the first datagram arrives) and loses it (time until the last one arrived);
   reconcile() starts the clock.
3. TCP throughput (iperf3, one stream) between two filtered instances against two unfiltered ones on the
   same bridge, alternating, and against a plain bridge in a namespace with no table at all.

    .venv/bin/python bench/secgroups.py [--ports 1000] [--changes 40] [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

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
    receiver = subprocess.Popen(["ip", "netns", "exec", b_ns, sys.executable, "-c", RECEIVER, str(PROBE_PORT)],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    sender = subprocess.Popen(["ip", "netns", "exec", a_ns, sys.executable, "-c", SENDER, str(ip(1)), str(PROBE_PORT)])
    opened, closed, passes = [], [], []
    try:
        assert receiver.stdout is not None and receiver.stdin is not None
        receiver.stdout.readline()

        def ask(cmd: str) -> tuple[float, float]:
            assert receiver.stdin is not None and receiver.stdout is not None
            receiver.stdin.write(cmd + "\n")
            receiver.stdin.flush()
            if cmd == "arm":
                return 0.0, 0.0
            a, b = receiver.stdout.readline().split()
            return float(a), float(b)

        time.sleep(0.3)
        for _ in range(changes):
            ask("arm")
            start = time.monotonic()
            result = pipe.reconcile(open_snap)
            passes.append(time.monotonic() - start)
            assert result.changes == 1 and not result.errors, result
            deadline = time.monotonic() + 5
            while (got := ask("first"))[0] == 0.0:
                if time.monotonic() > deadline:
                    raise TimeoutError("the rule was never enforced")
                time.sleep(0.002)
            opened.append(got[0] - start)
            start = time.monotonic()
            pipe.reconcile(closed_snap)
            passes.append(time.monotonic() - start)
            time.sleep(0.25)
            last = ask("last")[1]
            assert time.monotonic() - last > 0.2, "datagrams still arrive without the rule"
            closed.append(max(0.0, last - start))
    finally:
        sender.kill()
        sender.wait()
        if receiver.stdin is not None:
            receiver.stdin.close()
        receiver.kill()
        receiver.wait()
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
    from neutrino.agent.loop import AgentSettings
    from neutrino.agent.pipeline import Pipeline, cleanup
    tmp = Path(args.tmp)
    names = json.loads(args.instances)
    out: dict[str, object] = {"program": program_from_scratch(args.ports, args.rounds, tmp)}
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
        out["rules"] = rule_changes(args.ports, args.changes, tmp, names["a"], names["b"], extra)
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
    print(json.dumps(out))


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ports", type=int, default=1000)
    parser.add_argument("--changes", type=int, default=40)
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    parser.add_argument("--instances", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inside:
        inside(args)
        return
    if os.geteuid() != 0:
        sys.exit("needs root (namespaces, nft)")
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
                                   "--rounds", str(args.rounds)], capture_output=True, text=True, env=env,
                                  check=False)
            if done.returncode != 0:
                sys.exit(done.stderr[-4000:])
            out = json.loads(done.stdout.strip().splitlines()[-1])
    finally:
        for ns in reversed(made):
            sh("ip", "netns", "del", ns, check=False)
    plain = plain_bridge(prefix, args.seconds, args.rounds)
    p, r, t = out["program"], out["rules"], out["tcp"]
    ms = 1000
    rows = [
        ("program from scratch (compile + nft plane)", f"{p['ours'] * ms:.0f} ms (compile {p['compile'] * ms:.0f} ms)"),
        ("the same tables by nft -f (raw)", f"{p['raw'] * ms:.0f} ms, ratio {p['ours'] / p['raw']:.2f}x"),
        ("first pipeline pass / idle pass", f"{r['full_pass'] * ms:.0f} ms / {r['idle_pass'] * ms:.1f} ms"),
        ("rule added -> enforced, p50 / p99", f"{r['open_p50'] * ms:.1f} ms / {r['open_p99'] * ms:.1f} ms "
                                              f"({r['changes']} changes; whole pass p50 {r['pass_p50'] * ms:.0f} ms)"),
        ("rule removed -> enforced, p50 / p99", f"{r['close_p50'] * ms:.1f} ms / {r['close_p99'] * ms:.1f} ms"),
        ("TCP filtered / unfiltered (same bridge)", f"{t['filtered'] / 1e9:.2f} / {t['unfiltered'] / 1e9:.2f} Gbit/s, "
                                                    f"ratio {t['filtered'] / t['unfiltered']:.0%}"),
        ("TCP plain bridge, no neutrino table",
         f"{plain / 1e9:.2f} Gbit/s, filtered/plain {t['filtered'] / plain:.0%}"),
    ]
    print(f"security groups: {args.ports} filtered ports, 10 rules each, a remote group of {args.ports} members "
          f"({p['rules']} rules, {p['elements']} set elements, {p['script_bytes'] / 1e6:.1f} MB of nft script)")
    for label, value in rows:
        print(f"  {label:<42} {value}")

if __name__ == "__main__":
    main()
