"""VXLAN FDB from port bindings on the real kernel (compile/l2.vxlan_forwarding): in two throwaway hosts
with real agents, binding a port to a host puts that host's tunnel endpoint in the other host's flood
entries (00:00:00:00:00:00) and the port's MACs (its own, an address pair's) as unicast entries towards
it; unbinding and deleting take them away again, and a host left without ports on the network is flooded
to no more."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.integration.conftest import Agent, Lab

pytestmark = pytest.mark.xdist_group(name="kernel")
FLOOD = "00:00:00:00:00:00"


def fdb(agent: Agent, vni: int) -> set[tuple[str, str]] | None:
    """(mac, dst) static entries of vxlan-<vni> in the host; None when the device is not there."""
    done = agent.host.run(["bridge", "fdb", "show", "dev", f"vxlan-{vni}"])
    if done.returncode != 0:
        return None
    out = set()
    for line in done.stdout.splitlines():
        words = line.split()
        if "dst" in words and "permanent" in words:
            out.add((words[0], words[words.index("dst") + 1]))
    return out


def tunnel(agent: Agent) -> str:
    return agent.env["NEUTRINO_AGENT__LOCAL_IP"]


def test_fdb_entries_follow_port_bindings(lab: Lab) -> None:
    h1, h2 = lab.agents["h1"], lab.agents["h2"]
    net, _ = lab.network(f"l2pop{uuid.uuid4().hex[:5]}", "10.71.0.0/24", dhcp=False)
    vni = int(lab.call("GET", f"/v2.0/networks/{net['id']}")["network"]["provider:segmentation_id"])

    def port(host: str, **extra: Any) -> dict[str, Any]:
        body = {"network_id": net["id"], "binding:host_id": host, "device_owner": "compute:lab", **extra}
        return dict(lab.call("POST", "/v2.0/ports", 201, json={"port": body})["port"])

    def has(agent: Agent, want: set[tuple[str, str]], gone: frozenset[tuple[str, str]] = frozenset()) -> bool:
        found = fdb(agent, vni)
        return found is not None and want <= found and not (gone & found)

    p1 = port("h1")
    lab.wait("vxlan device on h1", lambda: fdb(h1, vni) is not None)
    assert fdb(h1, vni) == set(), "alone on the network: nothing to flood to"
    assert fdb(h2, vni) is None, "h2 has no port on the network: no device"

    vip = "fa:16:3e:7f:00:01"
    p2 = port("h2", allowed_address_pairs=[{"ip_address": "10.71.0.200", "mac_address": vip}])
    to_h2 = {(FLOOD, tunnel(h2)), (p2["mac_address"], tunnel(h2)), (vip, tunnel(h2))}
    lab.wait("h1 forwarding to h2", lambda: has(h1, to_h2), timeout=10)
    lab.wait("h2 forwarding to h1", lambda: has(h2, {(FLOOD, tunnel(h1)), (p1["mac_address"], tunnel(h1))}),
             timeout=10)
    assert fdb(h1, vni) == to_h2, "exactly the flood entry and the remote MACs"

    p3 = port("h2")
    lab.wait("a second port of h2", lambda: has(h1, to_h2 | {(p3["mac_address"], tunnel(h2))}), timeout=10)

    lab.call("PUT", f"/v2.0/ports/{p2['id']}", 200, json={"port": {"binding:host_id": ""}})  # unbound
    lab.wait("unbound port's MACs gone from h1", lambda: has(
        h1, {(FLOOD, tunnel(h2)), (p3["mac_address"], tunnel(h2))},
        gone=frozenset({(p2["mac_address"], tunnel(h2)), (vip, tunnel(h2))})), timeout=10)

    lab.call("DELETE", f"/v2.0/ports/{p3['id']}", 204)  # h2's last port on the network
    lab.wait("h2 flooded to no more", lambda: fdb(h1, vni) == set(), timeout=10)
    lab.wait("h2's device gone", lambda: fdb(h2, vni) is None, timeout=10)

    for p in (p1, p2):
        lab.call("DELETE", f"/v2.0/ports/{p['id']}", 204)
    lab.call("DELETE", f"/v2.0/networks/{net['id']}", 204)
    lab.wait("h1's device gone", lambda: fdb(h1, vni) is None, timeout=10)
