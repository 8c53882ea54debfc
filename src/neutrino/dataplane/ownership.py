"""Which kernel objects are neutrino's, and which neutrino's.

Two neutrinos (two state directories, a test run next to a real one) or a Linux-bridge Neutron agent may
share one machine and use the same names (``brq<11>``, ``tap<11>``, ``qdhcp-<uuid>``). A name says what an
object is for, never whose it is: every link neutrino makes carries a mark in its ifalias naming the
owner id of the neutrino that made it (a random id kept in its state directory, stable across restarts)
and the creator (which part of neutrino made it). Sweeps delete only links whose mark is this owner's.

Namespaces cannot carry an ifalias. Their mark is a record in the owner's state directory
(``<state>/netns/<name>``), written before the namespace is created and removed after it is deleted
(see ``NamespaceRecords``): a namespace of another neutrino has no record here, so it is never swept.

Routes carry no name or alias: every route neutrino makes carries its own route protocol number
(``ROUTE_PROTOCOL`` in rtm_protocol, as Calico marks its routes), and a sweep removes only routes with that
protocol in namespaces with this owner's record, or out of links with this owner's mark.

``PREFIXES`` is the one table of the names neutrino gives: prefix -> creator -> sweep scope.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

MARK_PREFIX = "neutrino"
OWNER_FILE = "owner-id"
# rtm_protocol of every route neutrino makes ('N'); not in iproute2's rt_protos (static is 4, bird 12,
# babel 42, Calico's 80, bgp 186...), so `ip route show proto 78` lists exactly neutrino's routes.
ROUTE_PROTOCOL = 78


class Creator(StrEnum):
    AGENT = "agent"   # the agent's link plane: bridges, VXLAN, its own veths, namespaces
    LAB = "lab"       # lab instances (taps standing in for a hypervisor's)


class Scope(StrEnum):
    HOST = "host"            # a link in the host's (the agent's) namespace
    NAMESPACE = "namespace"  # a link inside one of neutrino's namespaces
    NETNS = "netns"          # a network namespace (marked by a record, not an ifalias)


@dataclass(frozen=True, slots=True)
class OwnedPrefix:
    prefix: str
    creator: Creator
    scope: Scope
    what: str


PREFIXES: tuple[OwnedPrefix, ...] = (
    OwnedPrefix("brq", Creator.AGENT, Scope.HOST, "a network's bridge"),
    OwnedPrefix("vxlan-", Creator.AGENT, Scope.HOST, "a VXLAN network's uplink"),
    OwnedPrefix("tap", Creator.AGENT, Scope.HOST, "host end of an agent-owned veth (DHCP port)"),
    OwnedPrefix("tap", Creator.LAB, Scope.HOST, "a lab instance's tap"),
    OwnedPrefix("ns-", Creator.AGENT, Scope.NAMESPACE, "DHCP port's end inside qdhcp-"),
    OwnedPrefix("qr-", Creator.AGENT, Scope.NAMESPACE, "router interface inside qrouter-"),
    OwnedPrefix("qg-", Creator.AGENT, Scope.NAMESPACE, "router gateway inside qrouter-"),
    OwnedPrefix("qdhcp-", Creator.AGENT, Scope.NETNS, "a network's DHCP namespace"),
    OwnedPrefix("qrouter-", Creator.AGENT, Scope.NETNS, "a router's namespace"),
)


def prefixes(creator: Creator | str, scope: Scope) -> tuple[str, ...]:
    """The name prefixes ``creator`` gives objects of ``scope``."""
    return tuple(sorted({p.prefix for p in PREFIXES if p.creator == creator and p.scope == scope}))


def owner_id(state_dir: Path) -> str:
    """This neutrino's owner id: kept in ``<state_dir>/owner-id`` (``state_dir`` is the neutrino state
    directory, the ``state_dir`` setting), made once at random and stable from then on."""
    path = Path(state_dir) / OWNER_FILE
    try:
        found = path.read_text().strip()
        if found:
            return found
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    new = secrets.token_hex(8)
    tmp = path.with_name(f"{OWNER_FILE}.{os.getpid()}.tmp")
    tmp.write_text(new + "\n")
    try:
        os.link(tmp, path)  # first writer wins; a concurrent one reads the winner's id
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    return path.read_text().strip()


def mark(owner: str, creator: Creator | str) -> str:
    """The ifalias of a link ``creator`` of neutrino ``owner`` made."""
    return f"{MARK_PREFIX}:{owner}:{creator}"


def parse(alias: str | None) -> tuple[str, str] | None:
    """(owner, creator) of a mark; None for anything else (unmarked, another tool's alias)."""
    if not alias:
        return None
    parts = alias.split(":")
    if len(parts) != 3 or parts[0] != MARK_PREFIX or not parts[1] or not parts[2]:
        return None
    return parts[1], parts[2]


def owned_by(alias: str | None, owner: str, creator: Creator | str | None = None) -> bool:
    """Whether a link with this ifalias was made by neutrino ``owner`` (and by ``creator``, if given)."""
    found = parse(alias)
    return found is not None and found[0] == owner and (creator is None or found[1] == str(creator))


class NamespaceRecords:
    """The namespaces this neutrino made: one empty file per namespace under ``<state>/netns/``."""

    def __init__(self, state_dir: Path) -> None:
        self.root = Path(state_dir) / "netns"

    def names(self) -> set[str]:
        try:
            return {p.name for p in self.root.iterdir()}
        except FileNotFoundError:
            return set()

    def add(self, name: str) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / name).touch()

    def remove(self, name: str) -> None:
        (self.root / name).unlink(missing_ok=True)
