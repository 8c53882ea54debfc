"""Tags of one resource (``/v2.0/<collection>/<id>/tags``): read, replace, add or remove one.

The owner (or an admin) changes tags; anyone who sees the resource reads them. A change of tags is a
change of the resource: new revision, one feed entry.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Table

from neutrino.context import RequestContext
from neutrino.db.schema import floatingips, networks, ports, routers, securitygroups, subnets
from neutrino.errors import NotFound
from neutrino.services import floatingips as fip_service
from neutrino.services import networks as net_service
from neutrino.services import ports as port_service
from neutrino.services import routers as router_service
from neutrino.services import secgroups, standard
from neutrino.services import subnets as subnet_service
from neutrino.services.core import require_owner, require_writer

# resource -> its table and its visibility-checking fetch
TAGGED: dict[str, tuple[Table, Callable[[Connection, RequestContext, str], Any]]] = {
    "network": (networks, net_service.fetch),
    "subnet": (subnets, subnet_service.fetch),
    "port": (ports, port_service.fetch),
    "router": (routers, router_service.fetch),
    "floatingip": (floatingips, fip_service.fetch),
    "security_group": (securitygroups, secgroups.fetch),
}


def _owned(conn: Connection, ctx: RequestContext, resource: str, rid: str, write: bool) -> None:
    _, fetch = TAGGED[resource]
    row = fetch(conn, ctx, rid)
    if write:
        require_writer(ctx, f"update_{resource}")
        require_owner(ctx, row.project_id, f"update_{resource}:tags")


def _current(conn: Connection, rid: str) -> list[str]:
    return standard.load_tags(conn, [rid]).get(rid, [])


def _store(conn: Connection, resource: str, rid: str, new: list[str]) -> None:
    standard.set_tags(conn, resource, rid, new)
    standard.bump(conn, TAGGED[resource][0], rid)
    # No change-feed row: no snapshot carries tags, so no agent has anything to do (a row naming neither
    # host nor network would wake every agent).


def show(conn: Connection, ctx: RequestContext, resource: str, rid: str) -> list[str]:
    _owned(conn, ctx, resource, rid, False)
    return _current(conn, rid)


def missing(resource: str, rid: str, tag: str) -> NotFound:
    return NotFound(f"Tag {tag} could not be found for {resource} {rid}.", type="TagNotFound")


def check(conn: Connection, ctx: RequestContext, resource: str, rid: str, tag: str) -> None:
    """TagNotFound unless the resource carries ``tag``."""
    if tag not in show(conn, ctx, resource, rid):
        raise missing(resource, rid, tag)


def replace(conn: Connection, ctx: RequestContext, resource: str, rid: str, new: list[str]) -> None:
    """All tags at once (``[]``: none)."""
    _owned(conn, ctx, resource, rid, True)
    _store(conn, resource, rid, new)


def add(conn: Connection, ctx: RequestContext, resource: str, rid: str, tag: str) -> None:
    _owned(conn, ctx, resource, rid, True)
    have = _current(conn, rid)
    if tag not in have:
        _store(conn, resource, rid, have + [tag])


def remove(conn: Connection, ctx: RequestContext, resource: str, rid: str, tag: str) -> None:
    _owned(conn, ctx, resource, rid, True)
    have = _current(conn, rid)
    if tag not in have:
        raise missing(resource, rid, tag)
    _store(conn, resource, rid, [t for t in have if t != tag])
