"""The sysctl plane: the sysctls HostState names (``SysctlSpec``), e.g. forwarding in a router's namespace.

Observe (read each key inside its namespace), diff, write only what differs: a restarted agent reads the
same values and writes nothing. A per-device key whose device is not there (yet) is skipped and retried
next pass. Values are never restored: neutrino sets them only in its own namespaces, which go whole (and
br_netfilter's ``net.bridge.bridge-nf-call-ip(6)tables`` in the host's, where ports are filtered; a key
names the ports that depend on it, ready once it holds its value).
The files under ``/proc/sys/net`` belong to the namespace of whoever opens them, so each is opened from
inside its namespace (this thread steps in and back out, no fork; dataplane/netlink.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from neutrino.compile.state import HostState, SysctlSpec
from neutrino.dataplane import netlink as nl
from neutrino.dataplane.plane import Made, PlaneResult
from neutrino.errors import KernelError
from neutrino.intent.model import PortId


def path(key: str) -> str:
    return "/proc/sys/" + key.replace(".", "/")


class SysctlKernel(Protocol):
    def read(self, ns: str | None, key: str) -> str | None:
        """The value, stripped; None when the key (or its namespace) does not exist."""
        ...

    def read_all(self, ns: str | None, keys: Sequence[str]) -> dict[str, str | None]:
        """``read`` of several keys of one namespace (entered once)."""
        ...

    def write(self, ns: str | None, key: str, value: str) -> None: ...


class ProcSys:
    @staticmethod
    def _open(ns: str | None, key: str, flags: int) -> int:
        if ns is None:
            return os.open(path(key), flags | os.O_CLOEXEC)
        return nl._socket_in(ns, lambda: os.open(path(key), flags | os.O_CLOEXEC))

    def read(self, ns: str | None, key: str) -> str | None:
        return self.read_all(ns, [key])[key]

    def read_all(self, ns: str | None, keys: Sequence[str]) -> dict[str, str | None]:
        """Each key read from inside ``ns``, which this thread enters once for all of them (an idle pass at
        1,000 routers reads 4,000 keys)."""
        def read() -> dict[str, str | None]:
            out: dict[str, str | None] = {}
            for key in keys:
                try:
                    fd = os.open(path(key), os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    out[key] = None
                    continue
                try:
                    out[key] = os.read(fd, 4096).decode().strip()
                except OSError:
                    out[key] = None
                finally:
                    os.close(fd)
            return out
        if ns is None:
            return read()
        try:
            return nl._socket_in(ns, read)
        except OSError:  # the namespace is not there (yet)
            return dict.fromkeys(keys)

    def write(self, ns: str | None, key: str, value: str) -> None:
        try:
            fd = self._open(ns, key, os.O_WRONLY)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except OSError as exc:
            raise KernelError(f"sysctl {key}={value}: {exc.strerror}", namespace=ns or "") from exc


@dataclass(frozen=True, slots=True)
class SetSysctl:
    spec: SysctlSpec
    was: str


class SysctlPlane:
    name = "sysctls"

    def __init__(self, kernel: SysctlKernel | None = None) -> None:
        self.kernel = kernel or ProcSys()

    def diff(self, desired: HostState) -> list[SetSysctl]:
        by_ns: dict[str | None, list[SysctlSpec]] = {}
        for spec in desired.sysctls:
            by_ns.setdefault(spec.namespace, []).append(spec)
        ops = []
        for ns, specs in by_ns.items():
            values = self.kernel.read_all(ns, [spec.key for spec in specs])
            for spec in specs:
                have = values[spec.key]
                if have is not None and have != spec.value:
                    ops.append(SetSysctl(spec, have))
        return ops

    def apply(self, ops: Sequence[SetSysctl]) -> int:
        errors = []
        for op in ops:
            try:
                self.kernel.write(op.spec.namespace, op.spec.key, op.spec.value)
            except KernelError as exc:
                errors.append(str(exc))
        if errors:
            raise KernelError("; ".join(errors))
        return len(ops)

    leaf = False

    def part(self, desired: HostState) -> object:
        return desired.sysctls

    def names(self, desired: HostState) -> set[PortId]:
        return {p for spec in desired.sysctls for p in spec.ports}

    def sync(self, desired: HostState, made: Made = frozenset()) -> PlaneResult:
        ops = self.diff(desired)
        changes = self.apply(ops) if ops else 0
        named = [spec for spec in desired.sysctls if spec.ports]
        waiting = {p for spec in named if self.kernel.read(spec.namespace, spec.key) != spec.value
                   for p in spec.ports}
        return PlaneResult(changes, frozenset(p for spec in named for p in spec.ports if p not in waiting))
