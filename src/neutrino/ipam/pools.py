"""Allocation pools: defaults, validation, membership and candidate walks (pure)."""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class PoolError(ValueError):
    """A pool definition that Neutron would refuse; the message is shown to the user."""


@dataclass(frozen=True, slots=True)
class Pool:
    start: IPAddress
    end: IPAddress

    @property
    def size(self) -> int:
        return int(self.end) - int(self.start) + 1

    def __contains__(self, ip: object) -> bool:
        return isinstance(ip, (ipaddress.IPv4Address, ipaddress.IPv6Address)) \
            and ip.version == self.start.version and int(self.start) <= int(ip) <= int(self.end)

    def as_dict(self) -> dict[str, str]:
        return {"start": str(self.start), "end": str(self.end)}


def usable_range(cidr: IPNetwork) -> tuple[int, int]:
    """First and last address a host may use: IPv4 skips network and broadcast (not for /31, /32);
    IPv6 skips the subnet-router anycast address (the prefix itself)."""
    first, last = int(cidr.network_address), int(cidr.broadcast_address)
    if cidr.version == 4:
        if cidr.prefixlen >= 31:
            return first, last
        return first + 1, last - 1
    if cidr.prefixlen >= 127:
        return first, last
    return first + 1, last


def default_pools(cidr: IPNetwork, gateway: IPAddress | None) -> list[Pool]:
    """The whole usable range minus the gateway, as one or two pools."""
    lo, hi = usable_range(cidr)
    make = ipaddress.ip_address
    if gateway is None or not lo <= int(gateway) <= hi:
        return [Pool(make(lo), make(hi))] if lo <= hi else []
    g = int(gateway)
    pools = []
    if lo <= g - 1:
        pools.append(Pool(make(lo), make(g - 1)))
    if g + 1 <= hi:
        pools.append(Pool(make(g + 1), make(hi)))
    return pools


def validate_pools(cidr: IPNetwork, pools: Sequence[Pool], gateway: IPAddress | None) -> list[Pool]:
    """Check pools lie inside the subnet, are ordered, do not overlap each other or the gateway."""
    lo, hi = usable_range(cidr)
    ordered = sorted(pools, key=lambda p: int(p.start))
    for pool in ordered:
        if pool.start.version != cidr.version or pool.end.version != cidr.version:
            raise PoolError(f"Allocation pool {pool.start}-{pool.end} does not match the IP version of {cidr}")
        if int(pool.start) > int(pool.end):
            raise PoolError(f"Invalid allocation pool: start {pool.start} is after end {pool.end}")
        if not (lo <= int(pool.start) and int(pool.end) <= hi):
            raise PoolError(f"The allocation pool {pool.start}-{pool.end} spans beyond the subnet cidr {cidr}.")
        if gateway is not None and gateway in pool:
            raise PoolError(f"Gateway ip {gateway} conflicts with allocation pool {pool.start}-{pool.end}")
    for a, b in itertools.pairwise(ordered):
        if int(b.start) <= int(a.end):
            raise PoolError(f"Found overlapping allocation pools: {a.start}-{a.end} and {b.start}-{b.end}")
    return ordered


def in_pools(ip: IPAddress, pools: Sequence[Pool]) -> bool:
    return any(ip in p for p in pools)


def walk(pools: Sequence[Pool], start_after: int | None = None) -> Iterator[IPAddress]:
    """Every pool address once, beginning after ``start_after`` (an integer address) and wrapping around.

    The server keeps a cursor per subnet so that consecutive allocations do not rescan taken addresses.
    """
    ordered = sorted(pools, key=lambda p: int(p.start))
    if not ordered:
        return
    make = ipaddress.ip_address
    spans = [(int(p.start), int(p.end)) for p in ordered]
    begin = spans[0][0] if start_after is None else start_after + 1
    # First pass: from `begin` to the end of the pools; second: from the start up to `begin`.
    for lo, hi in spans:
        for n in range(max(lo, begin), hi + 1):
            yield make(n)
    for lo, hi in spans:
        for n in range(lo, min(hi, begin - 1) + 1):
            yield make(n)


def pool_size(pools: Sequence[Pool]) -> int:
    return sum(p.size for p in pools)
