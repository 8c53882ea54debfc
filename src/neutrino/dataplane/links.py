"""The link plane: namespaces, bridges, VXLAN, veths, addresses and FDB entries. Observe, diff against
HostState, apply the difference as typed operations.

Ownership (dataplane/ownership.py): every link this plane makes carries this neutrino's mark in its
ifalias, every namespace it makes a record in the state directory, and only what carries this owner's
mark is ever swept. A desired object found unmarked (made by an older neutrino) is adopted by marking it;
one marked by another neutrino is refused, never touched. A correct object is never recreated, so a
restarted agent observes, finds nothing to do, and disturbs nothing.
"""

from __future__ import annotations

import contextlib
import queue
import socket as stdsocket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from neutrino.compile.state import HostState, Interface, PortLinkSpec
from neutrino.dataplane import netlink as nl
from neutrino.dataplane import ownership as own
from neutrino.dataplane.plane import Made, PlaneResult
from neutrino.dataplane.sysctls import ProcSys
from neutrino.errors import KernelError
from neutrino.intent.model import PortId

NO_DAD = "net.ipv6.conf.default.accept_dad"  # devices moved into a namespace of ours: no DAD

FLOOD_MAC = "00:00:00:00:00:00"


# -- typed operations (``ns`` None: the agent's own namespace) ----------------------------------------------
@dataclass(frozen=True, slots=True)
class NetnsAdd:
    name: str


@dataclass(frozen=True, slots=True)
class NetnsDel:
    name: str


@dataclass(frozen=True, slots=True)
class NetnsAdopt:
    """Record a desired namespace found without a record as this neutrino's (no kernel change)."""
    name: str


@dataclass(frozen=True, slots=True)
class BridgeAdd:
    name: str
    mtu: int


@dataclass(frozen=True, slots=True)
class VxlanAdd:
    name: str
    vni: int
    local: str
    mtu: int


@dataclass(frozen=True, slots=True)
class VlanAdd:
    name: str
    parent: str
    vid: int
    mtu: int


@dataclass(frozen=True, slots=True)
class VethAdd:
    name: str
    peer: str
    peer_ns: str
    mtu: int


@dataclass(frozen=True, slots=True)
class LinkDel:
    name: str
    ns: str | None = None


@dataclass(frozen=True, slots=True)
class SetMaster:
    name: str
    bridge: str
    ns: str | None = None


@dataclass(frozen=True, slots=True)
class SetMtu:
    name: str
    mtu: int
    ns: str | None = None


@dataclass(frozen=True, slots=True)
class SetUp:
    name: str
    up: bool = True
    ns: str | None = None


@dataclass(frozen=True, slots=True)
class SetMac:
    name: str
    mac: str
    ns: str | None = None


@dataclass(frozen=True, slots=True)
class SetAlias:
    name: str
    alias: str
    ns: str | None = None


@dataclass(frozen=True, slots=True)
class AddrAdd:
    link: str
    addr: Interface
    ns: str | None = None


@dataclass(frozen=True, slots=True)
class AddrDel:
    link: str
    addr: Interface
    ns: str | None = None


@dataclass(frozen=True, slots=True)
class FdbAdd:
    link: str
    mac: str
    dst: str


@dataclass(frozen=True, slots=True)
class FdbDel:
    link: str
    mac: str
    dst: str


@dataclass(frozen=True, slots=True)
class Refuse:
    """A desired link whose name another neutrino holds: not touched, reported as an error."""
    name: str
    owner: str
    ns: str | None = None


Op = (NetnsAdd | NetnsDel | NetnsAdopt | BridgeAdd | VxlanAdd | VlanAdd | VethAdd | LinkDel | SetMaster | SetMtu
      | SetUp | SetMac | SetAlias | AddrAdd | AddrDel | FdbAdd | FdbDel | Refuse)


def op_ns(op: Op) -> str | None:
    return getattr(op, "ns", None)


# -- observation ------------------------------------------------------------------------------------------
@dataclass
class NsView:
    links: dict[str, nl.LinkState] = field(default_factory=dict)
    addrs: dict[int, set[Interface]] = field(default_factory=dict)
    fdb: dict[str, set[tuple[str, str]]] = field(default_factory=dict)  # vxlan-* name -> static entries


