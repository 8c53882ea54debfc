"""The nft plane: per namespace and family one owned table (``neutrino-<owner>``): ``ip`` in a router's
namespace, ``bridge`` and ``inet`` in the host's where ports are filtered.

A table is set whole: one ``nft -f`` transaction makes it, deletes it and makes it again with its content
(compile/nft.py: ``render_sync``), so no half-applied state is ever visible; a table just seen not to exist is
only made (a delete costs the kernel an RCU grace period, ~12 ms, once per new router otherwise). A table
built from parts whose new version differs from the one set only in set elements or chain contents is updated
in place instead (``render_update``: elements added/deleted, one chain flushed and filled): a membership or
rule change moves only that, and conntrack, counters and every other chain stay. Whatever changes in one
namespace in a pass is one transaction. After a change the plane keeps the table's listing; a pass lists each
table again and a listing that differs (something else changed the table, or it is gone) is a full sync. The
first pass, and the next pass after any failure, is a full sync of every table, and also sweeps this owner's
tables that are not desired; tables of anyone else are never read or touched.

``scope`` splits the work between two planes of one pipeline: the host's namespace ("host", run before
the links plane, so an instance's tap is filtered before it is plugged into its bridge) and every other
namespace ("namespaces": routers, whose namespaces the links plane makes first).

With a ``memory`` file (the agent's state directory), what a sync left (body and listing per table) outlives
the agent: a restarted agent whose desired body is the one it set, and whose table still lists exactly as
it did then, takes the table as it is -- nothing re-applied, NAT and conntrack undisturbed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import struct
import subprocess
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol

from neutrino.compile.nft import NftTable, render_delete, render_sync, render_update, table_name
from neutrino.compile.state import HostState
from neutrino.dataplane import netlink as nl
from neutrino.dataplane.libnft import LibNft
from neutrino.dataplane.libnft import available as libnft_available
from neutrino.dataplane.plane import Made, PlaneResult
from neutrino.errors import KernelError
from neutrino.intent.model import PortId

log = logging.getLogger("neutrino.agent")
TableKey = tuple[str | None, str]  # (namespace, family)


class Nft(Protocol):
    def run(self, ns: str | None, script: str) -> None:
        """Run ``script`` as one transaction; raises KernelError."""
        ...

    def listing(self, ns: str | None, family: str, name: str) -> str | None:
        """The table as nft lists it; None when there is no such table."""
        ...

    def tables(self, ns: str | None) -> set[tuple[str, str]]:
        """(family, name) of every table in ``ns``."""
        ...

    def generation(self, ns: str | None) -> int | None:
        """The namespace's nftables generation (the kernel bumps it on every change of any table there);
        None when it cannot be read."""
        ...


NETLINK_NETFILTER = 12
NFT_MSG_GETGEN = (10 << 8) | 16   # NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETGEN
NFTA_GEN_ID = 1


def generation(ns: str | None) -> int | None:
    """NFT_MSG_GETGEN over a netfilter netlink socket opened in ``ns`` (one round trip, no fork)."""
    def make() -> socket.socket:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_NETFILTER)
    try:
        sock = make() if ns is None else nl._socket_in(ns, make)
    except OSError:
        return None
    with sock:
        try:
            sock.settimeout(2.0)
            sock.send(struct.pack("=IHHII", 20, NFT_MSG_GETGEN, 1, 1, 0) + struct.pack("=BBH", 0, 0, 0))
            data = sock.recv(65536)
        except OSError:
            return None
    length, kind = struct.unpack_from("=IH", data) if len(data) >= 16 else (0, 0)
    off = 20
    while kind != 2 and off + 4 <= min(length, len(data)):  # 2: NLMSG_ERROR
        alen, atype = struct.unpack_from("=HH", data, off)
        if atype & 0x3FFF == NFTA_GEN_ID and alen >= 8:
            return int(struct.unpack_from(">I", data, off + 4)[0])
        off += max(4, (alen + 3) & ~3)
    return None


class NftCommand:
    """The ``nft`` tool, inside a namespace through ``ip netns exec``; the generation by netlink."""

    def generation(self, ns: str | None) -> int | None:
        return generation(ns)

    @staticmethod
    def _argv(ns: str | None, *args: str) -> list[str]:
        return (["ip", "netns", "exec", ns] if ns else []) + ["nft", *args]

    def run(self, ns: str | None, script: str) -> None:
        done = subprocess.run(self._argv(ns, "-f", "-"), input=script, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise KernelError(f"nft failed: {done.stderr.strip()}", namespace=ns or "")

    def listing(self, ns: str | None, family: str, name: str) -> str | None:
        done = subprocess.run(self._argv(ns, "list", "table", family, name), capture_output=True, text=True,
                              check=False)
        return done.stdout if done.returncode == 0 else None

    def tables(self, ns: str | None) -> set[tuple[str, str]]:
        done = subprocess.run(self._argv(ns, "list", "tables"), capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise KernelError(f"nft list tables failed: {done.stderr.strip()}", namespace=ns or "")
        return {(w[1], w[2]) for w in (line.split() for line in done.stdout.splitlines())
                if len(w) == 3 and w[0] == "table"}


@dataclass(frozen=True, slots=True)
class SyncTable:
    table: NftTable
    why: str
    absent: bool = False  # seen not to exist: created, not replaced (render_sync)


@dataclass(frozen=True, slots=True)
class UpdateTable:
    """Change a table in place: ``script`` (render_update) turns the table as set into ``table``."""
    table: NftTable
    script: str


@dataclass(frozen=True, slots=True)
class DeleteTable:
    ns: str | None
    family: str


Op = SyncTable | UpdateTable | DeleteTable
Scope = Literal["all", "host", "namespaces"]


@dataclass
class Observed:
    listings: dict[TableKey, str | None]   # tables this plane set (or wants), as listed now
    found: set[TableKey]                  # this owner's tables found by a sweep (full passes only)
    untouched: set[TableKey] = field(default_factory=set)  # their namespace's generation is still ours
    gens: dict[str | None, int | None] = field(default_factory=dict)  # generation per namespace, as read


def digest(body: str) -> str:
    return hashlib.sha256(body.encode()).hexdigest()


class NftPlane:
    def __init__(self, owner: str, nft: Nft | None = None, memory: Path | None = None, scope: Scope = "all",
                 name: str = "nft") -> None:
        self.owner = owner
        self.name = name
        self.scope = scope
        self.table = table_name(owner)
        self.nft = nft or (LibNft() if libnft_available() else NftCommand())
        # key -> (table as set, its listing: the baseline for drift; None until taken, see _settle)
        self.applied: dict[TableKey, tuple[NftTable, str | None]] = {}
        self.gens: dict[str | None, int] = {}  # namespace -> nftables generation right after our last change
        self.full = True  # the first pass and the pass after a failure sync everything
        self.memory = memory
        self.remembered = self._recall()  # what an earlier run left: key -> (body digest, listing, generation)

    def _recall(self) -> dict[TableKey, tuple[str, str | None, int | None]]:
        if self.memory is None:
            return {}
        try:
            rows = json.loads(self.memory.read_text())
            return {(r["ns"], r["family"]): (r.get("digest") or digest(r["body"]), r.get("listing"), r.get("gen"))
                    for r in rows}
        except (OSError, ValueError, KeyError, TypeError):
            return {}

    def _remember(self) -> None:
        if self.memory is None:
            return
        rows = [{"ns": k[0], "family": k[1], "digest": digest(v[0].body), "listing": v[1], "gen": self.gens.get(k[0])}
                for k, v in sorted(self.applied.items(), key=lambda kv: str(kv[0]))
                if v[1] is not None or k[0] in self.gens]
        self.memory.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.memory.with_suffix(".tmp")
        tmp.write_text(json.dumps(rows))
        tmp.replace(self.memory)

    def _mine(self, ns: str | None) -> bool:
        return self.scope == "all" or (ns is None) == (self.scope == "host")

    def tables(self, desired: HostState) -> list[NftTable]:
        """The desired tables in this plane's scope."""
        return [t for t in desired.nft if self._mine(t.namespace)]

    def observe(self, desired: HostState, namespaces: Collection[str] | None = None) -> Observed:
        """List the tables this plane set (or an earlier run did) -- except where the namespace's nftables
        generation is still the one right after our own last change: nothing changed there since."""
        wanted = {(t.namespace, t.family) for t in self.tables(desired)}
        keys = wanted | set(self.applied)
        if self.full:  # only tables an earlier run remembers are worth listing
            keys = wanted & set(self.remembered)
        gens = {ns: self.nft.generation(ns) for ns in {k[0] for k in keys}}
        listings: dict[TableKey, str | None] = {}
        untouched: set[TableKey] = set()
        for k in sorted(keys, key=str):
            ours = self.remembered[k][2] if self.full else self.gens.get(k[0])
            if gens[k[0]] is not None and gens[k[0]] == ours:
                untouched.add(k)
            else:
                listings[k] = self.nft.listing(k[0], k[1], self.table)
        found: set[TableKey] = set()
        if self.full:
            for ns in sorted({None, *(k[0] for k in wanted)}, key=lambda n: n or ""):
                if self._mine(ns):
                    found |= {(ns, fam) for fam, name in self.nft.tables(ns) if name == self.table}
        return Observed(listings, found, untouched, gens)

    def diff(self, desired: HostState, obs: Observed) -> list[Op]:
        ops: list[Op] = []
        wanted = {(t.namespace, t.family): t for t in self.tables(desired)}
        for key, t in sorted(wanted.items(), key=lambda kv: str(kv[0])):
            have, listing = self.applied.get(key, (None, None))
            kept = self.remembered.get(key)
            same = key in obs.untouched
            if self.full and kept is not None and kept[0] == digest(t.body) and (
                    same or (kept[1] is not None and obs.listings.get(key) == kept[1])):
                self.applied[key] = (t, kept[1])  # set by an earlier run and untouched since: taken as it is
            elif self.full:
                ops.append(SyncTable(t, "full sync", absent=key not in obs.found))
            elif have is not None and not same and (listing is None or obs.listings.get(key) != listing):
                gone = key in obs.listings and obs.listings[key] is None
                ops.append(SyncTable(t, "gone" if gone else "changed behind neutrino's back", absent=gone))
            elif have is None or have.body != t.body:
                script = render_update(have, t, self.owner) if have is not None else None
                absent = key in obs.listings and obs.listings[key] is None
                ops.append(UpdateTable(t, script) if script is not None else
                           SyncTable(t, "content changed", absent=absent))
        stale = (set(self.applied) | obs.found) - set(wanted)
        ops += [DeleteTable(ns, fam) for ns, fam in sorted(stale, key=str)]
        return ops

    def apply(self, ops: Sequence[Op]) -> int:
        """One transaction per namespace for everything that changes there (tables gone already are not
        deleted again). Then the namespace's generation is kept; where it cannot be read, each table's
        listing is taken at once as the baseline for drift (else later, by _settle, off the change's path)."""
        errors = []
        by_ns: dict[str | None, list[Op]] = {}
        for op in ops:
            by_ns.setdefault(op.ns if isinstance(op, DeleteTable) else op.table.namespace, []).append(op)
        for ns, group in sorted(by_ns.items(), key=lambda kv: kv[0] or ""):
            script = []
            self.gens.pop(ns, None)
            try:
                for op in group:
                    if isinstance(op, DeleteTable):
                        self.applied.pop((op.ns, op.family), None)
                        if self.nft.listing(op.ns, op.family, self.table) is not None:
                            script.append(render_delete(op.family, self.owner))
                        continue
                    t = op.table
                    self.applied.pop((t.namespace, t.family), None)
                    script.append(render_sync(t, self.owner, op.absent) if isinstance(op, SyncTable) else op.script)
                    if isinstance(op, SyncTable) and op.why != "full sync":
                        log.info("nft table %s %s in %s: %s; set again", t.family, self.table,
                                 t.namespace or "the host", op.why)
                if script:
                    self.nft.run(ns, "".join(script))
                gen = self.nft.generation(ns)
                if gen is not None:
                    self.gens[ns] = gen
                for op in group:
                    if not isinstance(op, DeleteTable):
                        t = op.table
                        listing = None if gen is not None else self.nft.listing(t.namespace, t.family, self.table)
                        self.applied[(t.namespace, t.family)] = (t, listing)
            except KernelError as exc:
                errors.append(str(exc))
        self.full = bool(errors)
        if errors:
            raise KernelError("; ".join(errors))
        return len(ops)

    def _settle(self, skip: Collection[str | None]) -> bool:
        """Take the drift baseline (the listing) of tables changed in an earlier pass, while their
        namespace's generation is still ours: a later change by anyone else is then told apart from ours
        by comparing listings. Returns whether any was taken."""
        taken = False
        for key, (t, listing) in sorted(self.applied.items(), key=lambda kv: str(kv[0])):
            ns = key[0]
            if listing is not None or ns in skip or ns not in self.gens:
                continue
            if self.nft.generation(ns) == self.gens[ns]:
                now = self.nft.listing(ns, key[1], self.table)
                if now is not None and self.nft.generation(ns) == self.gens[ns]:
                    self.applied[key] = (t, now)
                    taken = True
        return taken

    leaf = True

    def names(self, desired: HostState) -> set[PortId]:
        return {p for t in self.tables(desired) for p in t.ports}

    def part(self, desired: HostState) -> object:
        return self.tables(desired)

    def ready(self, desired: HostState) -> set[PortId]:
        return {p for t in self.tables(desired) if (t.namespace, t.family) in self.applied
                and self.applied[(t.namespace, t.family)][0].body == t.body for p in t.ports}

    def sync(self, desired: HostState, made: Made = frozenset()) -> PlaneResult:
        try:
            obs = self.observe(desired)
            ops = self.diff(desired, obs)
        except KernelError:
            self.full = True
            raise
        changes = self.apply(ops) if ops else 0
        touched = {op.ns if isinstance(op, DeleteTable) else op.table.namespace for op in ops}
        for ns, gen in obs.gens.items():  # looked at and found as left: the generation now is ours too
            if ns not in touched and gen is not None:
                self.gens[ns] = gen
        settled = self._settle(touched)
        if self.full or ops or settled:
            self._remember()
        self.remembered = {}
        self.full = False
        return PlaneResult(sum(1 for op in ops if not (isinstance(op, SyncTable) and op.why == "full sync"))
                           if changes else 0, frozenset(self.ready(desired)))
