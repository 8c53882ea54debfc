"""The routes plane: the routes HostState names (``RouteSpec``), in the host's namespace and in neutrino's
namespaces. Observe, diff, apply as typed operations.

Ownership (dataplane/ownership.py): every route this plane makes carries ``ROUTE_PROTOCOL`` in its
rtm_protocol. A route with that protocol that is not desired is swept when it lies in a namespace with this
owner's record, leaves through a link with this owner's mark, or was made by this plane (a second neutrino's
routes in the host's namespace are never touched); routes of any other protocol (the kernel's, static
ones, a routing daemon's) are never removed. A desired route found with another protocol, or differing in
gateway or device, is replaced by ours (the kernel knows a route by table, destination and metric).

Cost: a pass observes only the namespaces that desired routes name or that this plane has made routes in,
reading only routes with our protocol (the kernel filters). The first pass and the pass after a failure
also sweep: every namespace with our record, and the host's.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from neutrino.compile.state import Address, HostState, Network, RouteSpec
from neutrino.dataplane import netlink as nl
from neutrino.dataplane import ownership as own
from neutrino.dataplane.plane import Made, PlaneResult
from neutrino.errors import KernelError
from neutrino.intent.model import PortId

log = logging.getLogger("neutrino.agent")
IPV6_DEFAULT_METRIC = 1024  # what the kernel stores for an IPv6 route added with metric 0
RouteKey = tuple[str | None, int, Network, int]  # (namespace, table, destination, metric)


def metric(spec: RouteSpec) -> int:
    return spec.metric or (IPV6_DEFAULT_METRIC if spec.destination.version == 6 else 0)


def key(spec: RouteSpec) -> RouteKey:
    return (spec.namespace, spec.table, spec.destination, metric(spec))


# -- typed operations -------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class RouteAdd:
    route: RouteSpec


@dataclass(frozen=True, slots=True)
class RouteReplace:
    route: RouteSpec
    why: str


@dataclass(frozen=True, slots=True)
class RouteDel:
    namespace: str | None
    destination: Network
    metric: int
    table: int


Op = RouteAdd | RouteReplace | RouteDel


# -- observation ----------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class SeenRoute:
    """A route found in a namespace, its output device by name (with that link's ifalias)."""
    namespace: str | None
    destination: Network
    gateway: Address | None
    device: str | None
    metric: int
    table: int
    protocol: int
    device_alias: str | None = None

    @property
    def key(self) -> RouteKey:
        return (self.namespace, self.table, self.destination, self.metric)


class RouteKernel(Protocol):
    """What the routes plane reads and changes (the real one: netlink; a fake one in unit tests)."""

    def namespaces(self) -> set[str]: ...

    def routes(self, ns: str | None, protocol: int | None) -> list[SeenRoute]:
        """Routes of ``ns`` with ``protocol`` (None: every route)."""
        ...

    def apply(self, ops: Sequence[Op]) -> list[str]:
        """Apply in order, attempting every op; the errors, if any."""
        ...


class NetlinkRoutes:
    """Routes through netlink: observed with the fast reader, written through pyroute2."""

    def namespaces(self) -> set[str]:
        return set(nl.list_namespaces())

    def routes(self, ns: str | None, protocol: int | None) -> list[SeenRoute]:
        with nl.reader(ns) as reader:
            found = reader.routes(protocol)
            links = {link.index: link for link in reader.links()} if found else {}
        return [_seen(ns, r, links) for r in found]

    def apply(self, ops: Sequence[Op]) -> list[str]:
        errors = []
        with _sockets() as sock:
            for op in ops:
                try:
                    _apply_one(op, sock)
                except KernelError as exc:
                    errors.append(str(exc))
        return errors


def _seen(ns: str | None, r: nl.RouteState, links: dict[int, nl.LinkState]) -> SeenRoute:
    link = links.get(r.oif) if r.oif is not None else None
    return SeenRoute(ns, r.destination, r.gateway, link.name if link else None, r.metric, r.table, r.protocol,
                     link.alias if link else None)


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
    if isinstance(op, RouteDel):
        nl.delete_route(sock(op.namespace), op.destination, op.metric, op.table, own.ROUTE_PROTOCOL,
                        str(op.destination), op.namespace)
        return
    r = op.route
    oif = nl.index(sock(r.namespace), r.device)
    if oif is None:
        raise KernelError(f"route {r.destination}: no such link", obj=r.device, namespace=r.namespace or "")
    nl.replace_route(sock(r.namespace), r.destination, r.gateway, oif, metric(r), r.table, own.ROUTE_PROTOCOL,
                     r.device, r.namespace)


# -- the plane ------------------------------------------------------------------------------------------------
@dataclass
class Observed:
    routes: dict[RouteKey, SeenRoute]   # ours (our protocol) in the observed namespaces, plus desired keys
    namespaces: set[str | None]         # where ours were read


class RoutesPlane:
    name = "routes"

    def __init__(self, kernel: RouteKernel, owner: str, records: own.NamespaceRecords) -> None:
        self.kernel = kernel
        self.mark = own.mark(owner, own.Creator.AGENT)
        self.records = records
        self.applied: set[RouteKey] = set()  # routes this plane made and has not removed
        self.full = True  # the first pass and the pass after a failure also sweep
        self.last_ops: list[Op] = []

    def concerned(self, desired: HostState, existing: set[str]) -> set[str | None]:
        wanted = {r.namespace for r in desired.routes} | {k[0] for k in self.applied}
        if self.full:
            wanted |= {None, *self.records.names()}
        return {ns for ns in wanted if ns is None or ns in existing}

    def observe(self, desired: HostState) -> Observed:
        spaces = self.concerned(desired, self.kernel.namespaces()) if desired.routes or self.applied or self.full \
            else set()
        found: dict[RouteKey, SeenRoute] = {}
        for ns in sorted(spaces, key=lambda n: n or ""):
            found.update((r.key, r) for r in self.kernel.routes(ns, own.ROUTE_PROTOCOL))
            missing = {key(s) for s in desired.routes if s.namespace == ns} - set(found)
            if missing:  # a desired key may be held by a route of another protocol: replaced, not added
                found.update((r.key, r) for r in self.kernel.routes(ns, None) if r.key in missing)
        return Observed(found, spaces)

    def diff(self, desired: HostState, obs: Observed) -> list[Op]:
        wanted = {key(r): r for r in desired.routes}
        ops: list[Op] = []
        # on-link routes first: a route via a gateway outside every subnet needs the route to it
        for k, spec in sorted(wanted.items(), key=lambda kv: (kv[1].gateway is not None, str(kv[0]))):
            if spec.namespace not in obs.namespaces:
                continue  # its namespace is not there (yet): the link plane's failure, reported there
            seen = obs.routes.get(k)
            if seen is None:
                ops.append(RouteAdd(spec))
            elif seen.protocol != own.ROUTE_PROTOCOL:
                ops.append(RouteReplace(spec, f"held by route protocol {seen.protocol}"))
            elif (seen.gateway, seen.device) != (spec.gateway, spec.device):
                ops.append(RouteReplace(spec, "changed"))
        stale = [r for k, r in obs.routes.items() if k not in wanted and r.protocol == own.ROUTE_PROTOCOL
                 and self._ours(r)]
        for r in sorted(stale, key=lambda r: (r.gateway is None, str(r.key))):
            ops.append(RouteDel(r.namespace, r.destination, r.metric, r.table))
        return ops

    def _ours(self, r: SeenRoute) -> bool:
        return (r.namespace is not None and r.namespace in self.records.names()) or r.device_alias == self.mark \
            or r.key in self.applied

    def apply(self, ops: Sequence[Op]) -> int:
        errors = self.kernel.apply(ops)
        for op in ops:
            if isinstance(op, RouteDel):
                self.applied.discard((op.namespace, op.table, op.destination, op.metric))
            else:
                self.applied.add(key(op.route))
                if isinstance(op, RouteReplace):
                    log.info("route %s in %s: %s; set again", op.route.destination,
                             op.route.namespace or "the host", op.why)
        if errors:
            raise KernelError("; ".join(errors))
        return len(ops)

    leaf = False

    def part(self, desired: HostState) -> object:
        return desired.routes

    def names(self, desired: HostState) -> set[PortId]:
        return set()

    def sync(self, desired: HostState, made: Made = frozenset()) -> PlaneResult:
        try:
            existing = self.kernel.namespaces() if self.applied else set()
            self.applied = {k for k in self.applied if k[0] is None or k[0] in existing}  # gone with its namespace
            obs = self.observe(desired)
            ops = self.diff(desired, obs)
            self.last_ops = ops
            changes = self.apply(ops) if ops else 0
        except KernelError:
            self.full = True
            raise
        self.full = False
        return PlaneResult(changes)
