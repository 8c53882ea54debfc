"""The JSON form of the intent types, driven by the dataclasses themselves.

``encode`` turns any intent value into JSON-able data and ``decode(T, data)`` builds a ``T`` back from the
type annotations, so adding a field to a spec is one edit (the field) and both directions follow. Values:
dataclasses as objects, enums by value, ``ipaddress`` types as text, tuples/lists/frozensets as lists
(frozensets sorted, for stable bytes), dicts with their keys as text.

The annotations are read once per type: each type gets an encoder and a decoder function built for it
(cached), so a snapshot of thousands of ports costs what hand-written code would.
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
Fn = Callable[[Any], Any]

# Addresses are parsed through a cache: an agent decodes the same ones in every snapshot it fetches (a
# security group's members: thousands), and parsing one costs ~20 us; the values are immutable.
IP_CACHE = 1 << 16


def _cached(parse: Fn) -> Fn:
    cached = functools.lru_cache(maxsize=IP_CACHE)(parse)

    def dec(d: Any) -> Any:
        if not isinstance(d, str):
            raise CodecError(f"{d!r:.200} is not an address in text")
        return cached(d)
    return dec


_address, _network, _interface = (_cached(ipaddress.ip_address), _cached(ipaddress.ip_network),
                                  _cached(ipaddress.ip_interface))
_IP_TYPES: dict[type, Fn] = {
    ipaddress.IPv4Address: _address, ipaddress.IPv6Address: _address,
    ipaddress.IPv4Network: _network, ipaddress.IPv6Network: _network,
    ipaddress.IPv4Interface: _interface, ipaddress.IPv6Interface: _interface,
}


class CodecError(ValueError):
    """Data that does not fit the type it is decoded as."""


def encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _dataclass_encoder(type(value))(value)
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


def decode(kind: type[T], data: Any) -> T:
    """A value of type ``kind`` from ``encode``'s output (or JSON of it); CodecError if it does not fit."""
    try:
        return typing.cast(T, _decoder(typing.cast(Any, kind))(data))
    except CodecError:
        raise
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CodecError(f"cannot decode {data!r:.200} as {kind}: {exc}") from exc


# -- encoders, one per annotated type -------------------------------------------------------------------
def _same(value: Any) -> Any:
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@functools.cache
def _dataclass_encoder(cls: type) -> Fn:
    hints = _hints(cls)
    fields = [(f.name, _encoder(hints[f.name])) for f in dataclasses.fields(cls)]

    def enc(value: Any) -> dict[str, Any]:
        return {name: fn(getattr(value, name)) for name, fn in fields}
    return enc


@functools.cache
def _encoder(kind: Any) -> Fn:
    supertype = getattr(kind, "__supertype__", None)
    if supertype is not None:
        return _encoder(supertype)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (types.UnionType, typing.Union):
        options = [a for a in args if a is not type(None)]
        inner = _encoder(options[0]) if len(options) == 1 or all(a in _IP_TYPES for a in options) else encode
        return lambda v: None if v is None else inner(v)
    if origin in (tuple, list):
        item = _encoder(args[0]) if args and (origin is list or (len(args) == 2 and args[1] is Ellipsis)) \
            else encode
        return lambda v: [item(x) for x in v]
    if origin in (frozenset, set):
        item = _encoder(args[0])
        return lambda v: sorted((item(x) for x in v), key=repr)
    if origin is dict:
        key, value = _encoder(args[0]), _encoder(args[1])
        return lambda v: {str(key(k)): value(x) for k, x in v.items()}
    if isinstance(kind, type):
        if dataclasses.is_dataclass(kind):
            return _dataclass_encoder(kind)
        if issubclass(kind, enum.Enum):
            return lambda v: v.value
        if kind in _IP_TYPES:
            return str
        if kind in (str, int, float, bool):
            return _same
    return encode  # Any and the like: by what the value is


# -- decoders, one per annotated type -------------------------------------------------------------------
@functools.cache
def _decoder(kind: Any) -> Fn:
    if kind is Any:
        return _same
    supertype = getattr(kind, "__supertype__", None)
    if supertype is not None:  # NewType: the base type at run time
        return _decoder(supertype)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (types.UnionType, typing.Union):
        return _union_decoder(kind, args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            item = _decoder(args[0])
            return lambda d: tuple([item(v) for v in _list(d)])
        items = [_decoder(a) for a in args]
        return lambda d: tuple(fn(v) for fn, v in zip(items, _list(d), strict=True))
    if origin in (frozenset, set, list):
        item, make = _decoder(args[0]), origin
        return lambda d: make([item(v) for v in _list(d)])
    if origin is dict:
        key, value = _decoder(args[0]), _decoder(args[1])
        return lambda d: {key(k): value(v) for k, v in _dict(d, kind).items()}
    if isinstance(kind, type):
        if dataclasses.is_dataclass(kind):
            return _dataclass_decoder(kind)
        if issubclass(kind, enum.Enum):
            return kind
        if kind in _IP_TYPES:
            return _IP_TYPES[kind]
        return _primitive(kind)
    raise CodecError(f"no JSON form for {kind}")


def _union_decoder(kind: Any, args: tuple[Any, ...]) -> Fn:
    optional = type(None) in args
    options = [a for a in args if a is not type(None)]
    if all(a in _IP_TYPES for a in options):
        inner = _IP_TYPES[options[0]]
    elif len(options) == 1:
        inner = _decoder(options[0])
    else:
        raise CodecError(f"cannot choose among {kind}")

    def dec(d: Any) -> Any:
        if d is None:
            if optional:
                return None
            raise CodecError(f"null for {kind}")
        return inner(d)
    return dec


def _dataclass_decoder(cls: type) -> Fn:
    hints = _hints(cls)
    fields = [(f.name, _decoder(hints[f.name])) for f in dataclasses.fields(cls)]

    def dec(d: Any) -> Any:
        if not isinstance(d, dict):
            raise CodecError(f"{d!r:.200} is not an object for {cls.__name__}")
        return cls(**{name: fn(d[name]) for name, fn in fields if name in d})
    return dec


def _primitive(kind: type) -> Fn:
    def dec(d: Any) -> Any:
        if kind is float and isinstance(d, int) and not isinstance(d, bool):
            return float(d)
        if not isinstance(d, kind) or (kind is int and isinstance(d, bool)):
            raise CodecError(f"{d!r:.200} is not a {kind.__name__}")
        return d
    return dec


def _list(data: Any) -> list[Any]:
    if not isinstance(data, list):
        raise CodecError(f"{data!r:.200} is not a list")
    return data


def _dict(data: Any, kind: Any) -> dict[Any, Any]:
    if not isinstance(data, dict):
        raise CodecError(f"{data!r:.200} is not an object for {kind}")
    return data
