"""Throwaway hosts: several neutrino hosts on one machine, for tests and the multi-host lab.

A host is a network namespace (``<prefix>-<name>``) plus a private mount namespace in which
``/run/netns`` is a fresh tmpfs, so the ``qdhcp-…`` and ``lab-…`` namespaces its agent creates are
invisible to the machine and to other hosts, and keep Neutron's names. A small holder process
(``sleep``) keeps both namespaces alive; anything runs "inside the host" through ``nsenter`` on the
holder. Hosts reach each other over an underlay: a bridge in its own namespace (``<prefix>-ul``), one veth
per host, addresses from 198.18.0.0/24 (the benchmarking range, never routed anywhere).

The underlay also carries a shared flat segment, the lab's "public" network: a second bridge in the
underlay namespace, plugged into every host as ``eth1`` (map it as a physnet, e.g.
``agent.physical_interface_mappings: {public: eth1}``), and an ``upstream`` namespace
(``<prefix>-upstream``) on it at 172.24.4.1/24 and 2001:db8:2404::1/64, standing in for the internet's
first hop: external networks, routers and floating IPs work in the lab against it.

Processes are known by pid and start time (``Process``), so a host can be found again by another
process (the multi-host lab's commands) and a reused pid is never taken for its holder. ``destroy()``
is a power cut: it kills every process in the host and its nested namespaces (the holder last, as it
keeps the nested ones in view), then removes the namespace: links die with it. A ``create`` that fails
half-way undoes what it made before raising (and never removes a namespace it did not make, e.g. one
whose name was already taken).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

UNDERLAY = ipaddress.ip_network("198.18.0.0/24")
PUBLIC_V4 = ipaddress.IPv4Interface("172.24.4.1/24")       # the upstream on the public segment
PUBLIC_V6 = ipaddress.IPv6Interface("2001:db8:2404::1/64")
PUBLIC_INTERFACE = "eth1"                                  # each host's end of the public segment
PUBLIC_PHYSNET = "public"
HOLDER_ARGV = ("sleep", "infinity")


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    subprocess.run(cmd, check=True, capture_output=True)


def _ns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


@dataclass(frozen=True, slots=True)
class Process:
    """A process by pid and start time (clock ticks after boot): a pid the kernel gave to another
    process since is never mistaken for it."""

    pid: int
    start: int

    @classmethod
    def of(cls, pid: int) -> Process | None:
        """The live (non-zombie) process with this pid now, if any."""
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        if fields[0] in ("Z", "X"):
            return None
        return cls(pid, int(fields[19]))  # field 22 of stat(5); fields[0] is field 3

    def alive(self) -> bool:
        return Process.of(self.pid) == self

    def cmdline(self) -> list[str]:
        with contextlib.suppress(OSError):
            return Path(f"/proc/{self.pid}/cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
        return []

    def signal(self, sig: int = signal.SIGKILL) -> bool:
        """Send ``sig`` if this very process still runs (a pidfd pins it before its start time is
        checked, so the signal cannot reach a successor); whether it was sent."""
        try:
            fd = os.pidfd_open(self.pid)
        except OSError:
            return False
        try:
            if not self.alive():
                return False
            signal.pidfd_send_signal(fd, sig)
            return True
        except ProcessLookupError:
            return False
        finally:
            os.close(fd)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL once ``timeout`` passed; returns when it is gone."""
        if not self.signal(signal.SIGTERM):
            return
        deadline = time.monotonic() + timeout
        while self.alive():
            if time.monotonic() > deadline:
                self.signal(signal.SIGKILL)
                deadline = time.monotonic() + timeout
            time.sleep(0.02)


def _net_namespaces() -> dict[int, int]:
    """pid -> network namespace inode, for every process."""
    found = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            ino = _ns_inode(f"/proc/{entry.name}/ns/net")
            if ino is not None:
                found[int(entry.name)] = ino
    return found


def processes_in(netns: str) -> list[Process]:
    """Every live process in the network namespace at path ``netns`` or in one nested in it: those in the
    ``/run/netns`` of a mount namespace of its processes that has a ``/run/netns`` of its own (another
    filesystem than the machine's, so ``ip netns exec`` into the host never makes the machine's
    namespaces look nested)."""
    top = _ns_inode(netns)
    if top is None:
        return []
    pids = _net_namespaces()
    ours = os.stat("/run/netns").st_dev if os.path.isdir("/run/netns") else None
    inodes, mounts = {top}, set()
    for pid in (p for p, ino in pids.items() if ino == top):
        mnt = _ns_inode(f"/proc/{pid}/ns/mnt")
        if mnt in mounts:
            continue
        mounts.add(mnt)
        root = f"/proc/{pid}/root/run/netns"
        with contextlib.suppress(OSError):
            if os.stat(root).st_dev != ours:
                inodes |= {i for i in (_ns_inode(f"{root}/{n}") for n in os.listdir(root)) if i is not None}
    return [p for p in (Process.of(pid) for pid, ino in pids.items() if ino in inodes and pid != os.getpid())
            if p is not None]


