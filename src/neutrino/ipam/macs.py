"""MAC addresses: random ones under a configured base, and EUI-64 interface identifiers (pure)."""

from __future__ import annotations

import ipaddress
import re
import secrets

_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


def normalize_mac(value: str) -> str | None:
    """Lower-case colon form, or None when ``value`` is not a unicast-usable MAC."""
    mac = value.strip().lower().replace("-", ":")
    if not _MAC.match(mac):
        return None
    if mac in ("00:00:00:00:00:00", "ff:ff:ff:ff:ff:ff") or int(mac[:2], 16) & 1:
        return None
    return mac


def random_mac(base: str) -> str:
    """A MAC that keeps the base's leading non-zero octets (``fa:16:3e:00:00:00`` keeps three)."""
    octets = base.lower().split(":")
    keep = 3
    for i in range(6):
        if octets[i] != "00":
            keep = max(keep, i + 1)
    keep = min(keep, 5)
    tail = secrets.token_bytes(6 - keep)
    return ":".join(octets[:keep] + [f"{b:02x}" for b in tail])


def eui64(prefix: ipaddress.IPv6Network, mac: str) -> ipaddress.IPv6Address:
    """The SLAAC address a host with ``mac`` forms in a /64 ``prefix`` (RFC 4291 appendix A)."""
    raw = bytearray(bytes.fromhex(mac.replace(":", "")))
    raw[0] ^= 0x02
    iid = bytes(raw[:3]) + b"\xff\xfe" + bytes(raw[3:])
    return ipaddress.IPv6Address(int(prefix.network_address) | int.from_bytes(iid, "big"))
