"""L2 driver: observe bridges, VXLAN, veths and namespaces; diff against HostState; apply the difference.

Only objects with neutrino's names are ever removed (``brq*``, ``vxlan-*``, ``qdhcp-*``); a correct
object is never recreated, so a restarted agent observes, finds nothing to do, and disturbs nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from neutrino.compile.state import HostState, PortLinkSpec
from neutrino.dataplane import netlink as nl
from neutrino.errors import KernelError
from neutrino.intent.model import PortId

FLOOD_MAC = "00:00:00:00:00:00"
OWNED_NS_PREFIXES = ("qdhcp-",)


@dataclass(frozen=True, slots=True)
class Op:
    """One kernel change. ``action`` names what to do; ``obj`` the link or namespace; ``ns`` where."""
    action: str
    obj: str
    ns: str | None = None
    params: tuple[tuple[str, Any], ...] = ()

    def get(self, key: str) -> Any:
        return dict(self.params)[key]


@dataclass
class NsView:
    links: dict[str, nl.LinkState] = field(default_factory=dict)
    addrs: dict[int, set[Any]] = field(default_factory=dict)


@dataclass
class Observed:
    root: NsView
    fdb: dict[str, set[tuple[str, str]]]
    namespaces: set[str]
    inside: dict[str, NsView]


def _view(reader: nl.Reader) -> NsView:
    view = NsView(links={link.name: link for link in reader.links()})
    for a in reader.addresses():
        view.addrs.setdefault(a.link, set()).add(a.interface)
    return view


def observe(desired: HostState) -> Observed:
    namespaces = set(nl.list_namespaces())
    with nl.reader() as reader:
        root = _view(reader)
        vxlans = {link.index: name for name, link in root.links.items()
                  if link.kind == "vxlan" and name.startswith("vxlan-")}
        fdb = {vxlans[idx]: entries for idx, entries in reader.fdb(set(vxlans)).items()}
    inside = {}
    for ns in sorted({pl.namespace for pl in desired.port_links} & namespaces):
        with nl.reader(ns) as reader:
            inside[ns] = _view(reader)
    return Observed(root, fdb, namespaces, inside)


def _link_ops(obs: NsView, name: str, bridge: str | None, mtu: int, ns: str | None = None,
              up: bool = True) -> list[Op]:
    link = obs.links[name]
    ops = []
    if link.mtu != mtu:
        ops.append(Op("mtu", name, ns, (("mtu", mtu),)))
    if bridge is not None:
        master = obs.links.get(bridge)
        if master is None or link.master != master.index:
            ops.append(Op("master", name, ns, (("bridge", bridge),)))
    if link.up != up:
        ops.append(Op("up" if up else "down", name, ns))
    return ops


def diff(desired: HostState, obs: Observed) -> list[Op]:
    root = obs.root
    ops: list[Op] = [Op("netns-add", ns) for ns in desired.namespaces if ns not in obs.namespaces]
    for br in desired.bridges:
        if br.name not in root.links:
            ops += [Op("bridge-add", br.name, params=(("mtu", br.mtu),)), Op("up", br.name)]
        else:
            ops += _link_ops(root, br.name, None, br.mtu)
    for vx in desired.vxlans:
        cur = root.links.get(vx.name)
        if cur is not None and (cur.vni != vx.vni or cur.local != vx.local):
            ops.append(Op("link-del", vx.name))
            cur = None
        if cur is None:
            ops += [Op("vxlan-add", vx.name, params=(("vni", vx.vni), ("local", vx.local), ("mtu", vx.mtu))),
                    Op("master", vx.name, params=(("bridge", vx.bridge),)), Op("up", vx.name)]
        else:
            ops += _link_ops(root, vx.name, vx.bridge, vx.mtu)
        want = {(FLOOD_MAC, ip) for ip in vx.flood} | set(vx.fdb)
        have = obs.fdb.get(vx.name, set())
        ops += [Op("fdb-add", vx.name, params=(("mac", m), ("dst", d))) for m, d in sorted(want - have)]
        ops += [Op("fdb-del", vx.name, params=(("mac", m), ("dst", d))) for m, d in sorted(have - want)]
    for vl in desired.vlans:
        if vl.name not in root.links:
            ops.append(Op("vlan-add", vl.name, params=(("parent", vl.parent), ("vid", vl.vid), ("mtu", vl.mtu),
                                                       ("bridge", vl.bridge))))
    for br in desired.bridges:  # flat uplinks: a physical interface, enslaved but never created or deleted
        if br.uplink and not br.uplink.startswith("vxlan-") and "." not in br.uplink and br.uplink in root.links:
            ops += _link_ops(root, br.uplink, br.name, root.links[br.uplink].mtu)
    for plug in desired.plugs:
        if plug.device in root.links:
            ops += _link_ops(root, plug.device, plug.bridge, plug.mtu, up=plug.up)
    for pl in desired.port_links:
        ops += _port_link_ops(pl, root, obs.inside.get(pl.namespace))
    ops += _removals(desired, obs)
    return ops


def _port_link_ops(pl: PortLinkSpec, root: NsView, inside: NsView | None) -> list[Op]:
    ops: list[Op] = []
    peer = inside.links.get(pl.peer) if inside else None
    if pl.device not in root.links or peer is None:
        if pl.device in root.links:
            ops.append(Op("link-del", pl.device))
        ops += [Op("veth-add", pl.device, params=(("peer", pl.peer), ("peer_ns", pl.namespace), ("mtu", pl.mtu))),
                Op("master", pl.device, params=(("bridge", pl.bridge),)), Op("up", pl.device),
                Op("mac", pl.peer, pl.namespace, (("mac", pl.mac),)), Op("up", pl.peer, pl.namespace),
                Op("up", "lo", pl.namespace)]
        ops += [Op("addr-add", pl.peer, pl.namespace, (("addr", a),)) for a in pl.addresses]
        return ops
    assert inside is not None
    ops += _link_ops(root, pl.device, pl.bridge, pl.mtu)
    if peer.mac != pl.mac:
        ops.append(Op("mac", pl.peer, pl.namespace, (("mac", pl.mac),)))
    ops += _link_ops(inside, pl.peer, None, pl.mtu, pl.namespace)
    lo = inside.links.get("lo")
    if lo is not None and not lo.up:
        ops.append(Op("up", "lo", pl.namespace))
    have = inside.addrs.get(peer.index, set())
    want = set(pl.addresses)
    ops += [Op("addr-add", pl.peer, pl.namespace, (("addr", a),)) for a in sorted(want - have, key=str)]
    ops += [Op("addr-del", pl.peer, pl.namespace, (("addr", a),)) for a in sorted(have - want, key=str)]
    return ops


def _removals(desired: HostState, obs: Observed) -> list[Op]:
    keep = {b.name for b in desired.bridges} | {v.name for v in desired.vxlans}
    ops = [Op("link-del", name) for name, link in sorted(obs.root.links.items())
           if name not in keep and (name.startswith("brq") or name.startswith("vxlan-"))]
    wanted_ns = set(desired.namespaces)
    ops += [Op("netns-del", ns) for ns in sorted(obs.namespaces)
            if ns.startswith(OWNED_NS_PREFIXES) and ns not in wanted_ns]
    return ops


def apply(ops: Iterable[Op]) -> int:
    """Apply in order; every op is attempted, failures are collected and raised together at the end."""
    done, errors = 0, []
    socks: dict[str | None, Any] = {}
    with contextlib.ExitStack() as stack:
        for op in ops:
            try:
                if op.ns not in socks and op.action not in ("netns-add", "netns-del"):
                    socks[op.ns] = stack.enter_context(nl.socket(op.ns))
                _apply_one(op, socks.get(op.ns))
                done += 1
            except KernelError as exc:
                errors.append(str(exc))
    if errors:
        raise KernelError("; ".join(errors))
    return done


def _apply_one(op: Op, sock: Any) -> None:
    a, name, ns = op.action, op.obj, op.ns
    if a == "netns-add":
        nl.create_namespace(name)
    elif a == "netns-del":
        nl.remove_namespace(name)
    elif a == "bridge-add":
        nl.add_bridge(sock, name, op.get("mtu"), ns)
    elif a == "vxlan-add":
        nl.add_vxlan(sock, name, op.get("vni"), op.get("local"), None, op.get("mtu"), ns)
    elif a == "vlan-add":
        raise KernelError("802.1Q VLAN devices are not available in this kernel", obj=name, namespace=ns or "")
    elif a == "veth-add":
        nl.add_veth(sock, name, op.get("peer"), op.get("peer_ns"), op.get("mtu"), ns)
    elif a == "link-del":
        nl.delete_link(sock, name, ns)
    elif a == "master":
        nl.set_link(sock, name, ns, master=nl.index(sock, op.get("bridge")))
    elif a == "mtu":
        nl.set_link(sock, name, ns, mtu=op.get("mtu"))
    elif a in ("up", "down"):
        nl.set_link(sock, name, ns, state=a)
    elif a == "mac":
        nl.set_link(sock, name, ns, address=op.get("mac"))
    elif a in ("addr-add", "addr-del"):
        idx = nl.index(sock, name)
        if idx is None:
            raise KernelError("no such link", obj=name, namespace=ns or "")
        (nl.add_address if a == "addr-add" else nl.delete_address)(sock, idx, op.get("addr"), name, ns)
    elif a in ("fdb-add", "fdb-del"):
        idx = nl.index(sock, name)
        if idx is not None:
            nl.fdb(sock, "append" if a == "fdb-add" else "del", idx, op.get("mac"), op.get("dst"), name, ns)
    else:
        raise KernelError(f"unknown operation {a}", obj=name)


def wired(desired: HostState, obs: Observed) -> set[PortId]:
    """Ports whose device is in place and enslaved to the right bridge (they may be reported ACTIVE)."""
    out = set()
    for plug in desired.plugs:
        link, br = obs.root.links.get(plug.device), obs.root.links.get(plug.bridge)
        if plug.up and link is not None and br is not None and link.master == br.index and link.up:
            out.add(plug.port_id)
    for pl in desired.port_links:
        link, br = obs.root.links.get(pl.device), obs.root.links.get(pl.bridge)
        if link is not None and br is not None and link.master == br.index and pl.namespace in obs.inside:
            out.add(pl.port_id)
    return out