def kill_namespace(netns: str, keep: Sequence[Process] = ()) -> None:
    """SIGKILL every process in a namespace (and nested ones), again until none is left but ``keep``."""
    for _ in range(250):
        pids = [p for p in processes_in(netns) if p not in keep]
        if not pids:
            return
        for p in pids:
            p.signal()
        time.sleep(0.02)
    raise RuntimeError(f"processes in {netns} keep appearing: {[p.pid for p in processes_in(netns)]}")


def remove_namespace(name: str, holders: Sequence[Process] = ()) -> None:
    """Kill every process in a namespace of the machine's (and nested ones), then remove it (its links
    go with it). Holders of nested namespaces (``holders``, and any ``sleep infinity`` in it) go last:
    what they hold stays in view until every process in there is gone."""
    path = f"/run/netns/{name}"
    keep = [*holders, *(p for p in processes_in(path) if tuple(p.cmdline()) == HOLDER_ARGV)]
    try:
        kill_namespace(path, keep=keep)
    finally:
        for p in keep:
            p.signal()
        kill_namespace(path)
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@dataclass
class Underlay:
    prefix: str
    hosts: list[Host] = field(default_factory=list)

    @property
    def namespace(self) -> str:
        return f"{self.prefix}-ul"

    @property
    def upstream(self) -> str:
        """The upstream namespace on the public segment (in the machine's /run/netns)."""
        return f"{self.prefix}-upstream"

    @classmethod
    def create(cls, prefix: str | None = None) -> Underlay:
        ul = cls(prefix=prefix or f"nt{uuid.uuid4().hex[:6]}")
        _ip("netns", "add", ul.namespace)
        try:
            for bridge in ("ul0", "pub0"):
                _ip("link", "add", bridge, "type", "bridge", ns=ul.namespace)
                _ip("link", "set", bridge, "up", ns=ul.namespace)
            _ip("netns", "add", ul.upstream)
            _ip("link", "add", "up0", "type", "veth", "peer", "name", "eth0", ns=ul.namespace)
            _ip("link", "set", "eth0", "netns", ul.upstream, ns=ul.namespace)
            _ip("link", "set", "up0", "master", "pub0", "up", ns=ul.namespace)
            _ip("addr", "add", str(PUBLIC_V4), "dev", "eth0", ns=ul.upstream)
            _ip("addr", "add", str(PUBLIC_V6), "dev", "eth0", "nodad", ns=ul.upstream)
            for dev in ("eth0", "lo"):
                _ip("link", "set", dev, "up", ns=ul.upstream)
        except BaseException:
            ul.destroy()
            raise
        return ul

    def upstream_run(self, argv: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
        """Run a command in the upstream namespace."""
        done: subprocess.CompletedProcess[str] = subprocess.run(  # type: ignore[call-overload]
            ["ip", "netns", "exec", self.upstream, *argv], capture_output=True, text=True, **kw)
        return done

    def upstream_popen(self, argv: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
            ["ip", "netns", "exec", self.upstream, *argv], **kw)
        return proc

    def address(self, index: int) -> ipaddress.IPv4Interface:
        """The underlay address of the host with this index (1, 2, …): its VXLAN endpoint."""
        return ipaddress.IPv4Interface(f"{UNDERLAY[index]}/{UNDERLAY.prefixlen}")

    def add_host(self, name: str, index: int | None = None, *, detach: bool = False) -> Host:
        """A new host; ``index`` picks its address (default: the next one); ``detach``: its holder runs in
        a session of its own, to outlive this process (the multi-host lab)."""
        address = self.address(index if index is not None else len(self.hosts) + 1)
        host = Host.create(f"{self.prefix}-{name}", name, self, address, detach=detach)
        self.hosts.append(host)
        return host

    def destroy(self) -> None:
        # Every step runs even if an earlier one raised; the underlay's namespace goes last.
        with contextlib.ExitStack() as stack:
            stack.callback(remove_namespace, self.namespace)
            stack.callback(remove_namespace, self.upstream)
            for host in self.hosts:
                stack.callback(host.destroy)
            self.hosts.clear()


@dataclass
class Host:
    namespace: str                       # the host's network namespace in the machine's /run/netns
    name: str                            # the agent's host name
    underlay: Underlay
    address: ipaddress.IPv4Interface     # underlay address = VXLAN tunnel endpoint
    holder: Process | None = None
    _child: subprocess.Popen[bytes] | None = field(default=None, repr=False)  # the holder, when ours to reap

    @classmethod
    def create(cls, namespace: str, name: str, underlay: Underlay, address: ipaddress.IPv4Interface, *,
               detach: bool = False) -> Host:
        host = cls(namespace, name, underlay, address)
        _ip("netns", "add", namespace)
        try:
            uplink = f"u-{name}"[:15]
            _ip("link", "add", uplink, "type", "veth", "peer", "name", "eth0", ns=underlay.namespace)
            _ip("link", "set", "eth0", "netns", namespace, ns=underlay.namespace)
            _ip("link", "set", uplink, "master", "ul0", "up", ns=underlay.namespace)
            _ip("addr", "add", str(address), "dev", "eth0", ns=namespace)
            _ip("link", "set", "eth0", "up", ns=namespace)
            public = f"p-{name}"[:15]  # the host's end of the public segment, unaddressed (a physnet)
            _ip("link", "add", public, "type", "veth", "peer", "name", PUBLIC_INTERFACE, ns=underlay.namespace)
            _ip("link", "set", PUBLIC_INTERFACE, "netns", namespace, ns=underlay.namespace)
            _ip("link", "set", public, "master", "pub0", "up", ns=underlay.namespace)
            _ip("link", "set", PUBLIC_INTERFACE, "up", ns=namespace)
            _ip("link", "set", "lo", "up", ns=namespace)
            # The holder: a private mount namespace with its own /run/netns, inside the host's netns.
            child = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--", "nsenter", f"--net=/run/netns/{namespace}",
                 "--", "sh", "-c", "mount -t tmpfs -o size=4m,mode=755 tmpfs /run/netns && echo ready && "
                                   f"exec {' '.join(HOLDER_ARGV)} </dev/null >/dev/null 2>&1"],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, start_new_session=detach)
            host._child = child
            assert child.stdout is not None
            ready = child.stdout.readline().strip()
            child.stdout.close()
            host.holder = Process.of(child.pid)
            if ready != b"ready" or host.holder is None:
                raise RuntimeError(f"host {name}: holder did not start")
        except BaseException:
            host.destroy()
            raise
        return host

    @classmethod
    def attach(cls, underlay: Underlay, name: str, address: ipaddress.IPv4Interface, holder: Process) -> Host:
        """A host made by another process (the lab's), found again by its holder."""
        return cls(f"{underlay.prefix}-{name}", name, underlay, address, holder)

    def running(self) -> bool:
        return self.holder is not None and self.holder.alive() and os.path.exists(f"/run/netns/{self.namespace}")

    @property
    def pid(self) -> int:
        if self.holder is None or not self.holder.alive():
            raise RuntimeError(f"host {self.name} is not running (its holder is gone)")
        return self.holder.pid

    def enter(self) -> list[str]:
        """argv prefix that runs a command inside this host."""
        return ["nsenter", "-t", str(self.pid), "-m", "-n", "--"]

    def run(self, argv: Sequence[str], **kw: object) -> subprocess.CompletedProcess[str]:
        done: subprocess.CompletedProcess[str] = subprocess.run(  # type: ignore[call-overload]
            [*self.enter(), *argv], capture_output=True, text=True, **kw)
        return done

    def popen(self, argv: Sequence[str], **kw: object) -> subprocess.Popen[bytes]:
        proc: subprocess.Popen[bytes] = subprocess.Popen([*self.enter(), *argv], **kw)  # type: ignore[call-overload]
        return proc

    def nested_namespaces(self) -> list[str]:
        if self.holder is None or not self.holder.alive():
            return []
        with contextlib.suppress(OSError):
            return sorted(os.listdir(f"/proc/{self.holder.pid}/root/run/netns"))
        return []

    def processes(self) -> list[int]:
        """Every process whose network namespace is this host's or one nested in it (but its holder)."""
        return [p.pid for p in processes_in(f"/run/netns/{self.namespace}") if p != self.holder]

    def destroy(self) -> None:
        """A power cut: every process inside is killed (the holder last), the namespace removed."""
        try:
            remove_namespace(self.namespace, [self.holder] if self.holder is not None else [])
        finally:
            if self._child is not None:
                self._child.kill()
                self._child.wait()
