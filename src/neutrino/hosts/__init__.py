"""Throwaway hosts: several neutrino hosts on one machine, for tests and the multi-host lab.

A host is a network namespace (``nt<id>-<name>``) plus a private mount namespace in which
``/run/netns`` is a fresh tmpfs, so the ``qdhcp-…`` and ``lab-…`` namespaces its agent creates are
invisible to the machine and to other hosts, and keep Neutron's names. A small holder process
(``sleep``) keeps both namespaces alive; anything runs "inside the host" through ``nsenter`` on the
holder. Hosts reach each other over an underlay: a bridge in its own namespace (``nt<id>-ul``), one veth
per host, addresses from 198.18.0.0/24 (the benchmarking range, never routed anywhere).

The underlay also carries a shared flat segment, the lab's "public" network: a second bridge in the
underlay namespace, plugged into every host as ``eth1`` (map it as a physnet, e.g.
``agent.physical_interface_mappings: {public: eth1}``), and an ``upstream`` namespace
(``nt<id>-upstream``) on it at 172.24.4.1/24 and 2001:db8:2404::1/64, standing in for the internet's
first hop: external networks, routers and floating IPs work in the lab against it.

``destroy()`` kills every process in the host and its nested namespaces, then removes the namespaces:
links die with them. A ``create`` that fails half-way undoes what it made before raising (and never
removes a namespace it did not make, e.g. one whose name was already taken).
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


def _ip(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", *(["-n", ns] if ns else []), *args]
    subprocess.run(cmd, check=True, capture_output=True)


def _remove_namespace(name: str) -> None:
    """Kill every process in a plain namespace of ours, then remove it (its links go with it)."""
    inode = _ns_inode(f"/run/netns/{name}")
    if inode is not None:
        for _ in range(50):
            pids = [int(e.name) for e in Path("/proc").iterdir()
                    if e.name.isdigit() and _ns_inode(f"/proc/{e.name}/ns/net") == inode]
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            time.sleep(0.02)
    subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


def _ns_inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


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

    def add_host(self, name: str) -> Host:
        address = ipaddress.IPv4Interface(f"{UNDERLAY[len(self.hosts) + 1]}/{UNDERLAY.prefixlen}")
        host = Host.create(f"{self.prefix}-{name}", name, self, address)
        self.hosts.append(host)
        return host

    def destroy(self) -> None:
        # Every step runs even if an earlier one raised; the underlay's namespace goes last.
        with contextlib.ExitStack() as stack:
            stack.callback(subprocess.run, ["ip", "netns", "del", self.namespace], check=False, capture_output=True)
            stack.callback(_remove_namespace, self.upstream)
            for host in self.hosts:
                stack.callback(host.destroy)
            self.hosts.clear()


@dataclass
class Host:
    namespace: str                       # the host's network namespace in the machine's /run/netns
    name: str                            # the agent's host name
    underlay: Underlay
    address: ipaddress.IPv4Interface     # underlay address = VXLAN tunnel endpoint
    holder: subprocess.Popen[bytes] | None = None

    @classmethod
    def create(cls, namespace: str, name: str, underlay: Underlay, address: ipaddress.IPv4Interface) -> Host:
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
            host.holder = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "--", "nsenter", f"--net=/run/netns/{namespace}",
                 "--", "sh", "-c", "mount -t tmpfs -o size=4m,mode=755 tmpfs /run/netns && echo ready && "
                                   "exec sleep infinity"], stdout=subprocess.PIPE)
            assert host.holder.stdout is not None
            if host.holder.stdout.readline().strip() != b"ready":
                raise RuntimeError(f"host {name}: holder did not start")
        except BaseException:
            host.destroy()
            raise
        return host

    @property
    def pid(self) -> int:
        assert self.holder is not None
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
        if self.holder is None or self.holder.poll() is not None:
            return []
        with contextlib.suppress(OSError):
            return sorted(os.listdir(f"/proc/{self.pid}/root/run/netns"))
        return []

    def _inodes(self) -> set[int]:
        paths = [f"/run/netns/{self.namespace}"]
        paths += [f"/proc/{self.pid}/root/run/netns/{n}" for n in self.nested_namespaces()]
        return {i for i in (_ns_inode(p) for p in paths) if i is not None}

    def processes(self) -> list[int]:
        """Every process whose network namespace is this host's or one nested in it."""
        inodes = self._inodes()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or (self.holder is not None and int(entry.name) == self.pid):
                continue
            ino = _ns_inode(f"/proc/{entry.name}/ns/net")
            if ino in inodes:
                found.append(int(entry.name))
        return found

    def destroy(self) -> None:
        if self.holder is not None and self.holder.poll() is None:
            for _ in range(50):
                pids = self.processes()
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                time.sleep(0.02)
            self.holder.kill()
            self.holder.wait()
        subprocess.run(["ip", "netns", "del", self.namespace], check=False, capture_output=True)