@dataclass
class Observed:
    root: NsView
    namespaces: set[str]
    inside: dict[str, NsView]
    records: set[str]  # namespaces this neutrino made


class Kernel(Protocol):
    """What the link plane reads and changes (the real one: netlink; a fake one in unit tests)."""

    def namespaces(self) -> set[str]: ...

    def view(self, ns: str | None, fdb: bool = False) -> NsView:
        """Links and addresses of ``ns``; with ``fdb``, static FDB entries of its ``vxlan-*`` links."""
        ...

    def apply(self, ops: Sequence[Op]) -> list[str]:
        """Apply in order, attempting every op; the errors, if any."""
        ...


class NetlinkKernel:
    def namespaces(self) -> set[str]:
        return set(nl.list_namespaces())

    def view(self, ns: str | None, fdb: bool = False) -> NsView:
        with nl.reader(ns) as reader:
            view = NsView(links={link.name: link for link in reader.links()})
            for a in reader.addresses():
                view.addrs.setdefault(a.link, set()).add(a.interface)
            if fdb:
                vxlans = {link.index: name for name, link in view.links.items()
                          if link.kind == "vxlan" and name.startswith("vxlan-")}
                view.fdb = {vxlans[i]: entries for i, entries in reader.fdb(set(vxlans)).items()}
        return view

    def apply(self, ops: Sequence[Op]) -> list[str]:
        errors = []
        with self._sockets() as sock:
            for op in ops:
                try:
                    _apply_one(op, sock)
                except KernelError as exc:
                    errors.append(str(exc))
        return errors

    @staticmethod
    @contextlib.contextmanager
    def _sockets() -> Iterator[Any]:
        socks: dict[str | None, Any] = {}
        with contextlib.ExitStack() as stack:
            def get(ns: str | None) -> Any:
                if ns not in socks:
                    socks[ns] = stack.enter_context(nl.socket(ns))
                return socks[ns]
            yield get


def _apply_one(op: Op, sock: Any) -> None:
    ns = op_ns(op)
    match op:
        case NetnsAdd(name):
            nl.create_namespace(name)
            # Our namespaces' addresses come from IPAM: no duplicate address detection, so a router's
            # link-local address is usable the moment its qr- device is up (while tentative, its RA
            # daemon would answer from a global address, which hosts must ignore).
            ProcSys().write(name, NO_DAD, "0")
        case NetnsDel(name):
            nl.remove_namespace(name)
        case BridgeAdd(name, mtu):
            nl.add_bridge(sock(None), name, mtu)
        case VxlanAdd(name, vni, local, mtu):
            nl.add_vxlan(sock(None), name, vni, local, None, mtu)
        case VlanAdd(name):
            raise KernelError("802.1Q VLAN devices are not available in this kernel", obj=name)
        case VethAdd(name, peer, peer_ns, mtu):
            nl.add_veth(sock(None), name, peer, peer_ns, mtu)
        case LinkDel(name):
            nl.delete_link(sock(ns), name, ns)
        case SetMaster(name, bridge):
            nl.set_link(sock(ns), name, ns, master=nl.index(sock(ns), bridge))
        case SetMtu(name, mtu):
            nl.set_link(sock(ns), name, ns, mtu=mtu)
        case SetUp(name, up):
            nl.set_link(sock(ns), name, ns, state="up" if up else "down")
        case SetMac(name, mac):
            nl.set_link(sock(ns), name, ns, address=mac)
        case SetAlias(name, alias):
            nl.set_link(sock(ns), name, ns, ifalias=alias)
        case AddrAdd(link, addr) | AddrDel(link, addr):
            idx = nl.index(sock(ns), link)
            if idx is None:
                raise KernelError("no such link", obj=link, namespace=ns or "")
            (nl.add_address if isinstance(op, AddrAdd) else nl.delete_address)(sock(ns), idx, addr, link, ns)
            if isinstance(op, AddrAdd) and ns is not None and link.startswith(GARP_PREFIXES) and addr.version == 4:
                gratuitous_arp(ns, link, addr.ip.packed)
        case FdbAdd(link, mac, dst) | FdbDel(link, mac, dst):
            idx = nl.index(sock(None), link)
            if idx is not None:
                nl.fdb(sock(None), "append" if isinstance(op, FdbAdd) else "del", idx, mac, dst, link)
        case Refuse(name, owner):
            raise KernelError(f"the name is held by another neutrino (owner {owner}); left alone", obj=name,
                              namespace=ns or "")
        case NetnsAdopt():
            pass


