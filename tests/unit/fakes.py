"""In-memory kernel, routing tables and process table for the plane tests (no root, no kernel)."""

from __future__ import annotations

import dataclasses
import ipaddress
import itertools
from collections.abc import Sequence
from pathlib import Path

from neutrino.compile.state import Interface, Network
from neutrino.dataplane import links as lk
from neutrino.dataplane import routes as rt
from neutrino.dataplane.netlink import LinkState
from neutrino.dataplane.ownership import ROUTE_PROTOCOL


class FakeKernel:
    """Namespaces of links (with ifalias), addresses and VXLAN FDB entries; veths know their peers."""

    def __init__(self) -> None:
        self._index = itertools.count(1)
        self.ns: dict[str | None, dict[str, LinkState]] = {None: {}}
        self.addrs: dict[tuple[str | None, str], set[Interface]] = {}
        self.fdb: dict[str, set[tuple[str, str]]] = {}
        self.peers: dict[tuple[str | None, str], tuple[str | None, str]] = {}
        self.applied: list[lk.Op] = []
        self.fail: set[str] = set()  # names whose ops fail
        self.add_link(None, "lo")

    # -- test helpers -------------------------------------------------------------------------------------
    def add_link(self, ns: str | None, name: str, kind: str = "", alias: str | None = None, mtu: int = 1500,
                 up: bool = False) -> LinkState:
        link = LinkState(name, next(self._index), kind, "02:00:00:00:00:00", mtu, up, None, alias=alias)
        self.ns[ns][name] = link
        return link

    def change(self, ns: str | None, name: str, **kw: object) -> None:
        self.ns[ns][name] = dataclasses.replace(self.ns[ns][name], **kw)  # type: ignore[arg-type]

    def delete(self, ns: str | None, name: str) -> None:
        self.ns[ns].pop(name, None)
        self.addrs.pop((ns, name), None)
        self.fdb.pop(name, None) if ns is None else None
        peer = self.peers.pop((ns, name), None)
        if peer is not None:
            self.peers.pop(peer, None)
            self.delete(*peer)

    def add_ns(self, name: str) -> None:
        self.ns[name] = {}
        self.add_link(name, "lo")

    def snapshot(self) -> dict[str | None, dict[str, tuple[object, ...]]]:
        """Everything, without indices (for comparing whole states)."""
        out: dict[str | None, dict[str, tuple[object, ...]]] = {}
        for ns, links in self.ns.items():
            by_index = {link.index: n for n, link in links.items()}
            out[ns] = {n: (link.kind, link.mac, link.mtu, link.up, by_index.get(link.master or 0), link.alias,
                           link.vni, link.local, tuple(sorted(map(str, self.addrs.get((ns, n), set())))),
                           tuple(sorted(self.fdb.get(n, set()))) if ns is None else ())
                       for n, link in links.items()}
        return out

    # -- the Kernel protocol ------------------------------------------------------------------------------
    def namespaces(self) -> set[str]:
        return {ns for ns in self.ns if ns is not None}

    def view(self, ns: str | None, fdb: bool = False) -> lk.NsView:
        links = dict(self.ns[ns])
        addrs = {links[n].index: set(a) for (s, n), a in self.addrs.items() if s == ns and a and n in links}
        fdbs = {n: set(e) for n, e in self.fdb.items() if n in links} if fdb and ns is None else {}
        return lk.NsView(links, addrs, fdbs)

    def apply(self, ops: Sequence[lk.Op]) -> list[str]:
        errors = []
        for op in ops:
            self.applied.append(op)
            name = getattr(op, "name", getattr(op, "link", ""))
            try:
                if name in self.fail:
                    raise RuntimeError(f"{name}: injected failure")
                self._apply(op)
            except (RuntimeError, KeyError) as exc:
                errors.append(f"{type(op).__name__} {name}: {exc}")
        return errors

    def _apply(self, op: lk.Op) -> None:
        ns = lk.op_ns(op)
        match op:
            case lk.NetnsAdd(name):
                self.add_ns(name)
            case lk.NetnsDel(name):
                for member in list(self.ns.get(name, {})):
                    self.delete(name, member)
                self.ns.pop(name, None)
            case lk.BridgeAdd(name, mtu):
                self.add_link(None, name, "bridge", mtu=mtu)
            case lk.VxlanAdd(name, vni, local, mtu):
                link = self.add_link(None, name, "vxlan", mtu=mtu)
                self.ns[None][name] = dataclasses.replace(link, vni=vni, local=local)
            case lk.VethAdd(name, peer, peer_ns, mtu):
                if peer_ns not in self.ns:
                    raise RuntimeError("no such namespace")
                self.add_link(None, name, "veth", mtu=mtu)
                self.add_link(peer_ns, peer, "veth", mtu=mtu)
                self.peers[(None, name)], self.peers[(peer_ns, peer)] = (peer_ns, peer), (None, name)
            case lk.LinkDel(name):
                self.delete(ns, name)
            case lk.SetMaster(name, bridge):
                self.change(ns, name, master=self.ns[ns][bridge].index)
            case lk.SetMtu(name, mtu):
                self.change(ns, name, mtu=mtu)
            case lk.SetUp(name, up):
                self.change(ns, name, up=up)
            case lk.SetMac(name, mac):
                self.change(ns, name, mac=mac)
            case lk.SetAlias(name, alias):
                self.change(ns, name, alias=alias)
            case lk.AddrAdd(link, addr):
                _ = self.ns[ns][link]
                self.addrs.setdefault((ns, link), set()).add(addr)
            case lk.AddrDel(link, addr):
                self.addrs.get((ns, link), set()).discard(addr)
            case lk.FdbAdd(link, mac, dst):
                self.fdb.setdefault(link, set()).add((mac, dst))
            case lk.FdbDel(link, mac, dst):
                self.fdb.get(link, set()).discard((mac, dst))
            case lk.Refuse(name, owner):
                raise RuntimeError(f"held by {owner}")
            case lk.VlanAdd(name):
                raise RuntimeError("no 802.1Q here")
            case lk.NetnsAdopt():
                pass


