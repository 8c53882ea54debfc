"""A host's snapshot sent as what changed since the one its agent holds (pure).

Most of a host's snapshot is its networks' pieces -- the network, its subnets, every port on it -- and a
change touches few networks: a port create names its own network; a default-group port changes only the
group's members, which every host gets, and no host's networks. So a fetch that names the revision the
agent holds (``since``) gets back, for each network the change feed says no change touched since then,
only its id (``kept``): the agent takes that network's pieces from the snapshot it holds (``merge``). The
server decides what is unchanged (sync/snapshot.py ``unchanged``); this module is what both sides agree a
kept network means.

Only a network whose every port the snapshot carries can be kept (a port network: one with a port bound
to the host, or DHCP-scheduled to it); a network a host has only for its routers carries just the
routers' ports, and comes whole every time. An agent that cannot merge (its snapshot lacks a kept
network as a port network) asks again without ``since``; so does every heartbeat's fetch, which re-reads
everything as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection

from neutrino.intent.model import NetworkId, Snapshot


def port_networks(snap: Snapshot, host: str) -> frozenset[NetworkId]:
    """The networks ``snap`` carries with all their ports: scheduled to the host's DHCP or with a port
    bound to it (sync/snapshot.py ``build`` reads all ports of exactly these)."""
    return snap.dhcp_networks | {p.network_id for p in snap.ports.values() if p.host == host}


def without(snap: Snapshot, kept: Collection[NetworkId]) -> Snapshot:
    """``snap`` without the pieces of the networks ``kept``: what goes on the wire."""
    if not kept:
        return snap
    gone = frozenset(kept)
    return dataclasses.replace(
        snap, networks={n: v for n, v in snap.networks.items() if n not in gone},
        subnets={s: v for s, v in snap.subnets.items() if v.network_id not in gone},
        ports={p: v for p, v in snap.ports.items() if v.network_id not in gone})


def merge(base: Snapshot, part: Snapshot, kept: Collection[NetworkId], host: str) -> Snapshot | None:
    """The whole snapshot from ``part`` (``without``'s output) and the pieces of the networks ``kept``
    taken from ``base``; None when ``base`` does not carry each of them whole (ask for all of it)."""
    keep = frozenset(kept)
    if not keep:
        return part
    if not keep <= port_networks(base, host) or not keep <= base.networks.keys():
        return None
    networks = dict(part.networks)
    networks.update((n, base.networks[n]) for n in sorted(keep))
    subnets = dict(part.subnets)
    subnets.update((s, v) for s, v in base.subnets.items() if v.network_id in keep)
    ports = dict(part.ports)
    ports.update((p, v) for p, v in base.ports.items() if v.network_id in keep)
    return dataclasses.replace(part, networks=networks, subnets=subnets, ports=ports)
