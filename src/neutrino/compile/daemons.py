"""DaemonSpec (pure): a daemon the agent keeps running, fully rendered.

The supervisor (dataplane/daemons.py) gives each (kind, key) a directory of its own; ``{dir}`` in argv
and in file contents stands for it (compile does no I/O and does not know where it is). The files are
the exact bytes the daemon reads; a change of any of them is the kind's reload (``reload_signal``, or a
restart when it has none); a change of argv is always a restart.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from neutrino.intent.model import PortId

DIR = "{dir}"


@dataclass(frozen=True, slots=True)
class DaemonSpec:
    kind: str                            # dnsmasq, keepalived, haproxy, charon ...
    key: str                             # unique within the kind (a network id, a router id ...)
    namespace: str | None                # where it runs (``ip netns exec``); None: the agent's own
    argv: tuple[str, ...]                # the daemon's command line, run inside ``namespace``
    files: tuple[tuple[str, str], ...]   # (file name, exact content), sorted by name
    keep: tuple[str, ...] = ()           # files the daemon owns (leases): made empty if missing, never written
    pidfile: str = "pid"                 # where the daemon writes its pid (it daemonizes)
    reload_signal: int | None = signal.SIGHUP  # None: a file change restarts it
    binds: tuple[str, ...] = ()          # links in ``namespace`` it binds to: made anew -> restart it
    ports: tuple[PortId, ...] = ()       # ports it serves: they are ACTIVE only while it runs
    label: str = ""                      # how logs name it ('' -> "<kind> <key>")

    def title(self) -> str:
        return self.label or f"{self.kind} {self.key}"

    def file(self, name: str) -> str:
        return dict(self.files)[name]