class FakeProcesses:
    """A process table: ``start`` 'daemonizes' by writing the pid file named by --pid-file=."""

    def __init__(self) -> None:
        self._pids = itertools.count(1000)
        self.table: dict[int, tuple[str, ...]] = {}
        self.signals: list[tuple[int, int]] = []
        self.started: list[tuple[str, ...]] = []

    def cmdline(self, pid: int) -> tuple[str, ...] | None:
        return self.table.get(pid)

    def start(self, argv: Sequence[str], log_path: Path) -> str | None:
        argv = tuple(argv)
        self.started.append(argv)
        while argv[:1] == ("ip",):  # ip netns exec NS: what runs is the rest
            argv = argv[4:]
        pid = next(self._pids)
        self.table[pid] = argv
        pidfile = next(a.split("=", 1)[1] for a in argv if a.startswith("--pid-file="))
        Path(pidfile).write_text(f"{pid}\n")
        return None

    def kill(self, pid: int) -> None:
        self.table.pop(pid, None)

    def signal(self, pid: int, sig: int) -> None:
        self.signals.append((pid, sig))


class FakeRoutes:
    """Routing tables per namespace, keyed as the kernel keys them: (table, destination, metric)."""

    def __init__(self, namespaces: Sequence[str] = ()) -> None:
        self.ns: dict[str | None, dict[tuple[int, Network, int], rt.SeenRoute]] = {None: {}}
        self.aliases: dict[tuple[str | None, str], str] = {}  # (namespace, link) -> ifalias
        self.reads: list[tuple[str | None, int | None]] = []
        self.fail: set[str] = set()  # devices whose routes fail to apply
        for name in namespaces:
            self.ns[name] = {}

    def add(self, ns: str | None, destination: str, device: str, gateway: str | None = None, protocol: int = 4,
            metric: int = 0, table: int = 254) -> None:
        dst = ipaddress.ip_network(destination)
        r = rt.SeenRoute(ns, dst, ipaddress.ip_address(gateway) if gateway else None, device, metric, table, protocol)
        self.ns[ns][(table, dst, metric)] = r

    def state(self) -> dict[str | None, set[tuple[str, str | None, str | None, int, int, int]]]:
        return {ns: {(str(r.destination), str(r.gateway) if r.gateway else None, r.device, r.metric, r.table,
                      r.protocol) for r in routes.values()} for ns, routes in self.ns.items()}

    # -- the RouteKernel protocol ---------------------------------------------------------------------------
    def namespaces(self) -> set[str]:
        return {ns for ns in self.ns if ns is not None}

    def routes(self, ns: str | None, protocol: int | None) -> list[rt.SeenRoute]:
        self.reads.append((ns, protocol))
        return [dataclasses.replace(r, device_alias=self.aliases.get((ns, r.device or "")))
                for r in self.ns[ns].values() if protocol is None or r.protocol == protocol]

    def apply(self, ops: Sequence[rt.Op]) -> list[str]:
        errors = []
        for op in ops:
            if isinstance(op, rt.RouteDel):
                found = self.ns.get(op.namespace, {}).get((op.table, op.destination, op.metric))
                if found is not None and found.protocol == ROUTE_PROTOCOL:
                    del self.ns[op.namespace][(op.table, op.destination, op.metric)]
                continue
            r = op.route
            if r.namespace not in self.ns or r.device in self.fail:
                errors.append(f"route {r.destination} in {r.namespace}: injected failure")
                continue
            self.ns[r.namespace][(r.table, r.destination, rt.metric(r))] = rt.SeenRoute(
                r.namespace, r.destination, r.gateway, r.device, rt.metric(r), r.table, ROUTE_PROTOCOL)
        return errors
