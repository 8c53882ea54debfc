"""The JSON form of the intent types, driven by the dataclasses themselves.

``encode`` turns any intent value into JSON-able data and ``decode(T, data)`` builds a ``T`` back from the
type annotations, so adding a field to a spec is one edit (the field) and both directions follow. Values:
dataclasses as objects, enums by value, ``ipaddress`` types as text, tuples/lists/frozensets as lists
(frozensets sorted, for stable bytes), dicts with their keys as text.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import ipaddress
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

_IP_TYPES: dict[type, Callable[[Any], Any]] = {
    ipaddress.IPv4Address: ipaddress.ip_address, ipaddress.IPv6Address: ipaddress.ip_address,
    ipaddress.IPv4Network: ipaddress.ip_network, ipaddress.IPv6Network: ipaddress.ip_network,
    ipaddress.IPv4Interface: ipaddress.ip_interface, ipaddress.IPv6Interface: ipaddress.ip_interface,
}


class CodecError(ValueError):
    """Data that does not fit the type it is decoded as."""


def encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, tuple(_IP_TYPES)):
        return str(value)
    if isinstance(value, (frozenset, set)):
        return sorted((encode(v) for v in value), key=repr)
    if isinstance(value, (tuple, list)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {str(encode(k)): encode(v) for k, v in value.items()}
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def decode(kind: type[T], data: Any) -> T:
    """A value of type ``kind`` from ``encode``'s output (or JSON of it); CodecError if it does not fit."""
    try:
        return typing.cast(T, _decode(kind, data))
    except CodecError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CodecError(f"cannot decode {data!r:.200} as {kind}: {exc}") from exc


def _decode(kind: Any, data: Any) -> Any:
    if kind is Any:
        return data
    supertype = getattr(kind, "__supertype__", None)
    if supertype is not None:  # NewType: the base type at run time
        return _decode(supertype, data)
    origin = typing.get_origin(kind)
    if origin in (types.UnionType, typing.Union):
        args = typing.get_args(kind)
        if data is None:
            if type(None) in args:
                return None
            raise CodecError(f"null for {kind}")
        options = [a for a in args if a is not type(None)]
        if all(a in _IP_TYPES for a in options):
            return _IP_TYPES[options[0]](data)
        if len(options) == 1:
            return _decode(options[0], data)
        raise CodecError(f"cannot choose among {kind}")
    if origin is tuple:
        args = typing.get_args(kind)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v) for v in _list(data))
        return tuple(_decode(a, v) for a, v in zip(args, _list(data), strict=True))
    if origin in (frozenset, set, list):
        (arg,) = typing.get_args(kind)
        return origin(_decode(arg, v) for v in _list(data))
    if origin is dict:
        key, value = typing.get_args(kind)
        if not isinstance(data, dict):
            raise CodecError(f"{data!r:.200} is not an object")
        return {_decode(key, k): _decode(value, v) for k, v in data.items()}
    if isinstance(kind, type):
        if dataclasses.is_dataclass(kind):
            if not isinstance(data, dict):
                raise CodecError(f"{data!r:.200} is not an object for {kind.__name__}")
            hints = _hints(kind)
            return kind(**{f.name: _decode(hints[f.name], data[f.name])
                           for f in dataclasses.fields(kind) if f.name in data})
        if issubclass(kind, enum.Enum):
            return kind(data)
        if kind in _IP_TYPES:
            return _IP_TYPES[kind](data)
        if kind is float and isinstance(data, int) and not isinstance(data, bool):
            return float(data)
        if not isinstance(data, kind) or (kind is int and isinstance(data, bool)):
            raise CodecError(f"{data!r:.200} is not a {kind.__name__}")
        return data
    raise CodecError(f"no JSON form for {kind}")


def _list(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise CodecError(f"{data!r:.200} is not a list")
    return data
