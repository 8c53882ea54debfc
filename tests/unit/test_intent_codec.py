"""The intent's JSON form round-trips exactly, for every dataclass of the contract and every field.

Samples are made from the type annotations, so a new type or field is covered without touching this test.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import ipaddress
import json
import types
import typing
from typing import Any

import pytest

from neutrino.intent import codec, model, report
from neutrino.intent.model import NetworkId, PortSpec, Snapshot

CONTRACT = [cls for module in (model, report) for _, cls in inspect.getmembers(module, inspect.isclass)
            if dataclasses.is_dataclass(cls) and cls.__module__ == module.__name__]


def sample(kind: Any, n: int = 1) -> Any:
    """A value of ``kind`` unlike its default (so a field the codec dropped would show)."""
    supertype = getattr(kind, "__supertype__", None)
    if supertype is not None:
        return sample(supertype, n)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in args if a is not type(None)]
        if options[0] is ipaddress.IPv4Address:
            return ipaddress.ip_address(f"2001:db8::{n}")  # the second member: unions decode by value
        if options[0] is ipaddress.IPv4Network:
            return ipaddress.ip_network(f"2001:db8:{n}::/64")
        return sample(options[0], n)
    if origin is tuple:
        return (sample(args[0], n), sample(args[0], n + 1)) if args[-1] is Ellipsis else \
            tuple(sample(a, n) for a in args)
    if origin in (frozenset, list, set):
        return origin([sample(args[0], n), sample(args[0], n + 1)])
    if origin is dict:
        if args[1] is Any:
            return {"k": [1, {"x": None}]}
        return {sample(args[0], n): sample(args[1], n)}
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        values = {}
        for i, f in enumerate(dataclasses.fields(kind)):
            value = sample(hints[f.name], n + i)
            values[f.name] = (not value) if isinstance(value, bool) and value == f.default else value
        return typing.cast(Any, kind)(**values)
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return list(kind)[-1]
    if kind is bool:
        return True
    if kind is int:
        return 4000 + n
    if kind is float:
        return 0.5 + n
    if kind is str:
        return f"s-{n}"
    raise AssertionError(f"no sample for {kind}")


@pytest.mark.parametrize("cls", CONTRACT, ids=lambda c: c.__name__)
def test_every_type_round_trips_through_json(cls: type) -> None:
    value = sample(cls)
    wire = json.loads(json.dumps(codec.encode(value)))
    assert codec.decode(cls, wire) == value


def test_the_contract_is_all_there() -> None:
    names = {c.__name__ for c in CONTRACT}
    assert {"Snapshot", "PortSpec", "SubnetSpec", "NetworkSpec", "AgentReport", "PortStatus", "RouterSpec",
            "FloatingIpSpec"} <= names


def test_missing_fields_take_their_defaults_and_bad_data_is_refused() -> None:
    port = codec.decode(PortSpec, {"id": "p", "network_id": "n", "mac_address": "fa:16:3e:00:00:01",
                                   "fixed_ips": [], "device_owner": "compute:lab", "device_id": "", "host": None})
    assert port.admin_state_up is True and port.extra_dhcp_opts == ()
    bad_values: list[Any] = [[], {"revision": "7"}, {"revision": 7, "networks": {"n": {"id": "n"}}},
                {"revision": 7, "dhcp_networks": "n"}, {"revision": True}]
    for bad in bad_values:
        with pytest.raises(codec.CodecError):
            codec.decode(Snapshot, bad)
    assert codec.decode(Snapshot, {"revision": 7}).networks == {}
    assert codec.encode(frozenset({NetworkId("b"), NetworkId("a")})) == ["a", "b"]  # stable bytes


def test_addresses_are_parsed_once_and_anything_else_is_refused() -> None:
    """An agent decodes the same addresses in every snapshot it fetches (a large security group's
    members): each text is parsed once and decodes to the same immutable value after that; what is not an
    address in text is refused."""
    kind = tuple[ipaddress.IPv4Network, ...]
    first = codec.decode(kind, ["10.9.0.5/32", "10.9.0.6/32"])
    again = codec.decode(kind, ["10.9.0.5/32", "10.9.0.6/32"])
    assert first == (ipaddress.ip_network("10.9.0.5/32"), ipaddress.ip_network("10.9.0.6/32"))
    assert all(a is b for a, b in zip(first, again, strict=True))
    assert codec.decode(ipaddress.IPv6Address, "2001:db8::1") == ipaddress.ip_address("2001:db8::1")
    for bad in ([1], [["10.9.0.5/32"]], ["10.9.0.5/33"], ["nonsense"], [None]):
        with pytest.raises(ValueError):
            codec.decode(kind, bad)
