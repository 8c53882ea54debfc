"""Which feed rows wake which host's agent (sync.interest.concerns): its own host, its networks, its
routers; security group rows only for the hosts they name; rows whose reach the row cannot tell, every
host."""

from __future__ import annotations

import pytest

from neutrino.sync.interest import Change, Scope, concerns, is_broadcast, newest_concerning

H = Scope("h1", networks=frozenset({"n1", "n2"}), routers=frozenset({"r1"}))


@pytest.mark.parametrize(("change", "woken"), [
    (Change(1, "port", "p", "n1", "h2"), True),            # a port of another host on one of its networks
    (Change(1, "port", "p", "n3", "h2"), False),           # ... on a network it does not have
    (Change(1, "port", "p", "n3", "h1"), True),            # bound to it: a network it is about to have
    (Change(1, "port", "p", "n3", None), False),           # unbound elsewhere
    (Change(1, "subnet", "s", "n2", None), True),
    (Change(1, "network", "n1", "n1", None), True),
    (Change(1, "network", "n1", None, None), True),        # a network row naming only its id
    (Change(1, "network", "n9", None, None), False),
    (Change(1, "router", "r1", None, None), True),         # its router
    (Change(1, "router", "r2", None, None), False),
    (Change(1, "router_binding", "r2", None, "h1"), True),  # a router scheduled to it
    (Change(1, "router_binding", "r2", None, "h2"), False),
    (Change(1, "dhcp_binding", "n9", "n9", "h1"), True),
    (Change(1, "floatingip", "f", "n2", None), True),      # on the external network its router has
    (Change(1, "security_group", "g", None, "h1"), True),
    (Change(1, "security_group", "g", None, "h2"), False),
    (Change(1, "security_group", "g", None, None), False),  # no host carries the group
    (Change(1, "security_group_rule", "x", None, None), False),  # its group's rows name the hosts
    (Change(1, "agent", "a", None, None), True),           # reach unknown: everyone
    (Change(1, "port", "p", None, None), True),            # e.g. a port's tags: everyone
    (Change(1, "agent", "a", None, "h2"), False),
])
def test_concerns(change: Change, woken: bool) -> None:
    assert concerns(change, H) is woken
    if woken and change.host not in (None, H.host) and change.network_id is None:
        pytest.fail("a row naming another host and no network never concerns this one")


def test_broadcast_rows_concern_every_host() -> None:
    for change in (Change(1, "agent", "a"), Change(1, "port", "p")):
        assert is_broadcast(change)
        assert concerns(change, Scope("anyone"))
    assert not is_broadcast(Change(1, "security_group", "g"))
    assert not is_broadcast(Change(1, "router", "r1"))


def test_newest_concerning() -> None:
    rows = [Change(5, "port", "p", "n1", "h2"), Change(6, "port", "q", "n9", "h2"), Change(7, "router", "r2")]
    assert newest_concerning(rows, H) == 5
    assert newest_concerning(rows, None) == 7   # no scope: every change
    assert newest_concerning([], H) == 0
