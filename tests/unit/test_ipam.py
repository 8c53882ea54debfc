"""Pure IPAM: pools, candidate walks, MACs, EUI-64."""

from __future__ import annotations

import ipaddress

import pytest

from neutrino.ipam.macs import eui64, normalize_mac, random_mac
from neutrino.ipam.pools import Pool, PoolError, default_pools, pool_size, validate_pools, walk

ip = ipaddress.ip_address
net = ipaddress.ip_network


def test_default_pools_skip_gateway_network_broadcast() -> None:
    assert default_pools(net("10.0.0.0/24"), ip("10.0.0.1")) == [Pool(ip("10.0.0.2"), ip("10.0.0.254"))]
    assert default_pools(net("10.0.0.0/24"), ip("10.0.0.100")) == [
        Pool(ip("10.0.0.1"), ip("10.0.0.99")), Pool(ip("10.0.0.101"), ip("10.0.0.254"))]
    assert default_pools(net("10.0.0.0/24"), None) == [Pool(ip("10.0.0.1"), ip("10.0.0.254"))]
    v6 = default_pools(net("2001:db8::/64"), ip("2001:db8::1"))
    assert v6[0].start == ip("2001:db8::2") and v6[0].end == ip("2001:db8::ffff:ffff:ffff:ffff")


@pytest.mark.parametrize("pools,gateway,message", [
    ([("10.0.1.1", "10.0.1.5")], None, "spans beyond"),
    ([("10.0.0.5", "10.0.0.2")], None, "after end"),
    ([("10.0.0.2", "10.0.0.9"), ("10.0.0.9", "10.0.0.20")], None, "overlapping"),
    ([("10.0.0.1", "10.0.0.9")], "10.0.0.1", "conflicts"),
    ([("10.0.0.0", "10.0.0.9")], None, "spans beyond"),
    ([("10.0.0.2", "10.0.0.255")], None, "spans beyond"),
])
def test_pool_validation(pools: list[tuple[str, str]], gateway: str | None, message: str) -> None:
    with pytest.raises(PoolError, match=message):
        validate_pools(net("10.0.0.0/24"), [Pool(ip(a), ip(b)) for a, b in pools], ip(gateway) if gateway else None)


def test_walk_wraps_from_cursor_and_visits_each_once() -> None:
    pools = [Pool(ip("10.0.0.2"), ip("10.0.0.4")), Pool(ip("10.0.0.8"), ip("10.0.0.9"))]
    assert [str(a) for a in walk(pools)] == ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.8", "10.0.0.9"]
    after = [str(a) for a in walk(pools, int(ip("10.0.0.4")))]
    assert after == ["10.0.0.8", "10.0.0.9", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
    assert pool_size(pools) == 5


def test_macs() -> None:
    assert normalize_mac("FA-16-3E-00-11-22") == "fa:16:3e:00:11:22"
    assert normalize_mac("01:00:5e:00:00:01") is None  # multicast
    assert normalize_mac("00:00:00:00:00:00") is None
    macs = {random_mac("fa:16:3e:00:00:00") for _ in range(200)}
    assert all(m.startswith("fa:16:3e:") for m in macs) and len(macs) > 190
    assert all(normalize_mac(m) == m for m in macs)
    assert random_mac("02:aa:bb:cc:00:00").startswith("02:aa:bb:cc:")


def test_eui64() -> None:
    got = eui64(ipaddress.IPv6Network("2001:db8::/64"), "fa:16:3e:11:22:33")
    assert got == ipaddress.IPv6Address("2001:db8::f816:3eff:fe11:2233")
