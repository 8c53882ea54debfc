"""The planes on the real kernel, in a throwaway network namespace (root): two neutrinos' objects side by
side, cleanup of one leaves the other (and a foreign bridge) intact; the nft plane sets, repairs and
sweeps its table."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (namespaces, links, nft)")
ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent('''
    import ipaddress, json, sys, uuid
    from pathlib import Path
    from neutrino.agent.loop import AgentSettings
    from neutrino.agent.pipeline import Pipeline, cleanup
    from neutrino.compile.l2 import compile_host
    from neutrino.dataplane import netlink as nl
    from neutrino.intent.model import (FixedIp, HostName, HostSpec, NetworkId, NetworkSpec, NetworkType, PortId,
                                       PortSpec, Snapshot, SubnetId, SubnetSpec)

    def settings(tmp, owner):
        return AgentSettings(host="h1", tunnel_ip="198.18.0.1", interface_mappings={}, state_dir=Path(tmp) / owner,
                             owner=owner)

    def snap(vni, cidr):
        net, sub, port = NetworkId(str(uuid.uuid4())), SubnetId(str(uuid.uuid4())), PortId(str(uuid.uuid4()))
        n = ipaddress.ip_network(cidr)
        return Snapshot(1, {net: NetworkSpec(net, NetworkType.VXLAN, vni, None, 1450)},
                        {sub: SubnetSpec(sub, net, n, n[1], True)},
                        {port: PortSpec(port, net, "fa:16:3e:00:00:02", (FixedIp(sub, n[2]),), "network:dhcp", "d",
                                        HostName("h1"))}, frozenset({net}),
                        {HostName("h1"): HostSpec(HostName("h1"), ipaddress.ip_address("198.18.0.1"))})

    def links():
        with nl.reader() as r:
            return {l.name: l.alias for l in r.links()}

    tmp, a, b = sys.argv[1], sys.argv[2], sys.argv[3]
    states = {}
    for owner, vni, cidr in ((a, 301, "10.81.0.0/24"), (b, 302, "10.82.0.0/24")):
        s = settings(tmp, owner)
        pipe = Pipeline(s)
        states[owner] = compile_host(snap(vni, cidr), "h1", "198.18.0.1", {})
        result = pipe.run(states[owner])
        assert not result.errors, result.errors
        assert Pipeline(s).run(states[owner]).changes == 0  # a second pass changes nothing
    before = links()
    report = cleanup(settings(tmp, a))
    after = links()
    print(json.dumps({"before": before, "after": after, "errors": report.errors,
                      "namespaces": nl.list_namespaces(),
                      "a_ns": list(states[a].namespaces), "b_ns": list(states[b].namespaces),
                      "b_pids": [r.pid for r in Pipeline(settings(tmp, b)).daemons.observe(states[b]).daemons.values()
                                 if r.pid]}))
    cleanup(settings(tmp, b))
    print(json.dumps({"final": links(), "namespaces": nl.list_namespaces()}))
''')


@pytest.fixture
def netns() -> Iterator[str]:
    ns = f"ntown{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
    try:
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def in_ns(ns: str, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True, check=False,
                          cwd=ROOT)


def test_cleanup_of_one_neutrino_leaves_the_other_intact(netns: str, tmp_path: Path) -> None:
    import json

    in_ns(netns, "ip", "link", "add", "brqforeign-00", "type", "bridge")  # a Linux-bridge agent's, unmarked
    a, b = uuid.uuid4().hex[:12], uuid.uuid4().hex[:12]
    done = in_ns(netns, sys.executable, "-c", SCRIPT, str(tmp_path), a, b)
    assert done.returncode == 0, done.stderr
    first, final = (json.loads(line) for line in done.stdout.splitlines()[-2:])
    mark_a, mark_b = f"neutrino:{a}:agent", f"neutrino:{b}:agent"
    assert {n for n, al in first["before"].items() if al == mark_a} and {n for n, al in first["before"].items()
                                                                          if al == mark_b}
    assert not [n for n, al in first["after"].items() if al == mark_a]            # all of A's links gone
    assert {n: al for n, al in first["before"].items() if al == mark_b} == \
        {n: al for n, al in first["after"].items() if al == mark_b}               # B's untouched
    assert "brqforeign-00" in first["after"] and first["errors"] == []
    assert not set(first["a_ns"]) & set(first["namespaces"]) and set(first["b_ns"]) <= set(first["namespaces"])
    assert first["b_pids"]                                                        # B's dnsmasq still runs
    assert "brqforeign-00" in final["final"] and not set(first["b_ns"]) & set(final["namespaces"])


NFT_SCRIPT = textwrap.dedent('''
    import subprocess, sys
    from neutrino.compile.nft import NftTable
    from neutrino.compile.state import HostState
    from neutrino.dataplane.nft import NftPlane
    owner = sys.argv[1]
    body = ("chain filter_fwd {\\n\\ttype filter hook forward priority 0; policy accept;\\n"
            "\\tct state invalid drop\\n}\\n")
    bridge = NftTable(None, "bridge", "chain f {\\n}\\n")
    want = HostState(nft=(NftTable(None, "inet", body, ("p1",)), bridge))
    p = NftPlane(owner)
    assert p.sync(want).ready == {"p1"}
    assert p.sync(want).changes == 0
    subprocess.run(["nft", "add", "rule", "inet", f"neutrino-{owner}", "filter_fwd", "drop"], check=True)  # drift
    assert p.sync(want).changes == 1
    listing = subprocess.run(["nft", "list", "table", "inet", f"neutrino-{owner}"], capture_output=True,
                             text=True, check=True).stdout
    assert "ct state invalid drop" in listing and listing.count("drop") == 1, listing
    assert NftPlane(owner).sync(HostState()).changes == 2  # a restarted plane sweeps its two tables
    print(subprocess.run(["nft", "list", "tables"], capture_output=True, text=True, check=True).stdout)
''')


def test_nft_plane_sets_repairs_and_sweeps_its_tables(netns: str) -> None:
    in_ns(netns, "nft", "add", "table", "inet", "neutrino-someoneelse")
    done = in_ns(netns, sys.executable, "-c", NFT_SCRIPT, "me0001")
    assert done.returncode == 0, done.stderr
    assert "neutrino-me0001" not in done.stdout and "table inet neutrino-someoneelse" in done.stdout
