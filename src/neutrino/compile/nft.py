"""nftables tables (pure): what one namespace's owned table holds, and the script that sets it whole.

Per namespace neutrino owns one table per family: ``ip`` in a router's namespace (its NAT, compile/routers.py),
``inet`` / ``bridge`` where ports are filtered,
named by the nft plane after this neutrino's owner id (``neutrino-<owner>``), so two neutrinos never
touch each other's tables. ``body`` is the table's content in nft syntax (chains, sets, maps); routers and
security groups will compile into it. A full sync is one ``nft -f`` transaction: make the table (a no-op
if it exists), delete it, make it again with its content -- atomic, whatever was there before.
"""

from __future__ import annotations

from dataclasses import dataclass

from neutrino.intent.model import PortId

FAMILIES = ("inet", "ip", "bridge")


@dataclass(frozen=True, slots=True)
class NftTable:
    namespace: str | None             # None: the agent's own namespace
    family: str                       # inet | ip | bridge
    body: str                         # the table's content (nft syntax, without the ``table`` line)
    ports: tuple[PortId, ...] = ()    # ports this table filters: ACTIVE only once it is in place


def table_name(owner: str) -> str:
    return f"neutrino-{owner}"


def render_sync(table: NftTable, owner: str) -> str:
    """The one transaction that replaces the table with exactly ``table.body``."""
    if table.family not in FAMILIES:
        raise ValueError(f"unsupported nft family {table.family!r}")
    name = f"{table.family} {table_name(owner)}"
    body = "".join(f"\t{line}\n" if line.strip() else "\n" for line in table.body.splitlines())
    return f"table {name}\ndelete table {name}\ntable {name} {{\n{body}}}\n"


def render_delete(family: str, owner: str) -> str:
    return f"delete table {family} {table_name(owner)}\n"
