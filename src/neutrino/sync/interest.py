"""Which changes concern which host: the feed wakes an agent only for those.

A host's ``Scope``: the host itself, its networks (a port bound to it, its DHCP, its L3 agent's routers'
networks: the networks its snapshot has) and its L3 agent's routers. A change concerns the host when it
names the host, one of those networks or one of those routers; a change that names neither a host nor a
network and whose reach the row cannot tell (an agent registering, an agent's admin state) concerns
every host (tags make no row: no snapshot has them); security group changes are written once per host
they concern.

Every change that gives a host something it did not have names that host (a port bound to it, a network
or a router scheduled to it, a router interface on its router: the port, bound to it), so the scope read
when a wait starts holds for that wait.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy import Connection, select

from neutrino.db.schema import agents, changes, dhcp_bindings, ports, router_bindings
from neutrino.intent.model import ROUTER_OWNERS, AgentType

# Rows without host and network whose resource id says whose they are.
SCOPED_BY_ID = ("network", "router")
# Kinds whose changes are announced once per host they concern (services/secgroups.announce: the hosts
# with members of the group or filtering by it); a row of theirs naming no host concerns no host.
HOST_NAMED = ("security_group", "security_group_rule")


@dataclass(frozen=True, slots=True)
class Change:
    """One row of the change feed, as much of it as routing it needs."""
    seq: int
    resource: str
    resource_id: str
    network_id: str | None = None
    host: str | None = None


@dataclass(frozen=True, slots=True)
class Scope:
    host: str
    networks: frozenset[str] = frozenset()
    routers: frozenset[str] = frozenset()


def concerns(change: Change, scope: Scope) -> bool:
    if change.host == scope.host or (change.network_id is not None and change.network_id in scope.networks):
        return True
    if change.host is not None or change.network_id is not None or change.resource in HOST_NAMED:
        return False
    if change.resource == "network":
        return change.resource_id in scope.networks
    if change.resource == "router":
        return change.resource_id in scope.routers
    return True


def is_broadcast(change: Change) -> bool:
    """A change that concerns every host, whatever its scope."""
    return change.host is None and change.network_id is None and change.resource not in SCOPED_BY_ID + HOST_NAMED


def of_host(conn: Connection, host: str) -> Scope:
    """The host's scope now (three indexed reads)."""
    nets = {r[0] for r in conn.execute(select(ports.c.network_id).where(ports.c.binding_host_id == host).distinct())}
    nets |= {r[0] for r in conn.execute(
        select(dhcp_bindings.c.network_id).join(agents, agents.c.id == dhcp_bindings.c.agent_id)
        .where(agents.c.host == host, agents.c.agent_type == AgentType.DHCP.value))}
    routers = {r[0] for r in conn.execute(
        select(router_bindings.c.router_id).join(agents, agents.c.id == router_bindings.c.agent_id)
        .where(agents.c.host == host, agents.c.agent_type == AgentType.L3.value))}
    if routers:
        nets |= {r[0] for r in conn.execute(select(ports.c.network_id).where(
            ports.c.device_id.in_(sorted(routers)), ports.c.device_owner.in_(sorted(ROUTER_OWNERS))).distinct())}
    return Scope(host, frozenset(nets), frozenset(routers))


def read(conn: Connection, after: int, limit: int) -> list[Change]:
    """Up to ``limit`` changes after ``after``, in order."""
    rows = conn.execute(select(changes.c.seq, changes.c.resource, changes.c.resource_id, changes.c.network_id,
                               changes.c.host).where(changes.c.seq > after).order_by(changes.c.seq).limit(limit))
    return [Change(*r) for r in rows]


def newest_concerning(found: Iterable[Change], scope: Scope | None) -> int:
    """The seq of the newest change in ``found`` that concerns ``scope`` (every change: None); 0 if none."""
    seq = 0
    for change in found:
        if scope is None or concerns(change, scope):
            seq = change.seq
    return seq
