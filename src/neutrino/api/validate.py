"""Validators for request attributes: each takes the raw JSON value and returns it converted or raises.

Messages follow Neutron's "Invalid input for <attr>. Reason: <why>." so users and tooling see what
they know. Converters return plain JSON-able values (strings, ints, lists of dicts) normalized, because
what is stored and echoed back must be canonical (``10.0.0.0/24``, lower-case MACs).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import re
import uuid
from collections.abc import Callable
from typing import Any

from neutrino.errors import BadRequest
from neutrino.ipam.macs import normalize_mac

Validator = Callable[[Any], Any]


class AttributeError_(BadRequest):
    type = "HTTPBadRequest"


def invalid(attr: str, reason: str) -> AttributeError_:
    return AttributeError_(f"Invalid input for {attr}. Reason: {reason}.")


def string(max_len: int = 255) -> Validator:
    def check(value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError(f"'{value}' is not a valid string")
        if "\x00" in value:  # no database stores NUL in text (PostgreSQL refuses it)
            raise ValueError(f"{value!r} contains a NUL character")
        if len(value) > max_len:
            raise ValueError(f"'{value}' exceeds maximum length of {max_len}")
        return value
    return check


def boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
        return value.lower() in ("true", "1")
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"'{value}' cannot be converted to boolean")


def integer(lo: int | None = None, hi: int | None = None) -> Validator:
    def check(value: Any) -> int:
        if isinstance(value, bool):
            raise ValueError(f"'{value}' is not an integer")
        try:
            n = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"'{value}' is not an integer") from None
        if isinstance(value, float) and value != n:
            raise ValueError(f"'{value}' is not an integer")
        if lo is not None and n < lo:
            raise ValueError(f"'{n}' is too small - must be at least '{lo}'")
        if hi is not None and n > hi:
            raise ValueError(f"'{n}' is too large - must be no larger than '{hi}'")
        return n
    return check


def timestamp(value: Any) -> dt.datetime:
    """An ISO 8601 time as the naive UTC the timestamp columns hold (no zone: UTC). A valid time whose
    UTC lies outside years 1..9999 becomes the earliest or latest time there is."""
    try:
        ts = dt.datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        ts = None
    if ts is None:
        raise ValueError(f"'{value}' is not an ISO 8601 time such as 2026-01-31T12:00:00Z")
    if ts.tzinfo is not None:
        try:
            ts = ts.astimezone(dt.UTC).replace(tzinfo=None)
        except OverflowError:
            ts = dt.datetime.min if ts.year == 1 else dt.datetime.max
    return ts


def uuid_str(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"'{value}' is not a valid UUID")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise ValueError(f"'{value}' is not a valid UUID") from None


def _no_zone(value: str, what: str) -> None:
    """IPv6 zone ids (``fe80::1%eth0``) name an interface of one host: never part of a Neutron address,
    and the text after ``%`` would travel verbatim into config files."""
    if "%" in value or not value.isprintable():
        raise ValueError(f"'{value}' is not a valid {what}")


def ip_address(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"'{value}' is not a valid IP address")
    _no_zone(value, "IP address")
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"'{value}' is not a valid IP address") from None
    if ip.version == 4 and not re.fullmatch(r"\d{1,3}(\.\d{1,3}){3}", value):
        raise ValueError(f"'{value}' is not an accepted IP address, '{ip}' is recommended")
    return str(ip)


def ip_address_or_none(value: Any) -> str | None:
    return None if value is None else ip_address(value)


def subnet_cidr(value: Any) -> str:
    if not isinstance(value, str) or "/" not in value:
        raise ValueError(f"'{value}' is not a valid IP subnet")
    _no_zone(value, "IP subnet")
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        raise ValueError(f"'{value}' is not a valid IP subnet") from None
    if iface.ip != iface.network.network_address:
        raise ValueError(f"'{value}' isn't a recommended CIDR, '{iface.network}' is recommended")
    return str(iface.network)


def mac_address(value: Any) -> str:
    mac = normalize_mac(value) if isinstance(value, str) else None
    if mac is None:
        raise ValueError(f"'{value}' is not a valid MAC address")
    return mac


def list_of(item: Validator, *, unique: bool = False) -> Validator:
    def check(value: Any) -> list[Any]:
        if not isinstance(value, list):
            raise ValueError(f"'{value}' is not a list")
        out = [item(v) for v in value]
        if unique and len({repr(v) for v in out}) != len(out):
            raise ValueError(f"Duplicate items in the list: '{', '.join(map(str, value))}'")
        return out
    return check


def one_of(*choices: str | None) -> Validator:
    def check(value: Any) -> Any:
        if value not in choices:
            shown = ", ".join(str(c) for c in choices if c is not None)
            raise ValueError(f"'{value}' is not in [{shown}]")
        return value
    return check


def dict_of(spec: dict[str, tuple[bool, Validator]]) -> Validator:
    """A dict with known keys: ``{key: (required, validator)}``; unknown keys are refused."""
    def check(value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ValueError(f"'{value}' is not a dictionary")
        unknown = sorted(set(value) - set(spec))
        if unknown:
            raise ValueError(f"Unrecognized keys {unknown} in '{value}'")
        out: dict[str, Any] = {}
        for key, (required, validator) in spec.items():
            if key in value:
                out[key] = validator(value[key])
            elif required:
                raise ValueError(f"Validation of dictionary's keys failed. Expected keys: {set(spec)} "
                                 f"Provided keys: {set(value)}")
        return out
    return check


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of a JSON value, giving up (returning more than ``limit``) past ``limit``."""
    stack = [(value, 1)]
    deepest = 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            break
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def json_dict(max_depth: int = 16) -> Validator:
    """A free-form JSON object (binding:profile, agent configurations), nested at most ``max_depth``."""
    def check(value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ValueError(f"'{value}' is not a dictionary")
        if _depth(value, max_depth) > max_depth:
            raise ValueError(f"the dictionary is nested deeper than {max_depth} levels")
        return value
    return check


host_route = dict_of({"destination": (True, subnet_cidr), "nexthop": (True, ip_address)})
allocation_pool = dict_of({"start": (True, ip_address), "end": (True, ip_address)})
fixed_ip = dict_of({"subnet_id": (False, uuid_str), "ip_address": (False, ip_address)})
address_pair = dict_of({"ip_address": (True, lambda v: _ip_or_cidr(v)), "mac_address": (False, mac_address)})
MAX_ADDRESS_PAIRS = 10  # per port, Neutron's default max_allowed_address_pair


def address_pairs(value: Any) -> list[dict[str, str]]:
    """A port's allowed address pairs: each valid, none twice (the same IP and MAC as given), at most
    ``MAX_ADDRESS_PAIRS`` — each one widens what the port may send as."""
    pairs: list[dict[str, str]] = list_of(address_pair)(value)
    if len(pairs) > MAX_ADDRESS_PAIRS:
        raise BadRequest(f"The number of allowed address pair exceeds the maximum {MAX_ADDRESS_PAIRS}.",
                         type="AllowedAddressPairExhausted")
    seen: set[tuple[str | None, str]] = set()
    for pair in pairs:
        key = (pair.get("mac_address"), pair["ip_address"])
        if key in seen:
            raise BadRequest(f"Request contains duplicate address pair: mac_address {key[0]} ip_address {key[1]}.",
                             type="DuplicateAddressPairInRequest")
        seen.add(key)
    return pairs


def single_line(max_len: int = 255) -> Validator:
    """A non-empty string without control characters: values that end up in a daemon's config file,
    where a newline would start a line of the tenant's choosing."""
    base = string(max_len)

    def check(value: Any) -> str:
        text: str = base(value)
        if not text.strip():
            raise ValueError(f"'{value}' Blank strings are not permitted")
        if not text.isprintable():
            raise ValueError(f"{text!r} contains control characters")
        return text
    return check


# dnsmasq option names: a name (bootfile-name), a number (67), optionally behind tag matches as Ironic uses
# them (tag:ipxe,bootfile-name or tag:!ipxe,67).
_OPT_NAME = re.compile(r"(tag:!?[A-Za-z0-9_.-]+,)*[A-Za-z0-9][A-Za-z0-9-]*")


_single_line = single_line(255)


def dhcp_opt_name(value: Any) -> str:
    name: str = _single_line(value)
    if not _OPT_NAME.fullmatch(name):
        raise ValueError(f"'{name}' is not a valid DHCP option name")
    return name


def ip_version(value: Any) -> int:
    if isinstance(value, bool) or value not in (4, 6, "4", "6"):
        raise ValueError(f"'{value}' is not in [4, 6]")
    return int(value)


extra_dhcp_opt = dict_of({
    "opt_name": (True, dhcp_opt_name),
    "opt_value": (True, lambda v: None if v is None else _single_line(v)),
    "ip_version": (False, ip_version),
})


def _ip_or_cidr(value: Any) -> str:
    if isinstance(value, str) and "/" in value:
        _no_zone(value, "IP address")
        try:
            return str(ipaddress.ip_network(value, strict=True))
        except ValueError:
            raise ValueError(f"'{value}' is not a valid IP address") from None
    return ip_address(value)


def tag(value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 255 or "," in value or "/" in value or \
            "\x00" in value:
        raise ValueError(f"'{value}' is not a valid tag")
    return value