GARP_PREFIXES = ("qg-",)  # a router's gateway: its neighbours learn a new (floating) address at once
ETH_P_ARP = 0x0806


def gratuitous_arp(ns: str, link: str, ip: bytes) -> None:
    """Announce ``ip`` on ``link`` (an ARP request for itself, broadcast), as ``arping -U`` does: neighbours
    that knew the address elsewhere (a floating IP moved between routers) update at once. Best effort: a
    link without carrier yet announces nothing (arp_notify covers it coming up). The socket is closed off
    this thread (``CLOSER``)."""
    try:
        sock = nl._socket_in(ns, lambda: stdsocket.socket(stdsocket.AF_PACKET, stdsocket.SOCK_RAW, 0))
    except OSError:
        return
    try:
        sock.bind((link, 0))  # protocol 0: the socket sends only, it never hooks into the receive path
        mac = sock.getsockname()[4]
        arp = b"\x00\x01\x08\x00\x06\x04\x00\x01" + mac + ip + b"\x00" * 6 + ip
        sock.sendto(b"\xff" * 6 + mac + ETH_P_ARP.to_bytes(2, "big") + arp, (link, ETH_P_ARP))
    except OSError:
        pass
    CLOSER.close(sock)


class Closer:
    """Closes packet sockets on threads of its own. The kernel releases every packet socket after an RCU
    grace period (``synchronize_net``: 10-20 ms here), which a pass announcing the gateways of 1,000 new
    routers paid 1,000 times in a row (~20 s). Up to ``threads`` closes wait side by side (their grace
    periods overlap); past ``backlog`` queued sockets the caller closes its own, so open descriptors stay
    bounded."""

    def __init__(self, threads: int = 4, backlog: int = 256) -> None:
        self.threads, self.backlog = threads, backlog
        self._queue: queue.SimpleQueue[stdsocket.socket] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._lock = threading.Lock()

    def close(self, sock: stdsocket.socket) -> None:
        if self._queue.qsize() >= self.backlog:
            sock.close()
            return
        with self._lock:
            self._workers = [t for t in self._workers if t.is_alive()]
            if len(self._workers) < self.threads:
                worker = threading.Thread(target=self._run, name="neutrino-close", daemon=True)
                worker.start()
                self._workers.append(worker)
        self._queue.put(sock)

    def _run(self) -> None:
        while True:
            self._queue.get().close()

    def pending(self) -> int:
        return self._queue.qsize()


CLOSER = Closer()


# -- the plane ------------------------------------------------------------------------------------------------
class LinkPlane:
    name = "links"

    def __init__(self, kernel: Kernel, owner: str, records: own.NamespaceRecords) -> None:
        self.kernel = kernel
        self.owner = owner
        self.mark = own.mark(owner, own.Creator.AGENT)
        self.records = records
        self.last_ops: list[Op] = []

    def observe(self, desired: HostState) -> Observed:
        namespaces = self.kernel.namespaces()
        root = self.kernel.view(None, fdb=True)
        inside = {ns: self.kernel.view(ns) for ns in sorted({pl.namespace for pl in desired.port_links} & namespaces)}
        return Observed(root, namespaces, inside, self.records.names())

    def diff(self, desired: HostState, obs: Observed) -> list[Op]:
        return Differ(self.mark, self.owner, desired, obs).ops()

    def apply(self, ops: Sequence[Op]) -> int:
        """Namespace records are written before the namespace is made and removed after it is gone."""
        errors: list[str] = []
        for op in ops:
            if isinstance(op, NetnsAdd | NetnsAdopt):
                self.records.add(op.name)
        errors = self.kernel.apply(ops)
        gone = self.kernel.namespaces()
        for op in ops:
            if isinstance(op, NetnsDel) and op.name not in gone:
                self.records.remove(op.name)
        if errors:
            raise KernelError("; ".join(errors))
        return sum(1 for op in ops if not isinstance(op, NetnsAdopt))

    leaf = False

    def names(self, desired: HostState) -> set[PortId]:
        return names(desired)

    def part(self, desired: HostState) -> object:
        return (desired.namespaces, desired.bridges, desired.vxlans, desired.vlans, desired.plugs, desired.port_links)

    def sync(self, desired: HostState, made_before: Made = frozenset()) -> PlaneResult:
        obs = self.observe(desired)
        ops = self.diff(desired, obs)
        self.last_ops = ops
        if not ops:
            return PlaneResult(0, frozenset(wired(desired, obs)))
        error: KernelError | None = None
        try:
            changes = self.apply(ops)
        except KernelError as exc:
            error, changes = exc, len(ops)
        if error is not None:
            raise error
        if not all(isinstance(op, KEEPS_WIRING) for op in ops):
            obs = self.observe(desired)  # what is wired now (else as observed: a new port's FDB entries elsewhere)
        return PlaneResult(changes, frozenset(wired(desired, obs)), frozenset(made(ops)))


