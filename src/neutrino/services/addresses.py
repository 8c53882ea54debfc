"""IPAM against the database: turn a port's requested fixed_ips into concrete allocations.

Runs inside the port's write transaction. Candidates come from ``ipam.pools.walk`` starting at a
per-subnet cursor and are checked in batches against ``ipallocations``; the unique key on
(subnet_id, ip_address) makes a double allocation impossible, and a violation retries the transaction.
On PostgreSQL the subnet row is locked first so concurrent allocations on one subnet queue instead of
colliding.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, select

from neutrino.db.schema import ipallocations, subnets
from neutrino.errors import BadRequest, Conflict, InvalidInput
from neutrino.intent.model import ROUTER_OWNERS
from neutrino.ipam.macs import eui64
from neutrino.ipam.pools import IPAddress, Pool, usable_range, walk
from neutrino.services.core import Core

AUTO_ADDRESS_MODES = ("slaac", "dhcpv6-stateless")
BATCH = 64


@dataclass(frozen=True, slots=True)
class SubnetInfo:
    id: str
    network_id: str
    cidr: ipaddress.IPv4Network | ipaddress.IPv6Network
    gateway: IPAddress | None
    pools: tuple[Pool, ...]
    address_mode: str | None

    @property
    def auto_address(self) -> bool:
        return self.cidr.version == 6 and self.address_mode in AUTO_ADDRESS_MODES


def subnet_info(row: Any) -> SubnetInfo:
    return SubnetInfo(
        id=row.id, network_id=row.network_id, cidr=ipaddress.ip_network(row.cidr),
        gateway=ipaddress.ip_address(row.gateway_ip) if row.gateway_ip else None,
        pools=tuple(Pool(ipaddress.ip_address(p["start"]), ipaddress.ip_address(p["end"]))
                    for p in row.allocation_pools),
        address_mode=row.ipv6_address_mode,
    )


def network_subnets(conn: Connection, network_id: str) -> list[SubnetInfo]:
    rows = conn.execute(select(subnets).where(subnets.c.network_id == network_id)
                        .order_by(subnets.c.created_at, subnets.c.id)).all()
    return [subnet_info(r) for r in rows]


def no_more(network_id: str) -> Conflict:
    return Conflict(f"No more IP addresses available on network {network_id}.",
                    type="IpAddressGenerationFailure")


def _taken(conn: Connection, subnet_id: str, batch: list[str]) -> set[str]:
    rows = conn.execute(select(ipallocations.c.ip_address).where(
        ipallocations.c.subnet_id == subnet_id, ipallocations.c.ip_address.in_(batch)))
    return {r[0] for r in rows}


def _batches(it: Iterator[IPAddress]) -> Iterator[list[IPAddress]]:
    batch: list[IPAddress] = []
    for ip in it:
        batch.append(ip)
        if len(batch) == BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def next_free(core: Core, conn: Connection, subnet: SubnetInfo, avoid: set[str]) -> IPAddress | None:
    cursor = core.cursors.get(subnet.id)
    for batch in _batches(walk(subnet.pools, cursor)):
        texts = [str(ip) for ip in batch]
        taken = _taken(conn, subnet.id, texts) | avoid
        for ip, text in zip(batch, texts, strict=True):
            if text not in taken:
                core.cursors[subnet.id] = int(ip)
                return ip
    return None


def check_specific(conn: Connection, subnet: SubnetInfo, ip: IPAddress, device_owner: str,
                   mine: set[str]) -> None:
    if ip not in subnet.cidr:
        raise BadRequest(f"IP address {ip} is not a valid IP for the specified subnet.", type="InvalidIpForSubnet")
    lo, hi = usable_range(subnet.cidr)
    if not lo <= int(ip) <= hi:
        raise BadRequest(f"IP address {ip} is not a valid IP for the specified subnet.", type="InvalidIpForSubnet")
    if subnet.gateway == ip and device_owner not in ROUTER_OWNERS:
        raise Conflict(f"IP address {ip} already allocated in subnet {subnet.id}", type="IpAddressAlreadyAllocated")
    if str(ip) not in mine and _taken(conn, subnet.id, [str(ip)]):
        raise Conflict(f"IP address {ip} already allocated in subnet {subnet.id}", type="IpAddressAlreadyAllocated")


def allocate(core: Core, conn: Connection, network_id: str, requested: Sequence[dict[str, Any]] | None,
             mac: str, device_owner: str, keep: Sequence[tuple[str, str]] = ()) -> list[tuple[str, str]]:
    """Concrete (subnet_id, ip) pairs for a port. ``requested`` None means Neutron's default choice;
    ``keep`` are the port's current allocations that may be requested again without conflict."""
    all_subnets = network_subnets(conn, network_id)
    by_id = {s.id: s for s in all_subnets}
    mine = {ip for _, ip in keep}
    out: list[tuple[str, str]] = []
    chosen: set[str] = set()

    def add(subnet: SubnetInfo, ip: IPAddress) -> None:
        out.append((subnet.id, str(ip)))
        chosen.add(str(ip))

    if requested is None:
        for subnet, ip in _default_choice(core, conn, all_subnets, network_id):
            add(subnet, ip)
        requested = ()
    for entry in requested:
        subnet = _resolve_subnet(entry, by_id, all_subnets, network_id)
        if "ip_address" in entry:
            ip = ipaddress.ip_address(entry["ip_address"])
            if str(ip) in chosen:
                raise InvalidInput(f"Duplicate IP address '{ip}'")
            check_specific(conn, subnet, ip, device_owner, mine)
            add(subnet, ip)
        elif subnet.auto_address:
            add(subnet, eui64(subnet.cidr, mac))  # type: ignore[arg-type]
        else:
            ip_or_none = next_free(core, conn, subnet, chosen)
            if ip_or_none is None:
                raise no_more(network_id)
            add(subnet, ip_or_none)
    # SLAAC subnets address every port (but router ports choose their own).
    if device_owner not in ROUTER_OWNERS:
        for subnet in all_subnets:
            if subnet.auto_address and not any(sid == subnet.id for sid, _ in out):
                add(subnet, eui64(subnet.cidr, mac))  # type: ignore[arg-type]
    return out


def _resolve_subnet(entry: dict[str, Any], by_id: dict[str, SubnetInfo], all_subnets: list[SubnetInfo],
                    network_id: str) -> SubnetInfo:
    if "subnet_id" in entry:
        subnet = by_id.get(entry["subnet_id"])
        if subnet is None:
            raise InvalidInput(f"Failed to create port on network {network_id}, because fixed_ips included "
                               f"invalid subnet {entry['subnet_id']}")
        return subnet
    if "ip_address" not in entry:
        raise InvalidInput("IP allocation requires subnet_id or ip_address")
    ip = ipaddress.ip_address(entry["ip_address"])
    for subnet in all_subnets:
        if ip in subnet.cidr:
            return subnet
    raise InvalidInput(f"IP address {ip} is not a valid IP for any of the subnets on network {network_id}")


def _default_choice(core: Core, conn: Connection, all_subnets: list[SubnetInfo],
                    network_id: str) -> list[tuple[SubnetInfo, IPAddress]]:
    """Neutron's default: one IPv4 address (first subnet with room), one stateful IPv6 address."""
    out: list[tuple[SubnetInfo, IPAddress]] = []
    for version in (4, 6):
        candidates = [s for s in all_subnets if s.cidr.version == version and not s.auto_address]
        for subnet in candidates:
            ip = next_free(core, conn, subnet, set())
            if ip is not None:
                out.append((subnet, ip))
                break
        else:
            if candidates:
                raise no_more(network_id)
    return out
