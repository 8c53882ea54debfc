"""nftables tables (pure): what one namespace's owned table holds, and the scripts that set or update it.

Per namespace neutrino owns one table per family: ``ip`` in a router's namespace (its NAT, compile/routers.py),
``bridge`` and ``inet`` in the host's namespace where ports are filtered (compile/secgroups.py), named by the
nft plane after this neutrino's owner id (``neutrino-<owner>``), so two neutrinos never touch each other's
tables. ``body`` is the table's content in nft syntax (chains, sets, maps). A full sync is one ``nft -f``
transaction: make the table (a no-op if it exists), delete it, make it again with its content -- atomic,
whatever was there before.

A table built from parts (``NftSet``, ``NftChain``; see ``structured``) can also be updated in place:
``render_update`` turns the difference between two versions into one transaction that touches only what
changed -- elements added to or deleted from a set or map, a chain flushed and filled again, a chain or set
added or deleted -- so a membership change moves set elements and a rule change rewrites one chain, while
everything else (and the conntrack state behind it) stays as it is.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from neutrino.intent.model import PortId

FAMILIES = ("inet", "ip", "bridge")


@dataclass(frozen=True, slots=True)
class NftSet:
    """A named set (``kind`` "set") or map ("map"): its declaration lines (``type ...``, ``flags ...``)
    and its elements as nft writes them (``key`` or ``key : value``), sorted."""
    name: str
    declaration: tuple[str, ...]
    elements: tuple[str, ...] = ()
    kind: str = "set"


@dataclass(frozen=True, slots=True)
class NftChain:
    """A chain: ``hook`` is a base chain's ``type ... hook ... priority ...; policy ...;`` line ("" for a
    regular chain), ``rules`` its rules in order."""
    name: str
    rules: tuple[str, ...]
    hook: str = ""


@dataclass(frozen=True, slots=True)
class NftTable:
    namespace: str | None             # None: the agent's own namespace
    family: str                       # inet | ip | bridge
    body: str                         # the table's content (nft syntax, without the ``table`` line)
    ports: tuple[PortId, ...] = ()    # ports this table filters: ACTIVE only once it is in place
    # The same content in parts, when the table was built from them (``structured``): what lets the nft
    # plane update it in place instead of replacing it.
    sets: tuple[NftSet, ...] = ()
    chains: tuple[NftChain, ...] = ()


def table_name(owner: str) -> str:
    return f"neutrino-{owner}"


def render_set(s: NftSet) -> str:
    lines = [f"{s.kind} {s.name} {{", *(f"\t{d}" for d in s.declaration)]
    if s.elements:
        lines += ["\telements = {", *(f"\t\t{e}," for e in s.elements[:-1]), f"\t\t{s.elements[-1]}", "\t}"]
    return "\n".join([*lines, "}"]) + "\n"


@functools.lru_cache(maxsize=65536)
def render_chain(c: NftChain) -> str:
    lines = [f"chain {c.name} {{", *([f"\t{c.hook}"] if c.hook else []), *(f"\t{r}" for r in c.rules)]
    return "\n".join([*lines, "}"]) + "\n"


def structured(namespace: str | None, family: str, sets: tuple[NftSet, ...], chains: tuple[NftChain, ...],
               ports: tuple[PortId, ...] = ()) -> NftTable:
    """A table from its parts; ``body`` is their rendering (sets first, then chains, in the given order)."""
    body = "".join(render_set(s) for s in sets) + "".join(render_chain(c) for c in chains)
    return NftTable(namespace, family, body, ports, sets, chains)


def render_sync(table: NftTable, owner: str, absent: bool = False) -> str:
    """The one transaction that replaces the table with exactly ``table.body``. With ``absent`` (the table
    was just seen not to exist) it is created instead, and the transaction fails should it exist after all:
    deleting a table costs the kernel an RCU grace period (~12 ms here, paid by every new router otherwise)."""
    if table.family not in FAMILIES:
        raise ValueError(f"unsupported nft family {table.family!r}")
    name = f"{table.family} {table_name(owner)}"
    body = "".join(f"\t{line}\n" if line.strip() else "\n" for line in table.body.splitlines())
    if absent:
        return f"create table {name}\ntable {name} {{\n{body}}}\n"
    return f"table {name}\ndelete table {name}\ntable {name} {{\n{body}}}\n"


def render_delete(family: str, owner: str) -> str:
    return f"delete table {family} {table_name(owner)}\n"


def _key(kind: str, element: str) -> str:
    return element.split(" : ", 1)[0] if kind == "map" else element


def render_update(old: NftTable, new: NftTable, owner: str) -> str | None:
    """The commands that turn table ``old`` (as set) into ``new``, touching only what differs; None when
    that cannot be done in place (either is not built from parts, a set's declaration or a base chain's
    hook changed): the caller then syncs the table whole. Order matters inside the one transaction: new
    chains exist before elements or rules jump to them, and nothing is deleted while anything still
    refers to it (changed and removed chains are flushed before chains and sets go)."""
    if (old.namespace, old.family) != (new.namespace, new.family) or not (old.sets or old.chains) \
            or not (new.sets or new.chains) or new.family not in FAMILIES:
        return None
    t = f"{new.family} {table_name(owner)}"
    old_sets, new_sets = {s.name: s for s in old.sets}, {s.name: s for s in new.sets}
    old_chains, new_chains = {c.name: c for c in old.chains}, {c.name: c for c in new.chains}
    for name in old_sets.keys() & new_sets.keys():
        if (old_sets[name].declaration, old_sets[name].kind) != (new_sets[name].declaration, new_sets[name].kind):
            return None
    for name in old_chains.keys() & new_chains.keys():
        if old_chains[name].hook != new_chains[name].hook:
            return None
    if old_sets.keys() & new_chains.keys() or old_chains.keys() & new_sets.keys():
        return None
    out: list[str] = []
    added_chains = [c for n, c in new_chains.items() if n not in old_chains]
    for c in added_chains:  # declared first: elements and rules below may jump to them
        out.append(f"add chain {t} {c.name}" + (f" {{ {c.hook} }}" if c.hook else ""))
    for name, s in new_sets.items():
        if name not in old_sets:
            out.append(f"add {s.kind} {t} {name} {{ {'; '.join(s.declaration)}; }}")
    for name, s in new_sets.items():
        before = set(old_sets[name].elements) if name in old_sets else set()
        after = set(s.elements)
        gone = [e for e in (old_sets[name].elements if name in old_sets else ()) if e not in after]
        # A map element whose value changed is deleted and added again (by its key).
        if gone:
            out.append(f"delete element {t} {name} {{ {', '.join(_key(s.kind, e) for e in gone)} }}")
        new_elements = [e for e in s.elements if e not in before]
        if new_elements:
            out.append(f"add element {t} {name} {{ {', '.join(new_elements)} }}")
    for name, c in new_chains.items():
        if name in old_chains and old_chains[name].rules == c.rules:
            continue
        if name in old_chains:
            out.append(f"flush chain {t} {name}")
        out += [f"add rule {t} {name} {r}" for r in c.rules]
    removed_chains = [n for n in old_chains if n not in new_chains]
    out += [f"flush chain {t} {n}" for n in removed_chains]
    out += [f"delete chain {t} {n}" for n in removed_chains]
    out += [f"delete {old_sets[n].kind} {t} {n}" for n in old_sets if n not in new_sets]
    return "".join(f"{line}\n" for line in out)