# Ops that leave every link where it was (existing, enslaved, up) and every namespace: what ``wired`` looks at.
KEEPS_WIRING = (FdbAdd, FdbDel, AddrAdd, AddrDel, SetMtu, SetAlias)


def made(ops: Sequence[Op]) -> set[tuple[str | None, str]]:
    """(namespace, link) of every link these ops make anew."""
    out: set[tuple[str | None, str]] = set()
    for op in ops:
        if isinstance(op, VethAdd):
            out |= {(None, op.name), (op.peer_ns, op.peer)}
        elif isinstance(op, BridgeAdd | VxlanAdd | VlanAdd):
            out.add((None, op.name))
    return out


class Differ:
    def __init__(self, mark: str, owner: str, desired: HostState, obs: Observed) -> None:
        self.mark, self.owner, self.desired, self.obs = mark, owner, desired, obs

    def ops(self) -> list[Op]:
        d, obs, root = self.desired, self.obs, self.obs.root
        ops: list[Op] = []
        for ns in d.namespaces:
            if ns not in obs.namespaces:
                ops.append(NetnsAdd(ns))
            elif ns not in obs.records:
                ops.append(NetnsAdopt(ns))
        for br in d.bridges:
            if br.name not in root.links:
                ops += [BridgeAdd(br.name, br.mtu), SetAlias(br.name, self.mark), SetUp(br.name)]
            else:
                claim = self._claim(root, br.name)
                ops += claim if _refused(claim) else claim + self._link(root, br.name, None, br.mtu)
        theirs = {op.name for op in ops if isinstance(op, Refuse)}  # never plug anything into those
        for vx in (v for v in d.vxlans if v.bridge not in theirs):
            ops += self._vxlan(vx.name, vx.vni, vx.local, vx.mtu, vx.bridge,
                               {(FLOOD_MAC, ip) for ip in vx.flood} | set(vx.fdb))
        for vl in d.vlans:
            if vl.name not in root.links:
                ops.append(VlanAdd(vl.name, vl.parent, vl.vid, vl.mtu))
        for br in (b for b in d.bridges if b.name not in theirs):  # flat uplinks: enslaved, never made or deleted
            if br.uplink and not br.uplink.startswith("vxlan-") and "." not in br.uplink and br.uplink in root.links:
                ops += self._link(root, br.uplink, br.name, root.links[br.uplink].mtu)
        for plug in d.plugs:  # an instance's tap: its hypervisor's, never marked or deleted by the agent
            if plug.device in root.links and plug.bridge not in theirs:
                ops += self._link(root, plug.device, plug.bridge, plug.mtu, up=plug.up)
        for pl in (p for p in d.port_links if p.bridge not in theirs):
            ops += self._port_link(pl, obs.inside.get(pl.namespace))
        return ops + self._removals()

    def _claim(self, view: NsView, name: str, ns: str | None = None) -> list[Op]:
        """[] when the link is ours; [SetAlias] to adopt an unmarked one; [Refuse] for another owner's."""
        alias = view.links[name].alias
        if alias == self.mark:
            return []
        found = own.parse(alias)
        if found is not None and found[0] != self.owner:
            return [Refuse(name, found[0], ns)]
        return [SetAlias(name, self.mark, ns)]

    def _link(self, view: NsView, name: str, bridge: str | None, mtu: int, ns: str | None = None,
              up: bool = True) -> list[Op]:
        link = view.links[name]
        ops: list[Op] = []
        if link.mtu != mtu:
            ops.append(SetMtu(name, mtu, ns))
        if bridge is not None:
            master = view.links.get(bridge)
            if master is None or link.master != master.index:
                ops.append(SetMaster(name, bridge, ns))
        if link.up != up:
            ops.append(SetUp(name, up, ns))
        return ops

    def _vxlan(self, name: str, vni: int, local: str, mtu: int, bridge: str, want: set[tuple[str, str]]) -> list[Op]:
        root = self.obs.root
        ops: list[Op] = []
        cur = root.links.get(name)
        if cur is not None:
            claim = self._claim(root, name)
            if _refused(claim):
                return claim
            ops += claim
            if cur.vni != vni or cur.local != local:
                ops = [LinkDel(name)]
                cur = None
        if cur is None:
            ops += [VxlanAdd(name, vni, local, mtu), SetAlias(name, self.mark), SetMaster(name, bridge),
                    SetUp(name)]
            have: set[tuple[str, str]] = set()
        else:
            ops += self._link(root, name, bridge, mtu)
            have = root.fdb.get(name, set())
        ops += [FdbAdd(name, m, dst) for m, dst in sorted(want - have)]
        ops += [FdbDel(name, m, dst) for m, dst in sorted(have - want)]
        return ops

    def _port_link(self, pl: PortLinkSpec, inside: NsView | None) -> list[Op]:
        root = self.obs.root
        ops: list[Op] = []
        peer = inside.links.get(pl.peer) if inside else None
        if pl.device not in root.links or peer is None or inside is None:
            if pl.device in root.links:
                if _refused(claim := self._claim(root, pl.device)):
                    return claim
                ops.append(LinkDel(pl.device))
            ns = pl.namespace
            ops += [VethAdd(pl.device, pl.peer, ns, pl.mtu), SetAlias(pl.device, self.mark),
                    SetMaster(pl.device, pl.bridge), SetUp(pl.device), SetAlias(pl.peer, self.mark, ns),
                    SetMac(pl.peer, pl.mac, ns), SetUp(pl.peer, True, ns), SetUp("lo", True, ns)]
            return ops + [AddrAdd(pl.peer, a, ns) for a in pl.addresses]
        ns = pl.namespace
        if _refused(claim := self._claim(root, pl.device)):
            return claim
        ops += claim + self._claim(inside, pl.peer, ns)
        ops += self._link(root, pl.device, pl.bridge, pl.mtu)
        if peer.mac != pl.mac:
            ops.append(SetMac(pl.peer, pl.mac, ns))
        ops += self._link(inside, pl.peer, None, pl.mtu, ns)
        lo = inside.links.get("lo")
        if lo is not None and not lo.up:
            ops.append(SetUp("lo", True, ns))
        have, want = inside.addrs.get(peer.index, set()), set(pl.addresses)
        ops += [AddrAdd(pl.peer, a, ns) for a in sorted(want - have, key=_addr_key)]
        ops += [AddrDel(pl.peer, a, ns) for a in sorted(have - want, key=_addr_key)]
        return ops

    def _removals(self) -> list[Op]:
        """Links with this owner's agent mark that are not desired, and namespaces recorded as ours."""
        d, obs = self.desired, self.obs
        keep = ({b.name for b in d.bridges} | {v.name for v in d.vxlans} | {p.device for p in d.port_links})
        ops: list[Op] = [LinkDel(name) for name, link in sorted(obs.root.links.items())
                         if name not in keep and link.alias == self.mark]
        for ns, view in sorted(obs.inside.items()):
            peers = {p.peer for p in d.port_links if p.namespace == ns}
            ops += [LinkDel(name, ns) for name, link in sorted(view.links.items())
                    if name not in peers and link.alias == self.mark]
        wanted = set(d.namespaces)
        ops += [NetnsDel(ns) for ns in sorted(obs.records - wanted)]
        return ops


def _refused(claim: list[Op]) -> bool:
    return bool(claim) and isinstance(claim[0], Refuse)


def _addr_key(a: Interface) -> tuple[int, int, int]:
    return (a.version, int(a.ip), a.network.prefixlen)


def wired(desired: HostState, obs: Observed) -> set[PortId]:
    """Ports whose device is in place and enslaved to the right bridge."""
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


def names(desired: HostState) -> set[PortId]:
    return {p.port_id for p in desired.plugs} | {p.port_id for p in desired.port_links}

